"""read_prid2011: the published multi-shot layout to an index per split (torchreid's split file, or splits
drawn deterministically without it), and the ways a copy can be wrong."""

import logging
from pathlib import Path

import pytest

from gltr_platform.data.identity_splits import NUM_SPLITS
from gltr_platform.data.index import DatasetError
from gltr_platform.data.prid2011 import MIN_FRAMES, read_prid2011

# Persons 1..200 are seen by both cameras: {pid: frames} per camera. Persons 3 and 5 have fewer than 27
# frames in one camera, so the standard protocol leaves them out. Above 200 a folder name is a different
# person in each camera (cam_a has 385 persons, cam_b 749), so those are never used.
CAM_A = {1: 27, 2: 40, 3: 26, 4: 28, 5: 30, 6: 27, 7: 33, 8: 27, 9: 29, 10: 31, 201: 30, 202: 30}
CAM_B = {1: 30, 2: 27, 3: 35, 4: 28, 5: 21, 6: 27, 7: 29, 8: 31, 9: 27, 10: 40, 201: 28, 203: 35}
CAMERAS = {"cam_a": CAM_A, "cam_b": CAM_B}
ELIGIBLE = (1, 2, 4, 6, 7, 8, 9, 10)
# torchreid's splits_prid2011.json: person folder names per split.
JSON_SPLITS = [
    {"train": [f"person_{p:04d}" for p in train], "test": [f"person_{p:04d}" for p in test]}
    for train, test in [((1, 2, 3, 4, 5), (6, 7, 8, 9, 10)), ((6, 7, 8, 9, 10), (1, 2, 3, 4, 5)), ((2, 9), (3, 10))]
]


@pytest.fixture
def prid(tmp_path, write_prid2011) -> Path:
    return write_prid2011(tmp_path / "prid2011", CAMERAS)


def roles(index) -> tuple[list, list, list]:
    return (
        [(t.pid, t.camid) for t in index.train],
        [(t.pid, t.camid) for t in index.query],
        [(t.pid, t.camid) for t in index.gallery],
    )


@pytest.mark.parametrize("split", range(3))
def test_torchreids_split_file_gives_train_both_cameras_query_cam_a_gallery_cam_b(tmp_path, write_prid2011, split):
    root = write_prid2011(tmp_path / "prid2011", CAMERAS, JSON_SPLITS)

    index = read_prid2011(root, split)

    train = [int(n[-4:]) for n in JSON_SPLITS[split]["train"]]
    test = [int(n[-4:]) for n in JSON_SPLITS[split]["test"]]
    assert roles(index) == (
        [(pid, camid) for pid in train for camid in (0, 1)],
        [(pid, 0) for pid in test],
        [(pid, 1) for pid in test],
    )
    assert all("/multi_shot/cam_a/" in f for t in index.query for f in t.frames)
    assert all("/multi_shot/cam_b/" in f for t in index.gallery for f in t.frames)
    assert index.meta["split_source"] == "splits_prid2011.json"


def test_frames_are_absolute_paths_in_frame_order(prid):
    index = read_prid2011(prid)
    tracklet = next(t for t in index.train + index.gallery if (t.pid, t.camid) == (2, 1))

    folder = prid / "prid_2011" / "multi_shot" / "cam_b" / "person_0002"
    assert list(tracklet.frames) == [str(folder / f"{f:04d}.png") for f in range(1, 28)]


def test_without_a_split_file_ten_splits_are_drawn_from_the_persons_with_27_frames_in_both_cameras(prid, caplog):
    with caplog.at_level(logging.WARNING):
        splits = read_prid2011(prid).meta["identity_splits"]

    assert MIN_FRAMES == 27 and len(splits) == NUM_SPLITS
    for s in splits:
        assert sorted(s["train"] + s["test"]) == list(ELIGIBLE)
        assert len(s["train"]) == len(s["test"]) == len(ELIGIBLE) // 2
    assert len({tuple(s["test"]) for s in splits}) > 5  # random, not one split repeated
    assert "no splits_prid2011.json" in caplog.text and "not the published splits" in caplog.text


def test_drawn_splits_are_the_same_on_every_read_and_split_k_follows_them(prid):
    first, again = read_prid2011(prid), read_prid2011(prid, 4)

    assert first.meta["identity_splits"] == again.meta["identity_splits"]
    # Pinned: the draw must not change across Python or numpy versions, or results would not compare.
    assert [s["test"] for s in first.meta["identity_splits"][:3]] == [[2, 4, 8, 10], [1, 4, 7, 8], [1, 7, 8, 10]]
    train = again.meta["identity_splits"][4]["train"]
    test = again.meta["identity_splits"][4]["test"]
    assert roles(again) == ([(p, c) for p in train for c in (0, 1)], [(p, 0) for p in test], [(p, 1) for p in test])
    assert again.meta["split_source"].startswith("generated: 10 seeded halves (seed 0) of the 8 persons")


def test_persons_above_200_are_never_used(prid):
    index = read_prid2011(prid)

    assert max(t.pid for t in index.train + index.query + index.gallery) <= 200


def test_missing_cam_b_folder_is_named(tmp_path, write_prid2011):
    root = write_prid2011(tmp_path / "prid2011", {"cam_a": CAM_A})

    with pytest.raises(DatasetError, match="prid_2011/multi_shot/cam_b is missing"):
        read_prid2011(root)


def test_a_shared_person_missing_from_one_camera_is_named(tmp_path, write_prid2011):
    root = write_prid2011(tmp_path / "prid2011", {"cam_a": CAM_A, "cam_b": {**CAM_B, 11: 30}})

    with pytest.raises(DatasetError, match="cam_b/person_0011 has no counterpart in cam_a"):
        read_prid2011(root)


def test_a_person_folder_with_no_frames_is_named(tmp_path, write_prid2011):
    root = write_prid2011(tmp_path / "prid2011", {"cam_a": {**CAM_A, 4: 0}, "cam_b": CAM_B})

    with pytest.raises(DatasetError, match=r"cam_a/person_0004 holds no \.png frames"):
        read_prid2011(root)


def test_too_few_long_enough_persons_to_split_is_refused(tmp_path, write_prid2011):
    root = write_prid2011(tmp_path / "prid2011", {"cam_a": {1: 30, 2: 5}, "cam_b": {1: 30, 2: 30}})

    with pytest.raises(DatasetError, match="only 1 persons .* have >= 27 frames in both cameras"):
        read_prid2011(root)


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"train": []}, "expected a non-empty list"),
        ([{"train": ["person_0001"]}], 'split 0 is not {"train"'),
        ([{"train": ["person_0001"], "test": ["p2"]}], "split 0 test lists 'p2', not a person folder"),
        ([{"train": ["person_0001"], "test": ["person_0201"]}], "lists person_0201, which is not one of the persons"),
        ([{"train": ["person_0001"], "test": ["person_0001"]}], "lists person_0001 in both train and test"),
    ],
)
def test_a_split_file_that_does_not_fit_the_dataset_is_refused(tmp_path, write_prid2011, splits, message):
    root = write_prid2011(tmp_path / "prid2011", CAMERAS, splits)

    with pytest.raises(DatasetError, match=message):
        read_prid2011(root)


def test_a_split_file_that_is_not_json_is_refused(prid):
    (prid / "splits_prid2011.json").write_text("[{")

    with pytest.raises(DatasetError, match="splits_prid2011.json is not readable JSON"):
        read_prid2011(prid)
