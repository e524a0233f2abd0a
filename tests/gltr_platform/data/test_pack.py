"""Packing: a raw dataset becomes a few shards plus a manifest, on S3 or in a local directory."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import boto3
import pytest

from gltr_platform.data.index import DatasetError, DatasetIndex
from gltr_platform.data.manifest import MANIFEST_NAME, parse_manifest, version_hash
from gltr_platform.data.mars import read_mars
from gltr_platform.data.pack import pack, parse_size
from gltr_platform.data.shard_cache import PackedDataset

SHARD = 64 * 1024  # small shards, so the tiny dataset spans many


def assert_same_dataset(raw: DatasetIndex, packed: PackedDataset) -> None:
    """Same tracklets in the same order, and every frame's bytes equal the original file's."""
    for split in ("train", "query", "gallery"):
        a, b = getattr(raw, split), getattr(packed.index, split)
        assert [(t.pid, t.camid, len(t)) for t in a] == [(t.pid, t.camid, len(t)) for t in b]
        for ta, tb in zip(a, b, strict=True):
            for path, name in zip(ta.frames, tb.frames, strict=True):
                assert path.endswith(name)
                assert packed.read_frame(name) == Path(path).read_bytes()


def test_pack_to_a_local_dir_stores_every_frame_byte_for_byte(synthetic_mars_root, tmp_path):
    manifest = pack(synthetic_mars_root, tmp_path / "packed", shard_size_bytes=SHARD)

    files = sorted(p.relative_to(tmp_path / "packed").as_posix() for p in tmp_path.rglob("*.*"))
    assert files == sorted([MANIFEST_NAME] + [s.name for s in manifest.shards])
    assert len(manifest.shards) > 3
    for shard in manifest.shards:
        data = (tmp_path / "packed" / shard.name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (shard.size, shard.sha256)
    with PackedDataset.open(tmp_path / "packed", "official") as packed:
        assert_same_dataset(read_mars(synthetic_mars_root, "official"), packed)


def test_packed_dataset_serves_both_protocols_exactly_as_the_raw_reader(synthetic_mars_root, tmp_path):
    pack(synthetic_mars_root, tmp_path / "packed", shard_size_bytes=SHARD)

    for protocol in ("torchreid", "official"):
        with PackedDataset.open(tmp_path / "packed", protocol) as packed:
            assert packed.index.protocol == protocol
            assert_same_dataset(read_mars(synthetic_mars_root, protocol), packed)


def test_a_test_tracklet_in_query_and_gallery_is_stored_once(synthetic_mars_root, tmp_path):
    manifest = pack(synthetic_mars_root, tmp_path / "packed", shard_size_bytes=SHARD)

    official = read_mars(synthetic_mars_root, "official")
    assert len(manifest.tracklets) == len(official.train) + len(official.gallery)
    assert set(manifest.splits["query"]) <= set(manifest.splits["gallery"])


def test_frames_of_a_tracklet_lie_contiguously_in_one_shard(synthetic_mars_root, tmp_path):
    manifest = pack(synthetic_mars_root, tmp_path / "packed", shard_size_bytes=SHARD)

    record = manifest.tracklets[0]
    shard = (tmp_path / "packed" / manifest.shards[record.shard].name).read_bytes()
    joined = b"".join((synthetic_mars_root / "bbox_train" / f[:4] / f).read_bytes() for f in record.frames)
    assert shard[record.offset : record.offset + sum(record.lengths)] == joined
    assert record.dir == "bbox_train/0001"


def test_pack_to_s3_uploads_every_shard_before_the_manifest(synthetic_mars_root, s3_bucket, s3_server):
    s3_server.log.clear()
    manifest = pack(synthetic_mars_root, f"s3://{s3_bucket}/mars/v1", shard_size_bytes=SHARD)

    client = boto3.session.Session().client("s3")
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="mars/v1/")["Contents"]
    sizes = {o["Key"]: o["Size"] for o in listed}
    expected = {f"mars/v1/{s.name}": s.size for s in manifest.shards}
    expected[f"mars/v1/{MANIFEST_NAME}"] = len(manifest.to_json())
    assert sizes == expected
    puts = [p for m, p in s3_server.log.requests if m == "PUT"]
    assert puts[-1].endswith(f"/mars/v1/{MANIFEST_NAME}")
    assert sum(p.endswith(MANIFEST_NAME) for p in puts) == 1
    body = client.get_object(Bucket=s3_bucket, Key=f"mars/v1/{MANIFEST_NAME}")["Body"].read()
    assert parse_manifest(body, "test") == manifest


def test_s3_and_local_packs_of_the_same_data_have_the_same_version(synthetic_mars_root, s3_bucket, tmp_path):
    to_s3 = pack(synthetic_mars_root, f"s3://{s3_bucket}/a", shard_size_bytes=SHARD)
    to_dir = pack(synthetic_mars_root, tmp_path / "a", shard_size_bytes=SHARD)

    assert to_s3.version_hash == to_dir.version_hash
    assert to_dir.version_hash == version_hash(to_dir.model_dump(mode="json"))


def test_changing_one_byte_of_one_frame_changes_the_version(synthetic_mars_root, tmp_path):
    copy = tmp_path / "mars"
    shutil.copytree(synthetic_mars_root, copy)
    before = pack(copy, tmp_path / "before", shard_size_bytes=SHARD).version_hash
    frame = next((copy / "bbox_test").rglob("*.jpg"))
    data = bytearray(frame.read_bytes())
    data[-3] ^= 0xFF
    frame.write_bytes(bytes(data))

    assert pack(copy, tmp_path / "after", shard_size_bytes=SHARD).version_hash != before


def test_a_corrupt_jpeg_is_packed_as_is_and_found_by_its_name(synthetic_mars_root, tmp_path):
    copy = tmp_path / "mars"
    shutil.copytree(synthetic_mars_root, copy)
    frame = sorted((copy / "bbox_train").rglob("*.jpg"))[5]
    frame.write_bytes(b"not a jpeg at all")
    pack(copy, tmp_path / "packed", shard_size_bytes=SHARD)

    with PackedDataset.open(tmp_path / "packed") as packed:
        name = frame.relative_to(copy).as_posix()
        assert name in {f for t in packed.index.train for f in t.frames}
        # Decoding fails later, in the loader, which reports this name.
        assert packed.read_frame(name) == b"not a jpeg at all"


def test_an_index_packed_under_torchreid_cannot_serve_the_official_protocol(synthetic_mars_root, tmp_path):
    pack(read_mars(synthetic_mars_root, "torchreid"), tmp_path / "packed", shard_size_bytes=SHARD)

    assert PackedDataset.open(tmp_path / "packed", "torchreid").index.protocol == "torchreid"
    with pytest.raises(DatasetError, match="cannot serve the 'official' protocol; re-pack"):
        PackedDataset.open(tmp_path / "packed", "official")


def test_local_destination_that_is_not_empty_is_refused_and_untouched(synthetic_mars_root, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    with pytest.raises(DatasetError, match="already exists and is not empty"):
        pack(synthetic_mars_root, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_a_failed_local_pack_leaves_nothing_behind(synthetic_mars_root, tmp_path):
    copy = tmp_path / "mars"
    shutil.copytree(synthetic_mars_root, copy)
    missing = sorted((copy / "bbox_test").rglob("*.jpg"))[-1]
    missing.unlink()

    with pytest.raises(DatasetError, match=f"cannot read frame {missing}"):
        pack(copy, tmp_path / "out" / "packed", shard_size_bytes=SHARD)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_packed_dataset_in_s3_is_never_overwritten(synthetic_mars_root, s3_bucket):
    pack(synthetic_mars_root, f"s3://{s3_bucket}/mars", shard_size_bytes=SHARD)

    with pytest.raises(DatasetError, match=f"s3://{s3_bucket}/mars/manifest.json already exists"):
        pack(synthetic_mars_root, f"s3://{s3_bucket}/mars", shard_size_bytes=SHARD)


def test_pack_to_a_missing_bucket_fails_naming_it(synthetic_mars_root, s3_env, s3_server):
    s3_server.log.clear()
    with pytest.raises(DatasetError, match="bucket 'no-such-bucket' does not exist"):
        pack(synthetic_mars_root, "s3://no-such-bucket/mars")
    assert s3_server.log.count("PUT") == 0


def test_manifest_of_an_unknown_version_is_refused_with_upgrade_advice():
    raw = json.dumps({"format": "gltr-packed", "version": 7}).encode()

    with pytest.raises(DatasetError, match="manifest version 7.*reads version 1 only: upgrade"):
        parse_manifest(raw, "s3://b/m/manifest.json")


def test_an_edited_manifest_no_longer_matches_its_version_hash(synthetic_mars_root, tmp_path):
    manifest = pack(synthetic_mars_root, tmp_path / "packed", shard_size_bytes=SHARD)
    content = json.loads(manifest.to_json())
    content["tracklets"][0]["pid"] = 999

    with pytest.raises(DatasetError, match="does not match its own version_hash"):
        parse_manifest(json.dumps(content).encode(), "m.json")


def test_a_manifest_whose_shard_path_leaves_the_dataset_is_refused(synthetic_mars_root, tmp_path):
    manifest = pack(synthetic_mars_root, tmp_path / "packed", shard_size_bytes=SHARD)
    content = json.loads(manifest.to_json())
    content["shards"][0]["name"] = "shards/../../outside.bin"
    content["version_hash"] = version_hash(content)

    with pytest.raises(DatasetError, match=r"m.json is malformed at shards.0.name: .*'\.\.'"):
        parse_manifest(json.dumps(content).encode(), "m.json")


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"format": "tar"}'])
def test_a_file_that_is_not_a_manifest_is_refused_by_name(raw):
    with pytest.raises(DatasetError, match="^x/manifest.json is not"):
        parse_manifest(raw, "x/manifest.json")


@pytest.mark.parametrize(
    ("text", "size"),
    [("256MB", 256 * 2**20), ("1GiB", 2**30), ("512k", 512 * 1024), ("1048576", 2**20)],
)
def test_shard_sizes_are_read_with_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "12XB", "-5MB", "0", "inf", "nan"])
def test_a_malformed_shard_size_is_refused(text):
    with pytest.raises(DatasetError, match="invalid size"):
        parse_size(text)
