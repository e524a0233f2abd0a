"""Syncing a packed dataset from S3 into the node-local cache, and reading frames from it."""

from __future__ import annotations

import multiprocessing
import pickle
import socket
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from filelock import FileLock

from gltr_platform.data import s3
from gltr_platform.data.index import DatasetError
from gltr_platform.data.manifest import MANIFEST_NAME, parse_manifest
from gltr_platform.data.mars import read_mars
from gltr_platform.data.shard_cache import COMPLETE_MARKER, PackedDataset, sync


def shard_gets(log, name: str = "") -> int:
    """GET requests the server received for shard objects (or for one shard)."""
    return log.count("GET", name) if name else log.count("GET", ".bin")


def s3_object(uri: str, name: str) -> tuple[str, str]:
    loc = s3.parse_s3_uri(uri)
    return loc.bucket, loc.key(name)


def nothing_valid_left(cache: Path) -> bool:
    """No cache entry a later sync would trust: no completion marker, no partial downloads."""
    return not list(cache.rglob(COMPLETE_MARKER)) and not list(cache.rglob("*.part*"))


def test_sync_downloads_each_shard_once_and_serves_the_original_bytes(
    packed_uri, synthetic_mars_root, s3_server, tmp_path
):
    s3_server.log.clear()
    ds = sync(packed_uri, tmp_path / "cache", progress=False)

    assert ds.root == tmp_path / "cache" / ds.version
    assert (ds.root / COMPLETE_MARKER).read_text() == ds.version
    for shard in ds.manifest.shards:
        assert shard_gets(s3_server.log, shard.name) == 1
    raw = read_mars(synthetic_mars_root)
    assert [(t.pid, t.camid, len(t)) for t in ds.index.gallery] == [(t.pid, t.camid, len(t)) for t in raw.gallery]
    for ta, tb in zip(raw.query, ds.index.query, strict=True):
        assert [Path(f).read_bytes() for f in ta.frames] == [ds.read_frame(f) for f in tb.frames]


def test_a_second_sync_reuses_the_cache_without_getting_any_shard(packed_uri, s3_server, tmp_path):
    first = sync(packed_uri, tmp_path, progress=False)
    inodes = {p: p.stat().st_ino for p in first.root.rglob("*.bin")}
    s3_server.log.clear()

    second = sync(packed_uri, tmp_path, protocol="official", progress=False)

    assert shard_gets(s3_server.log) == 0
    assert s3_server.log.count("GET", MANIFEST_NAME) == 1
    assert second.version == first.version and second.index.protocol == "official"
    assert {p: p.stat().st_ino for p in second.root.rglob("*.bin")} == inodes


def test_two_processes_syncing_at_once_download_each_shard_exactly_once(packed_uri, s3_server, tmp_path):
    bucket, key = s3_object(packed_uri, MANIFEST_NAME)
    body = boto3.session.Session().client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    version = parse_manifest(body, key).version_hash
    s3_server.log.clear()
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=sync, args=(packed_uri, tmp_path), kwargs={"progress": False}) for _ in range(2)]
    # Hold the entry's lock until both have read the manifest, so both contend for it.
    with FileLock(tmp_path / f"{version}.lock"):
        for p in procs:
            p.start()
        deadline = time.monotonic() + 60
        while s3_server.log.count("GET", MANIFEST_NAME) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    for p in procs:
        p.join(timeout=60)

    assert [p.exitcode for p in procs] == [0, 0]
    ds = PackedDataset.open(next(tmp_path.glob("*/" + COMPLETE_MARKER)).parent, verify=True)
    for shard in ds.manifest.shards:
        assert shard_gets(s3_server.log, shard.name) == 1


def test_verify_detects_a_corrupted_cached_shard_and_fetches_it_again(packed_uri, s3_server, tmp_path):
    ds = sync(packed_uri, tmp_path, progress=False)
    bad = ds.manifest.shards[2]
    path = ds.root / bad.name
    data = bytearray(path.read_bytes())
    data[100:110] = bytes(b ^ 0xFF for b in data[100:110])
    path.write_bytes(bytes(data))
    s3_server.log.clear()

    sync(packed_uri, tmp_path, progress=False)  # same size: the cheap check does not notice
    assert shard_gets(s3_server.log) == 0
    ds = sync(packed_uri, tmp_path, verify=True, progress=False)

    assert shard_gets(s3_server.log) == 1 and shard_gets(s3_server.log, bad.name) == 1
    PackedDataset.open(ds.root, verify=True)


