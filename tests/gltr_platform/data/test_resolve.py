"""open_dataset: every accepted spec ends as a packed dataset's index and frame source."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gltr_platform.data.dukev import read_dukev
from gltr_platform.data.ilidsvid import read_ilidsvid
from gltr_platform.data.index import DatasetError
from gltr_platform.data.mars import read_mars
from gltr_platform.data.pack import pack
from gltr_platform.data.prid2011 import read_prid2011
from gltr_platform.data.resolve import open_dataset
from gltr_platform.data.transforms import decode_frames

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


ILIDS_PERSONS = (1, 2, 4, 7, 8, 10)
ILIDS_LS_SET = np.stack([np.random.default_rng(k).permutation(6) + 1 for k in range(10)]).astype(np.float64)
PRID_CAMERAS = {"cam_a": {1: 3, 2: 4, 3: 2, 4: 5, 250: 2}, "cam_b": {1: 2, 2: 3, 3: 4, 4: 2, 250: 3}}
PRID_SPLITS = [{"train": ["person_0001", "person_0003"], "test": ["person_0002", "person_0004"]},
               {"train": ["person_0002", "person_0004"], "test": ["person_0001", "person_0003"]}]  # fmt: skip


def test_a_raw_ilidsvid_directory_is_packed_once_and_serves_every_split_like_the_reader(tmp_path, write_ilidsvid):
    root = write_ilidsvid(tmp_path / "ilids-vid", ILIDS_PERSONS, ILIDS_LS_SET)

    for split in (0, 3, 9):
        index, source, info = open_dataset(root, tmp_path / "cache", "official", split=split, progress=False)

        assert info["kind"] == "ilidsvid" and index.name == "ilidsvid" and index.meta["split"] == split
        assert frames_of(index, source) == raw_frames_of(read_ilidsvid(root, split))
    assert len(list((tmp_path / "cache" / "raw").iterdir())) == 2  # one entry (and its lock) for all splits


def test_a_raw_prid2011_directory_serves_every_split_under_both_protocols_like_the_reader(tmp_path, write_prid2011):
    root = write_prid2011(tmp_path / "prid2011", PRID_CAMERAS, PRID_SPLITS)

    for protocol in ("torchreid", "official"):
        for split in (0, 1):
            index, source, info = open_dataset(root, tmp_path / "cache", protocol, split=split, progress=False)

            assert info["kind"] == "prid2011" and index.protocol == protocol
            assert frames_of(index, source) == raw_frames_of(read_prid2011(root, split))


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")
def test_packed_png_frames_decode_to_exactly_the_pixels_of_the_files(tmp_path, write_prid2011):
    root = write_prid2011(tmp_path / "prid2011", PRID_CAMERAS, PRID_SPLITS)
    index, source, _ = open_dataset(root, tmp_path / "cache", progress=False)
    tracklet = index.query[0]

    decoded = decode_frames([source.read_frame(f) for f in tracklet.frames], tracklet.frames)

    raw = read_prid2011(root).query[0]
    for frame, path in zip(decoded, raw.frames, strict=True):
        assert np.array_equal(frame.permute(1, 2, 0).numpy(), np.asarray(Image.open(path).convert("RGB")))


def test_a_split_other_than_0_of_a_dataset_with_one_fixed_split_is_refused(tmp_path):
    root = write_tiny_dukev(tmp_path / "dukev")

    with pytest.raises(DatasetError, match="'dukev' has one fixed train/test split, so split 1 does not exist"):
        open_dataset(root, tmp_path / "cache", split=1, progress=False)


def test_a_raw_ilidsvid_directory_without_cam2_is_refused_naming_it_and_leaves_the_cache_alone(tmp_path):
    (tmp_path / "ilids-vid" / "i-LIDS-VID" / "sequences" / "cam1" / "person001").mkdir(parents=True)

    with pytest.raises(DatasetError, match="i-LIDS-VID/sequences/cam2 is missing"):
        open_dataset(tmp_path / "ilids-vid", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("spec", ["missing-dir", "empty-dir", "a-file", "http://host/data"])
def test_anything_else_is_refused_listing_the_accepted_forms(spec, tmp_path):
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    target = spec if spec.startswith("http") else tmp_path / spec

    with pytest.raises(DatasetError, match="expected an s3://bucket/prefix URI .* raw MARS"):
        open_dataset(target, tmp_path / "cache")
