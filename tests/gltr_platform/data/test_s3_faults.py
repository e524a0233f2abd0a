"""S3 faults: 500s, 503 SlowDown and dropped connections are retried (bounded) and lose no byte; an
endpoint that is down fails at once with one line naming it.

Faults come from the `fault_proxy` fixture: a real HTTP proxy on 127.0.0.1 in front of the loopback S3
server, which the code under test reaches through AWS_ENDPOINT_URL as it would reach AWS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from gltr_platform.data.s3 import MAX_ATTEMPTS, EndpointUnreachable
from gltr_platform.data.shard_cache import COMPLETE_MARKER, PackedDataset, sync
from gltr_platform.errors import ServiceUnavailable

ALL_FAULTS = ("drop response", "500 InternalError", "503 SlowDown", "drop request")
UNREACHABLE = 3  # gltr_platform.cli: a service could not be reached


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_by_sha256(root: Path) -> dict[str, str]:
    """sha256 of every file below `root`, by relative path."""
    return {p.relative_to(root).as_posix(): sha256(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sync_through_failing_requests_retries_each_and_caches_the_exact_bytes(
    packed_dir, packed_uri, fault_proxy, tmp_path
):
    # Every distinct request fails once, the four kinds in turn; the manifest GET is first, so its
    # body is cut off mid-stream, which botocore itself does not retry.
    proxy = fault_proxy(fraction=1.0, kinds=ALL_FAULTS, repeat=1)

    start = time.monotonic()
    ds = sync(packed_uri, tmp_path / "cache", progress=False)
    elapsed = time.monotonic() - start

    shards = len(ds.manifest.shards)
    print(f"sync through {len(proxy.log.faults)} faults in {proxy.log.requests} requests: {elapsed:.2f}s")
    assert proxy.log.faults[0] == ("drop response", "GET", "/" + packed_uri.removeprefix("s3://") + "/manifest.json")
    assert set(proxy.log.kinds()) == set(ALL_FAULTS)
    # One manifest GET, a HEAD and a GET per shard, each failing once and then succeeding: no more.
    assert len(proxy.log.faults) == 1 + 2 * shards
    assert proxy.log.requests == 2 * len(proxy.log.faults)
    assert files_by_sha256(ds.root) == {COMPLETE_MARKER: sha256(ds.version.encode())} | files_by_sha256(packed_dir)
    PackedDataset.open(ds.root, verify=True)


def checkpoint_dir(path: Path) -> Path:
    """A checkpoint directory as the loop writes it (state.pt, config.json), plus 1 MiB of weights."""
    from gltr_platform.train.checkpoint import save_state

    path.mkdir()
    save_state(path, {"epoch": 3, "model": {"w": list(range(1000))}})
    (path / "config.json").write_text('{"model": {"dilations": [1, 2, 4]}}')
    (path / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    return path


def stored_by_sha256(endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    """sha256 of every object below `prefix`, read straight from the server, by relative key."""
    direct = boto3.session.Session().client("s3", endpoint_url=endpoint)
    listing = direct.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    return {
        o["Key"].removeprefix(prefix): sha256(direct.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
        for o in listing
        if not o["Key"].endswith("/")
    }


@pytest.mark.parametrize(
    ("plan", "retried_by"),
    [
        # Every request fails once: pyarrow's own retries absorb it (for s3:// URIs Arrow retries 500,
        # 503 and network errors every 200 ms for 6 s).
        ({"fraction": 1.0, "repeat": 1}, "pyarrow"),
        # Starting one file's upload fails for longer than that (60 attempts): the whole copy is retried.
        ({"fraction": 1.0, "repeat": 60, "max_faults": 60, "only": "weights.bin"}, "upload_with_retries"),
    ],
    ids=["each-request-once", "beyond-pyarrow-retries"],
)
def test_a_checkpoint_upload_through_failing_requests_stores_identical_objects(
    fault_proxy, s3_bucket, s3_server, tmp_path, caplog, plan, retried_by
):
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution.storage import StorageContext

    from gltr_platform.train.checkpoint import upload_with_retries

    source = checkpoint_dir(tmp_path / "checkpoint")
    proxy = fault_proxy(fraction=0.0)
    storage = StorageContext(f"s3://{s3_bucket}/runs", "exp")  # its filesystem talks to the proxy
    only = f"POST /{s3_bucket}/runs/exp/epoch-0003/weights.bin?uploads" if "only" in plan else ""
    proxy.plan = dataclasses.replace(proxy.plan, kinds=ALL_FAULTS, **plan | {"only": only})

    start = time.monotonic()
    upload_with_retries(Checkpoint.from_directory(source), "epoch-0003", base_delay_s=0.2, storage=storage)
    elapsed = time.monotonic() - start

    faults = proxy.log.faults
    print(f"upload retried by {retried_by}: {len(faults)} faults in {proxy.log.requests} requests, {elapsed:.2f}s")
    assert len(faults) >= 6 and set(proxy.log.kinds()) == set(ALL_FAULTS)
    assert ("checkpoint upload epoch-0003 failed" in caplog.text) == (retried_by == "upload_with_retries")
    assert stored_by_sha256(s3_server.endpoint_url, s3_bucket, "runs/exp/epoch-0003/") == files_by_sha256(source)


def test_sync_against_an_endpoint_that_is_down_fails_within_seconds_with_one_line_naming_it(s3_env, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}

    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gltr_platform.data", "sync", "s3://bucket/mars", "--cache", tmp_path / "cache"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    elapsed = time.monotonic() - start

    print(f"endpoint down: exit {result.returncode} after {elapsed:.2f}s ({MAX_ATTEMPTS} attempts)")
    assert result.returncode == UNREACHABLE
    assert result.stderr.startswith(f"error: cannot reach the S3 endpoint {endpoint} ")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "cache").exists()  # nothing a later sync could take for a cache entry


def test_the_endpoint_down_error_is_a_service_unavailable_dataset_error(s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")

    with pytest.raises(EndpointUnreachable) as caught:
        sync("s3://bucket/mars", tmp_path / "cache")

    assert isinstance(caught.value, ServiceUnavailable)  # entry points exit 3, "a service could not be reached"
