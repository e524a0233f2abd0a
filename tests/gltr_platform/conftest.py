"""A real S3 endpoint on loopback (moto's server) for tests that read and write datasets in S3, and a
fault-injecting proxy in front of it for reliability tests.

Code under test reaches them only through boto3 (or pyarrow) and the standard AWS environment
variables, exactly as it reaches AWS: no moto decorators, no mocked clients.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

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


# A fault-injecting HTTP proxy in front of the loopback S3 server, for reliability tests.
#
# It forwards every request to the upstream endpoint and answers a seeded, bounded share of them with
# what real S3 and real networks do: HTTP 500 InternalError, HTTP 503 SlowDown (S3's XML error bodies),
# a connection closed before any reply, or a reply cut off halfway through its body.
#
# Which requests fail is decided from a hash of the seed and the request itself (method, key, query,
# Range), not from arrival order, so the same requests fail whatever the client's concurrency; a chosen
# request fails on its first `repeat` attempts only, so a client that retries enough always gets through.
# The kinds are dealt in turn, in the order the faults happen.
# It listens on 127.0.0.1 only. Kinds of fault, as FaultPlan.kinds and FaultLog.kinds() name them:

INTERNAL_ERROR, SLOW_DOWN = "500 InternalError", "503 SlowDown"
DROP_REQUEST, DROP_RESPONSE = "drop request", "drop response"
FAULTS = (INTERNAL_ERROR, SLOW_DOWN, DROP_REQUEST, DROP_RESPONSE)
_ERRORS = {
    INTERNAL_ERROR: (500, "InternalError", "We encountered an internal error. Please try again."),
    SLOW_DOWN: (503, "SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class FaultPlan:
    """Which requests fail and how: a `fraction` of distinct requests, at most `max_faults` in all."""

    fraction: float
    seed: int = 0
    max_faults: int = 50
    kinds: tuple[str, ...] = FAULTS
    repeat: int = 1  # consecutive failed attempts of a chosen request before it is let through
    only: str = ""  # when set, only requests whose method and target contain it, e.g. "GET /b/k?uploads"


@dataclass
class FaultLog:
    """What the proxy did: every request it received and every fault it injected, as (kind, method, path)."""

    requests: int = 0
    faults: list[tuple[str, str, str]] = field(default_factory=list)
    _attempts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def kinds(self) -> Counter:
        """How many faults of each kind were injected."""
        with self._lock:
            return Counter(kind for kind, _, _ in self.faults)


class FaultProxy:
    """The proxy: `url` is its endpoint; use as a context manager, or `start()` and `close()`."""

    def __init__(self, upstream: str, plan: FaultPlan):
        self.upstream = urlsplit(upstream)
        self.plan = plan
        self.log = FaultLog()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        """The endpoint URL clients use instead of the upstream's."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decide(self, method: str, target: str, range_header: str | None) -> str | None:
        """The fault to inject into this request, or None to forward it untouched."""
        # Path-style URLs start with the bucket, a random name per test: leave it out of the draw.
        path, _, query = target.partition("?")
        key = f"{method} {path.split('/', 2)[-1]}?{query} {range_header or ''}"
        draw = hashlib.sha256(f"{self.plan.seed}:{key}".encode()).digest()
        chosen = struct.unpack(">Q", draw[:8])[0] / 2**64 < self.plan.fraction
        chosen = chosen and self.plan.only in f"{method} {target}"
        log = self.log
        with log._lock:
            log.requests += 1
            log._attempts[key] += 1
            if not chosen or log._attempts[key] > self.plan.repeat or len(log.faults) >= self.plan.max_faults:
                return None
            # Kinds in turn: every kind is injected once there are as many faults as kinds.
            kind = self.plan.kinds[len(log.faults) % len(self.plan.kinds)]
            log.faults.append((kind, method, path))
            return kind


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # one line per request otherwise

        def handle_request(self) -> None:
            fault = proxy.decide(self.command, self.path, self.headers.get("Range"))
            if fault == DROP_REQUEST:  # before reading the body: the client is still sending
                return self._drop()
            body = self._read_body()
            if fault in _ERRORS:
                return self._s3_error(*_ERRORS[fault])
            status, reason, headers, payload = self._forward(body)
            if fault == DROP_RESPONSE:
                return self._send_half(status, reason, headers, payload)
            self.send_response(status, reason)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_request

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            up = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
            try:
                up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                        up.putheader(name, value)
                if body or self.command in ("PUT", "POST"):
                    up.putheader("Content-Length", str(len(body)))
                up.endheaders(body)
                resp = up.getresponse()
                payload = resp.read()
                headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
                # HEAD carries the object's length without a body.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
                headers.append(("Content-Length", length or "0"))
                return resp.status, resp.reason, headers, payload
            finally:
                up.close()

        def _s3_error(self, status: int, code: str, message: str) -> None:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{self.path}</Resource><RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_half(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
            """Send the headers and half the body, then reset; with no body, reset at once.

            Upstream has done the work either way (a PUT is stored): only the reply is lost.
            """
            body = payload if self.command != "HEAD" else b""
            if len(body) >= 2:
                self.send_response(status, reason)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
            self._drop()

        def _drop(self) -> None:
            # SO_LINGER 0: close with a reset, as a crashed server or a broken middlebox does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True  # the server then shuts the socket down and closes it

    return Handler


@pytest.fixture
def fault_proxy(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FaultProxy]]:
    """Start a FaultProxy(plan) in front of the test server and point AWS_ENDPOINT_URL at it."""
    started: list[FaultProxy] = []

    def start(**plan: object) -> FaultProxy:
        proxy = FaultProxy(s3_env.endpoint_url, FaultPlan(**plan)).start()
        started.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield start
    for proxy in started:
        proxy.close()
