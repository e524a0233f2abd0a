"""read_ilidsvid: the published layout and split file to an index per split, and the ways a copy can be wrong."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from gltr_platform.data.identity_splits import NUM_SPLITS
from gltr_platform.data.ilidsvid import read_ilidsvid
from gltr_platform.data.index import DatasetError

# Person numbers with gaps, as iLIDS-VID's are, so ls_set positions and person numbers differ.
PERSONS = (1, 2, 4, 7, 8, 10, 11, 13, 15, 16)
MAT = Path("train-test people splits", "train_test_splits_ilidsvid.mat")


def ls_set(num_persons: int = len(PERSONS), num_splits: int = NUM_SPLITS) -> np.ndarray:
    """As the iLIDS-VID authors ship it: per split, an ordering of persons 1..N (MATLAB doubles)."""
    rng = np.random.default_rng(7)
    return np.stack([rng.permutation(num_persons) + 1 for _ in range(num_splits)]).astype(np.float64)


LS_SET = ls_set()
REPEATED = LS_SET.copy()
REPEATED[0, 1] = REPEATED[0, 0]


@pytest.fixture
def ilids(tmp_path, write_ilidsvid) -> Path:
    return write_ilidsvid(tmp_path / "ilids-vid", PERSONS, LS_SET)


def expected_halves(split: int) -> tuple[list[int], list[int]]:
    """torchreid's reading of ls_set row `split`: first half test, second half train, as persons."""
    row = [PERSONS[int(p) - 1] for p in LS_SET[split]]
    half = len(row) // 2
    return sorted(row[half:]), sorted(row[:half])


@pytest.mark.parametrize("split", range(NUM_SPLITS))
def test_split_k_trains_on_the_second_half_of_ls_set_row_k_and_tests_on_the_first(ilids, split):
    index = read_ilidsvid(ilids, split)

    train, test = expected_halves(split)
    assert [(t.pid, t.camid) for t in index.train] == [(pid, camid) for pid in train for camid in (0, 1)]
    assert [(t.pid, t.camid) for t in index.query] == [(pid, 0) for pid in test]
    assert [(t.pid, t.camid) for t in index.gallery] == [(pid, 1) for pid in test]
    assert {t.split for t in index.query} == {"query"} and {t.split for t in index.gallery} == {"gallery"}


def test_query_frames_come_from_cam1_and_gallery_frames_from_cam2(ilids):
    index = read_ilidsvid(ilids)

    assert all("/sequences/cam1/" in f for t in index.query for f in t.frames)
    assert all("/sequences/cam2/" in f for t in index.gallery for f in t.frames)
    train_pids = {t.pid for t in index.train}
    assert train_pids.isdisjoint({t.pid for t in index.query}) and len(train_pids) == len(PERSONS) // 2


def test_frames_are_absolute_paths_in_frame_order_and_stray_files_are_ignored(ilids):
    person = ilids / "i-LIDS-VID" / "sequences" / "cam2" / "person007"
    (person / "Thumbs.db").touch()
    (person.parent / ".DS_Store").touch()

    index = read_ilidsvid(ilids)
    cam2 = next(t for t in index.train + index.gallery if (t.pid, t.camid) == (7, 1))

    assert list(cam2.frames) == [str(person / f"cam2_person007_{349 + f:05d}.png") for f in range(4)]


def test_every_split_is_kept_in_the_meta_with_the_split_file_it_came_from(ilids):
    index = read_ilidsvid(ilids, 3)

    assert index.name == "ilidsvid" and index.meta["split"] == 3
    assert index.meta["split_source"] == MAT.as_posix()
    assert [(s["train"], s["test"]) for s in index.meta["identity_splits"]] == [
        expected_halves(k) for k in range(NUM_SPLITS)
    ]
    assert "identity split 3" in index.summary()


def test_a_split_that_does_not_exist_is_refused(ilids):
    with pytest.raises(DatasetError, match=r"10 identity splits \(0..9\); split 10 does not exist"):
        read_ilidsvid(ilids, 10)


def test_missing_cam2_folder_is_named(tmp_path, write_ilidsvid):
    root = write_ilidsvid(tmp_path / "ilids", PERSONS, LS_SET)
    for person in (root / "i-LIDS-VID" / "sequences" / "cam2").iterdir():
        for frame in person.iterdir():
            frame.unlink()
        person.rmdir()
    (root / "i-LIDS-VID" / "sequences" / "cam2").rmdir()

    with pytest.raises(DatasetError, match=r"i-LIDS-VID/sequences/cam2 is missing"):
        read_ilidsvid(root)


def test_missing_split_file_names_the_path_expected(tmp_path, write_ilidsvid):
    root = write_ilidsvid(tmp_path / "ilids", PERSONS, None)

    with pytest.raises(DatasetError) as e:
        read_ilidsvid(root)
    assert str(root / MAT) in str(e.value) and "the iLIDS-VID tarball ships it" in str(e.value)


def test_a_person_seen_by_one_camera_only_is_named(tmp_path, write_ilidsvid):
    root = write_ilidsvid(tmp_path / "ilids", PERSONS, LS_SET)
    extra = root / "i-LIDS-VID" / "sequences" / "cam1" / "person099"
    extra.mkdir()
    (extra / "cam1_person099_00001.png").touch()

    with pytest.raises(DatasetError, match="cam1/person099 has no counterpart in cam2"):
        read_ilidsvid(root)


def test_a_person_folder_with_no_frames_is_named(tmp_path, write_ilidsvid):
    root = write_ilidsvid(tmp_path / "ilids", PERSONS, LS_SET)
    for frame in (root / "i-LIDS-VID" / "sequences" / "cam2" / "person010").iterdir():
        frame.unlink()

    with pytest.raises(DatasetError, match=r"cam2/person010 holds no \.png frames"):
        read_ilidsvid(root)


def test_a_folder_that_is_not_a_person_is_named(tmp_path, write_ilidsvid):
    root = write_ilidsvid(tmp_path / "ilids", PERSONS, LS_SET)
    (root / "i-LIDS-VID" / "sequences" / "cam1" / "misc").mkdir()

    with pytest.raises(DatasetError, match="cam1/misc is not a person folder"):
        read_ilidsvid(root)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (ls_set(num_persons=12), r"ls_set has 12 columns \(persons\) but there are 10 person folders"),
        (REPEATED, "row 1 of ls_set is not an ordering of persons 1..10"),
        (np.zeros((0, 10)), r"ls_set has shape \(0, 10\)"),
        (LS_SET + 0.5, "non-integer"),
    ],
    ids=["other-persons", "repeats-a-person", "empty", "fractions"],
)
def test_a_split_file_that_does_not_fit_the_sequences_is_refused(tmp_path, write_ilidsvid, value, message):
    root = write_ilidsvid(tmp_path / "ilids", PERSONS, value)

    with pytest.raises(DatasetError, match=message):
        read_ilidsvid(root)


def test_a_split_file_without_ls_set_says_what_it_holds(tmp_path, write_ilidsvid):
    root = write_ilidsvid(tmp_path / "ilids", PERSONS, LS_SET)
    scipy.io.savemat(root / MAT, {"splits": LS_SET})

    with pytest.raises(DatasetError, match=r"no variable 'ls_set' \(found \['splits'\]\)"):
        read_ilidsvid(root)
