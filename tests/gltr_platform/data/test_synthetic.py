"""Synthetic MARS: MARS's exact layout, determinism, MARS-like queries, learnability, caching."""

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydantic
import pytest
import scipy.io
from PIL import Image

import gltr_platform.data.synthetic as synthetic
from gltr_platform.data.index import DatasetError
from gltr_platform.data.mars import read_mars
from gltr_platform.data.synthetic import (
    COMPLETE_MARKER,
    SyntheticConfig,
    ensure_synthetic_mars,
    generate_synthetic_mars,
)

# The conftest's `synthetic_mars_root`: 8 train ids, 6 test ids, 3 cameras, 2 tracklets per id and
# camera, 4-12 frames, 3 distractor and 2 junk tracklets.
TRAIN_IDS, TEST_IDS, CAMERAS, PER_CAMERA, DISTRACTORS, JUNK = 8, 6, 3, 2, 3, 2

MINI = SyntheticConfig(
    num_ids=2,
    num_test_ids=2,
    num_cameras=2,
    tracklets_per_id=1,
    min_frames=2,
    max_frames=4,
    num_distractor_tracklets=1,
    num_junk_tracklets=1,
)
MARS_NAME = re.compile(r"(\d{4}|00-1)C[1-9]T\d{4}F\d{3}\.jpg")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- Layout ---


def test_writes_the_mars_folders_and_info_files(synthetic_mars_root):
    assert sorted(p.name for p in synthetic_mars_root.iterdir()) == [
        "bbox_test",
        "bbox_train",
        "info",
    ]
    assert sorted(p.name for p in (synthetic_mars_root / "info").iterdir()) == [
        "query_IDX.mat",
        "test_name.txt",
        "tracks_test_info.mat",
        "tracks_train_info.mat",
        "train_name.txt",
    ]
    train_pids = sorted(p.name for p in (synthetic_mars_root / "bbox_train").iterdir())
    test_pids = sorted(p.name for p in (synthetic_mars_root / "bbox_test").iterdir())
    assert train_pids == [f"{pid:04d}" for pid in range(1, TRAIN_IDS + 1)]
    assert test_pids == ["00-1", "0000"] + [f"{p:04d}" for p in range(9, 9 + TEST_IDS)]


def test_mat_files_hold_mars_keys_and_shapes(synthetic_mars_root):
    info = synthetic_mars_root / "info"
    train = scipy.io.loadmat(info / "tracks_train_info.mat")["track_train_info"]
    test = scipy.io.loadmat(info / "tracks_test_info.mat")["track_test_info"]
    query = scipy.io.loadmat(info / "query_IDX.mat")["query_IDX"]
    assert train.shape == (TRAIN_IDS * CAMERAS * PER_CAMERA, 4)
    assert test.shape == (TEST_IDS * CAMERAS * PER_CAMERA + DISTRACTORS + JUNK, 4)
    assert query.shape == (1, TEST_IDS * CAMERAS)
    assert train[0, 0] == 1 and (train[1:, 0] == train[:-1, 1] + 1).all()


def test_name_lists_are_exactly_the_frame_files_in_mars_naming(synthetic_mars_root):
    for split in ("train", "test"):
        names = (synthetic_mars_root / "info" / f"{split}_name.txt").read_text().split()
        assert all(MARS_NAME.fullmatch(n) for n in names)
        on_disk = {p.name for p in (synthetic_mars_root / f"bbox_{split}").glob("*/*")}
        assert sorted(on_disk) == names
        assert all((synthetic_mars_root / f"bbox_{split}" / n[:4] / n).is_file() for n in names)


def test_read_mars_sees_the_configured_counts(synthetic_mars_root):
    index = read_mars(synthetic_mars_root)
    official = read_mars(synthetic_mars_root, protocol="official")
    assert index.num_train_pids == TRAIN_IDS
    assert len(index.train) == TRAIN_IDS * CAMERAS * PER_CAMERA
    assert len(index.query) == TEST_IDS * CAMERAS  # two tracklets per camera: one query from each
    assert len(index.gallery) == TEST_IDS * CAMERAS * (PER_CAMERA - 1) + DISTRACTORS
    assert len(official.gallery) == TEST_IDS * CAMERAS * PER_CAMERA + DISTRACTORS + JUNK
    assert {t.camid for t in index.train} == set(range(CAMERAS))
    assert {t.pid for t in official.gallery} == {-1, 0, *range(9, 9 + TEST_IDS)}


def test_tracklet_lengths_vary_within_the_configured_bounds(synthetic_mars_root):
    lengths = [len(t) for t in read_mars(synthetic_mars_root, protocol="official").gallery]
    assert min(lengths) >= 4 and max(lengths) <= 12
    assert len(set(lengths)) > 3


def test_frames_are_jpegs_of_the_configured_size(synthetic_mars_root):
    for tracklet in read_mars(synthetic_mars_root).query[:3]:
        with Image.open(tracklet.frames[0]) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (32, 64), "RGB")


def test_frames_move_within_a_tracklet(synthetic_mars_root):
    frames = read_mars(synthetic_mars_root).train[0].frames
    first, last = (np.asarray(Image.open(f), dtype=np.float32) for f in (frames[0], frames[-1]))
    assert np.abs(first - last).mean() > 2


# --- Queries are chosen like MARS's ---


def test_every_query_has_a_match_in_another_camera_of_the_gallery(synthetic_mars_root):
    index = read_mars(synthetic_mars_root)
    gallery_cameras = defaultdict(set)
    for t in index.gallery:
        gallery_cameras[t.pid].add(t.camid)
    assert all(gallery_cameras[q.pid] - {q.camid} for q in index.query)
    assert all(q.pid > 0 for q in index.query)


