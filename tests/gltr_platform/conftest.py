"""A real S3 endpoint on loopback (moto's server) for tests that read and write datasets in S3.

Code under test reaches it only through boto3 and the standard AWS environment variables, exactly as
it reaches AWS: no moto decorators, no mocked clients.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import pytest
from moto.server import ThreadedMotoServer


@dataclass
class RequestLog:
    """Every HTTP request the S3 server received, as (method, path), for asserting on traffic."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def count(self, method: str, path_suffix: str = "") -> int:
        """Requests with this method whose path ends with `path_suffix`."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.endswith(path_suffix))


@dataclass
class S3Server:
    """A running S3 server: its endpoint URL and the log of requests it served."""

    endpoint_url: str
    log: RequestLog


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (a free port), for the whole session."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    log = RequestLog()
    wsgi = server._server  # the werkzeug server: wrap its app to log requests
    app = wsgi.app

    def logged(environ: dict, start_response: object) -> object:
        log.record(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        return app(environ, start_response)

    wsgi.app = logged
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}", log)
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> S3Server:
    """The standard AWS environment pointing at the test server, with fake credentials."""
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # The developer's own ~/.aws must not leak into tests.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A fresh, empty bucket on the test server; its name."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3").create_bucket(Bucket=name)
    return name
