"""open_dataset: every accepted spec ends as a packed dataset's index and frame source."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gltr_platform.data.dukev import read_dukev
from gltr_platform.data.index import DatasetError
from gltr_platform.data.mars import read_mars
from gltr_platform.data.pack import pack
from gltr_platform.data.resolve import open_dataset

SHARD = 64 * 1024


def write_tiny_dukev(root: Path) -> Path:
    """A DukeMTMC-VideoReID tree: 2 train ids, 1 query and 2 gallery tracklets, 3 frames each."""
    layout = {
        "train": [(1, 1, 2), (1, 2, 3), (2, 1, 5)],
        "query": [(3, 1, 1)],
        "gallery": [(3, 1, 2), (4, 2, 6)],
    }
    for split, tracklets in layout.items():
        for pid, tracklet, camera in tracklets:
            folder = root / split / f"{pid:04d}" / f"{tracklet:04d}"
            folder.mkdir(parents=True)
            for frame in range(3):
                jpeg = io.BytesIO()
                Image.new("RGB", (8, 16), (pid * 40, tracklet * 60, frame * 80)).save(jpeg, "JPEG")
                name = f"{pid:04d}_C{camera}_F{frame + 1:04d}_X{tracklet}{frame}.jpg"
                (folder / name).write_bytes(jpeg.getvalue())
    return root


def frames_of(index, source) -> list[tuple[int, int, list[bytes]]]:
    """Everything a loader would see: per tracklet of every split, pid, camid and frame bytes."""
    return [
        (t.pid, t.camid, [source.read_frame(f) for f in t.frames])
        for split in ("train", "query", "gallery")
        for t in getattr(index, split)
    ]


def raw_frames_of(index) -> list[tuple[int, int, list[bytes]]]:
    return [
        (t.pid, t.camid, [Path(f).read_bytes() for f in t.frames])
        for split in ("train", "query", "gallery")
        for t in getattr(index, split)
    ]


def test_an_s3_uri_is_synced_into_the_cache(synthetic_mars_root, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/mars"
    manifest = pack(synthetic_mars_root, uri, shard_size_bytes=SHARD, progress=False)

    index, source, info = open_dataset(uri, tmp_path / "cache", "official", progress=False)

    assert info["uri"] == uri and info["version"] == manifest.version_hash
    assert info["path"] == str(tmp_path / "cache" / manifest.version_hash)
    assert frames_of(index, source) == raw_frames_of(read_mars(synthetic_mars_root, "official"))


def test_a_local_packed_directory_is_read_in_place(synthetic_mars_root, tmp_path):
    manifest = pack(synthetic_mars_root, tmp_path / "packed", shard_size_bytes=SHARD)

    index, source, info = open_dataset(tmp_path / "packed", tmp_path / "cache")

    assert info["version"] == manifest.version_hash and info["kind"] == "packed"
    assert info["path"] == str(tmp_path / "packed")
    assert not (tmp_path / "cache").exists()
    assert frames_of(index, source) == raw_frames_of(read_mars(synthetic_mars_root))


def test_a_raw_mars_directory_is_packed_into_the_cache_once(synthetic_mars_root, tmp_path):
    first = open_dataset(synthetic_mars_root, tmp_path / "cache", progress=False)
    manifest = Path(first[2]["path"]) / "manifest.json"
    written = manifest.stat().st_mtime_ns

    index, source, info = open_dataset(synthetic_mars_root, tmp_path / "cache", progress=False)

    assert info == first[2] and info["kind"] == "mars"
    assert manifest.stat().st_mtime_ns == written
    assert len(list((tmp_path / "cache" / "raw").iterdir())) == 2  # the entry and its lock
    assert frames_of(index, source) == raw_frames_of(read_mars(synthetic_mars_root))


def test_a_changed_raw_directory_is_packed_again(synthetic_mars_root, tmp_path):
    copy = tmp_path / "mars"
    shutil.copytree(synthetic_mars_root, copy)
    before = open_dataset(copy, tmp_path / "cache", progress=False)[2]
    frame = next((copy / "bbox_train").rglob("*.jpg"))
    frame.write_bytes(frame.read_bytes() + b"\0")

    after = open_dataset(copy, tmp_path / "cache", progress=False)[2]

    assert after["path"] != before["path"] and after["version"] != before["version"]


def test_a_raw_dukev_directory_is_packed_and_read_like_the_reader_under_both_protocols(tmp_path):
    root = write_tiny_dukev(tmp_path / "dukev")

    for protocol in ("torchreid", "official"):
        index, source, info = open_dataset(root, tmp_path / "cache", protocol, progress=False)

        assert info["kind"] == "dukev" and index.name == "dukev" and index.protocol == protocol
        assert frames_of(index, source) == raw_frames_of(read_dukev(root))


@pytest.mark.parametrize("spec", ["missing-dir", "empty-dir", "a-file", "http://host/data"])
def test_anything_else_is_refused_listing_the_accepted_forms(spec, tmp_path):
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    target = spec if spec.startswith("http") else tmp_path / spec

    with pytest.raises(DatasetError, match="expected an s3://bucket/prefix URI .* raw MARS"):
        open_dataset(target, tmp_path / "cache")