def test_with_one_tracklet_per_camera_one_camera_stays_in_the_gallery(tmp_path):
    config = MINI.model_copy(update={"num_cameras": 3, "num_test_ids": 3})
    index = read_mars(generate_synthetic_mars(tmp_path / "mars", config))
    queries = defaultdict(set)
    for q in index.query:
        queries[q.pid].add(q.camid)
    assert [len(cameras) for cameras in queries.values()] == [2, 2, 2]
    assert all(any(t.pid == pid for t in index.gallery) for pid in queries)


# --- Determinism ---


def test_same_seed_writes_identical_bytes(tmp_path):
    first = tree_bytes(generate_synthetic_mars(tmp_path / "a", MINI))
    second = tree_bytes(generate_synthetic_mars(tmp_path / "b", MINI))
    assert first == second


def test_different_seed_writes_different_frames(tmp_path):
    first = tree_bytes(generate_synthetic_mars(tmp_path / "a", MINI))
    other = tree_bytes(generate_synthetic_mars(tmp_path / "b", MINI.model_copy(update={"seed": 1})))
    frame = next(name for name in first if name.endswith(".jpg") and name in other)
    assert first[frame] != other[frame]


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "mars").mkdir()
    (tmp_path / "mars" / "notes.txt").touch()
    with pytest.raises(FileExistsError):
        generate_synthetic_mars(tmp_path / "mars", MINI)


# --- Learnable, but not by a lookup ---


def test_identities_are_recognisable_across_cameras_from_mean_colours(tmp_path):
    config = SyntheticConfig(num_ids=1, num_test_ids=20, num_cameras=3, tracklets_per_id=2, min_frames=4, max_frames=8)
    index = read_mars(generate_synthetic_mars(tmp_path / "mars", config))

    def colours(frames) -> np.ndarray:  # mean colour of torso and of legs over the tracklet
        clip = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in frames])
        torso, legs = clip[:, 14:30, 10:22], clip[:, 36:56, 10:22]
        return np.concatenate([torso.mean((0, 1, 2)), legs.mean((0, 1, 2))])

    query = np.stack([colours(t.frames) for t in index.query])
    gallery = np.stack([colours(t.frames) for t in index.gallery])
    distance = ((query[:, None] - gallery[None]) ** 2).sum(-1)
    same_camera = np.array([[q.camid == g.camid for g in index.gallery] for q in index.query])
    distance[same_camera] = np.inf
    nearest = [index.gallery[i].pid for i in distance.argmin(1)]
    accuracy = np.mean([q.pid == pid for q, pid in zip(index.query, nearest, strict=True)])
    assert accuracy > 3 / config.num_test_ids


# --- Configuration ---


@pytest.mark.parametrize(
    "bad",
    [
        {"num_identities": 3},  # unknown field
        {"min_frames": 9, "max_frames": 8},
        {"max_frames": 1000},  # MARS frame numbers have three digits
        {"num_cameras": 1},  # no cross-camera queries
        {"num_cameras": 10},  # one camera digit
        {"num_ids": 5000, "num_test_ids": 5000},  # four-digit pids
        {"occlusion_prob": 1.5},
    ],
)
def test_config_rejects_impossible_settings(bad):
    with pytest.raises(pydantic.ValidationError):
        SyntheticConfig(**bad)


# --- Cache ---


def test_ensure_generates_once_and_then_reuses(tmp_path, monkeypatch):
    first = ensure_synthetic_mars(tmp_path, MINI)
    assert (first / COMPLETE_MARKER).is_file()
    assert len(read_mars(first).train) == 4

    def must_not_run(root, config):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(synthetic, "generate_synthetic_mars", must_not_run)
    assert ensure_synthetic_mars(tmp_path, MINI) == first


def test_ensure_names_the_folder_by_the_config(tmp_path):
    first = ensure_synthetic_mars(tmp_path, MINI)
    second = ensure_synthetic_mars(tmp_path, MINI.model_copy(update={"seed": 5}))
    assert first != second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])


def test_ensure_never_exposes_a_half_written_dataset(tmp_path, monkeypatch):
    final = tmp_path / f"synthetic-mars-{synthetic.config_digest(MINI)}"
    real = synthetic.generate_synthetic_mars

    def crash_half_way(root, config):
        assert not final.exists()
        real(root, config)
        assert not final.exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate_synthetic_mars", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_mars(tmp_path, MINI)
    assert list(tmp_path.iterdir()) == []  # nothing final, no temporary left behind

    monkeypatch.setattr(synthetic, "generate_synthetic_mars", real)
    assert (ensure_synthetic_mars(tmp_path, MINI) / COMPLETE_MARKER).is_file()


def test_ensure_keeps_the_copy_of_a_writer_that_finished_first(tmp_path, monkeypatch):
    final = tmp_path / f"synthetic-mars-{synthetic.config_digest(MINI)}"
    real = synthetic.generate_synthetic_mars

    def racing(root, config):
        real(final, config)  # another process completes the same dataset meanwhile
        (final / COMPLETE_MARKER).touch()
        real(root, config)

    monkeypatch.setattr(synthetic, "generate_synthetic_mars", racing)
    assert ensure_synthetic_mars(tmp_path, MINI) == final
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    assert (final / COMPLETE_MARKER).read_text() == ""  # theirs, not ours


def test_ensure_refuses_a_folder_it_did_not_complete(tmp_path):
    final = tmp_path / f"synthetic-mars-{synthetic.config_digest(MINI)}"
    (final / "bbox_train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no .complete marker"):
        ensure_synthetic_mars(tmp_path, MINI)


def test_ensured_dataset_is_readable_by_other_users(tmp_path):
    assert os.stat(ensure_synthetic_mars(tmp_path, MINI)).st_mode & 0o755 == 0o755