def test_a_truncated_cached_shard_is_noticed_without_verify_and_fetched_again(packed_uri, s3_server, tmp_path):
    ds = sync(packed_uri, tmp_path, progress=False)
    bad = ds.manifest.shards[-1]
    with open(ds.root / bad.name, "r+b") as f:
        f.truncate(bad.size // 2)
    s3_server.log.clear()

    sync(packed_uri, tmp_path, progress=False)

    assert shard_gets(s3_server.log) == 1 and shard_gets(s3_server.log, bad.name) == 1


def test_a_corrupt_shard_in_s3_is_fetched_twice_then_fails_naming_it(packed_uri, s3_server, tmp_path):
    client = boto3.session.Session().client("s3")
    bucket, key = s3_object(packed_uri, "shards/shard-00001.bin")
    original = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=b"\0" * len(original))
    s3_server.log.clear()

    with pytest.raises(DatasetError, match=f"{packed_uri}/shards/shard-00001.bin has sha256 .*"):
        sync(packed_uri, tmp_path, progress=False)

    assert shard_gets(s3_server.log, "shard-00001.bin") == 2
    assert nothing_valid_left(tmp_path)
    kept = {p.name for p in tmp_path.rglob("*.bin")}
    assert "shard-00001.bin" not in kept

    # Once S3 is repaired, the next sync fetches only what it does not have yet.
    client.put_object(Bucket=bucket, Key=key, Body=original)
    s3_server.log.clear()
    ds = sync(packed_uri, tmp_path, progress=False)
    fetched = {s.name for s in ds.manifest.shards if shard_gets(s3_server.log, s.name)}
    assert fetched == {s.name for s in ds.manifest.shards} - {f"shards/{n}" for n in kept}
    PackedDataset.open(ds.root, verify=True)


def test_a_truncated_shard_in_s3_fails_with_the_size_mismatch(packed_uri, tmp_path):
    client = boto3.session.Session().client("s3")
    bucket, key = s3_object(packed_uri, "shards/shard-00000.bin")
    original = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=original[:1000])

    with pytest.raises(DatasetError, match=r"shard-00000.bin is 1000 bytes but the manifest says"):
        sync(packed_uri, tmp_path, progress=False)
    assert nothing_valid_left(tmp_path)


def test_a_shard_missing_from_s3_is_named(packed_uri, tmp_path):
    bucket, key = s3_object(packed_uri, "shards/shard-00002.bin")
    boto3.session.Session().client("s3").delete_object(Bucket=bucket, Key=key)

    with pytest.raises(DatasetError, match=f"{packed_uri}/shards/shard-00002.bin does not exist"):
        sync(packed_uri, tmp_path, progress=False)
    assert nothing_valid_left(tmp_path)


def test_a_damaged_local_copy_is_refused_naming_the_shard(packed_uri, tmp_path):
    ds = sync(packed_uri, tmp_path, progress=False)
    shard = ds.root / ds.manifest.shards[0].name
    shard.write_bytes(shard.read_bytes()[:-1])

    with pytest.raises(DatasetError, match=f"{shard} is .* bytes but the manifest says"):
        PackedDataset.open(ds.root)


def test_a_missing_bucket_is_named(s3_env, tmp_path):
    with pytest.raises(DatasetError, match="bucket 'no-such-bucket' does not exist"):
        sync("s3://no-such-bucket/mars", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_prefix_without_a_manifest_names_the_missing_key(s3_bucket, tmp_path):
    with pytest.raises(DatasetError, match=f"s3://{s3_bucket}/nothing/here/manifest.json does not"):
        sync(f"s3://{s3_bucket}/nothing/here", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_missing_credentials_say_how_to_provide_them(packed_uri, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))

    with pytest.raises(DatasetError, match="no AWS credentials found.*AWS_ACCESS_KEY_ID"):
        sync(packed_uri, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_manifest_of_an_unknown_version_is_refused(s3_bucket, tmp_path):
    client = boto3.session.Session().client("s3")
    client.put_object(Bucket=s3_bucket, Key="future/manifest.json", Body=b'{"format":"gltr-packed","version":2}')

    with pytest.raises(DatasetError, match="manifest version 2"):
        sync(f"s3://{s3_bucket}/future", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "uri",
    ["bucket/mars", "s3:/bucket/mars", "s3://", "s3://Bad_Bucket/x", "s3://ab/x", "s3://b..c/x",
     "s3://bucket/a//b", "http://bucket/x"],
)  # fmt: skip
def test_a_malformed_uri_says_what_a_valid_one_looks_like(uri, tmp_path):
    with pytest.raises(DatasetError, match="expected s3://BUCKET/PREFIX"):
        sync(uri, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_an_unreachable_endpoint_fails_within_seconds_naming_it(s3_env, monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")

    start = time.monotonic()
    with pytest.raises(DatasetError, match=f"cannot reach the S3 endpoint http://127.0.0.1:{port}"):
        sync("s3://bucket/mars", tmp_path / "cache")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "cache").exists()


def test_access_denied_names_the_object_and_the_missing_permission():
    uri = s3.parse_s3_uri("s3://bucket/mars")
    denied = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject"
    )

    expected = r"access denied to s3://bucket/mars/x.*s3:GetObject"
    with pytest.raises(DatasetError, match=expected), s3.s3_errors(uri, uri.child("x")):
        raise denied


def test_frames_can_be_read_in_forked_workers_and_after_pickling(packed_uri, tmp_path):
    ds = sync(packed_uri, tmp_path, progress=False)
    names = [f for t in ds.index.train[:20] for f in t.frames]
    expected = [ds.read_frame(f) for f in names]  # opens descriptors in the parent first

    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(ds.read_frame, names) == expected
    assert [pickle.loads(pickle.dumps(ds)).read_frame(f) for f in names] == expected


def test_a_frame_that_is_not_in_the_dataset_is_named(packed_uri, tmp_path):
    ds = sync(packed_uri, tmp_path, progress=False)

    with pytest.raises(DatasetError, match="frame 'bbox_train/nope.jpg' is not in packed dataset"):
        ds.read_frame("bbox_train/nope.jpg")
