"""read_dukev: DukeMTMC-VideoReID folders to a dataset index, and the ways a tree can be wrong."""

from pathlib import Path

import pytest

from gltr_platform.data.dukev import read_dukev
from gltr_platform.data.index import DatasetError


def frames(pid: int, camera: int, numbers) -> list[str]:
    return [f"{pid:04d}_C{camera}_F{n:04d}_X{30000 + n:05d}.jpg" for n in numbers]


def write_dukev(root: Path, layout: dict) -> Path:
    """Empty frame files for {split: {pid folder: {tracklet folder: [frame names]}}}."""
    for split, pids in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for pid, tracklets in pids.items():
            for tracklet, names in tracklets.items():
                folder = root / split / pid / tracklet
                folder.mkdir(parents=True)
                for name in names:
                    (folder / name).touch()
    return root


LAYOUT = {
    "train": {
        "0001": {"0001": frames(1, 1, [3, 1, 2]), "0002": frames(1, 6, range(1, 5))},
        "0007": {"0001": frames(7, 2, [2, 3])},
    },
    "query": {"0005": {"0001": frames(5, 3, [1, 2])}},
    "gallery": {
        "0005": {"0003": frames(5, 4, [9, 10]), "0004": frames(5, 3, [1])},
        "0009": {"0001": frames(9, 8, [1, 2, 3])},
    },
}


@pytest.fixture
def dukev(tmp_path) -> Path:
    return write_dukev(tmp_path / "DukeMTMC-VideoReID", LAYOUT)


def test_reads_every_split_with_pids_from_folders_and_zero_based_cameras_from_names(dukev):
    index = read_dukev(dukev)
    assert [(t.pid, t.camid, len(t)) for t in index.train] == [(1, 0, 3), (1, 5, 4), (7, 1, 2)]
    assert [(t.pid, t.camid, len(t)) for t in index.query] == [(5, 2, 2)]
    assert [(t.pid, t.camid, len(t)) for t in index.gallery] == [(5, 3, 2), (5, 2, 1), (9, 7, 3)]
    assert (index.name, index.protocol) == ("dukev", "torchreid")
    assert {t.split for t in index.gallery} == {"gallery"}


def test_frames_are_absolute_paths_sorted_by_name(dukev):
    first = read_dukev(dukev).train[0]
    assert list(first.frames) == [str(dukev / "train" / "0001" / "0001" / name) for name in frames(1, 1, [1, 2, 3])]


def test_same_pid_same_camera_gallery_entries_are_kept_for_the_evaluation(tmp_path):
    layout = {**LAYOUT, "gallery": {"0005": {"0001": frames(5, 3, [4]), "0002": frames(5, 3, [5])}}}
    index = read_dukev(write_dukev(tmp_path / "duke", layout))
    assert [(t.pid, t.camid) for t in index.gallery] == [(5, 2), (5, 2)]


def test_stray_files_beside_the_data_are_ignored(dukev):
    (dukev / "train" / ".DS_Store").touch()
    (dukev / "train" / "0001" / "0001" / "Thumbs.db").touch()
    assert len(read_dukev(dukev).train[0]) == 3


@pytest.mark.parametrize("split", ["train", "query", "gallery"])
def test_missing_split_folder_is_named(tmp_path, split):
    root = write_dukev(tmp_path / "duke", {s: v for s, v in LAYOUT.items() if s != split})
    with pytest.raises(DatasetError, match=f"{split} is missing"):
        read_dukev(root)


def test_empty_dataset_is_rejected(tmp_path):
    root = write_dukev(tmp_path / "duke", {"train": {}, "query": {}, "gallery": {}})
    with pytest.raises(DatasetError, match="train holds no tracklets"):
        read_dukev(root)


def test_tracklet_without_frames_is_rejected(tmp_path):
    layout = {**LAYOUT, "query": {"0005": {"0001": []}}}
    with pytest.raises(DatasetError, match="0005/0001 holds no .jpg frames"):
        read_dukev(write_dukev(tmp_path / "duke", layout))


def test_tracklet_mixing_cameras_is_rejected(tmp_path):
    mixed = frames(5, 3, [1]) + frames(5, 4, [2])
    layout = {**LAYOUT, "query": {"0005": {"0001": mixed}}}
    with pytest.raises(DatasetError, match=r"query/0005/0001 mixes frames from cameras \[3, 4\]"):
        read_dukev(write_dukev(tmp_path / "duke", layout))


@pytest.mark.parametrize(
    "bad",
    [
        "0005C3F0001X30001.jpg",  # the old naming without underscores
        "0005_C3_F0001.jpg",
        "0005_CA_F0001_X30001.jpg",
        "5_C3_F0001_X30001.jpg",
    ],
)
def test_unparsable_frame_name_is_rejected(tmp_path, bad):
    layout = {**LAYOUT, "query": {"0005": {"0001": [*frames(5, 3, [1]), bad]}}}
    with pytest.raises(DatasetError, match=f"{bad} is not a DukeMTMC-VideoReID frame name"):
        read_dukev(write_dukev(tmp_path / "duke", layout))


def test_frame_of_another_identity_is_rejected(tmp_path):
    layout = {**LAYOUT, "query": {"0005": {"0001": frames(6, 3, [1])}}}
    with pytest.raises(DatasetError, match="names pid 0006 but sits in 0005/"):
        read_dukev(write_dukev(tmp_path / "duke", layout))


def test_camera_zero_is_rejected(tmp_path):
    layout = {**LAYOUT, "query": {"0005": {"0001": frames(5, 0, [1])}}}
    with pytest.raises(DatasetError, match="camera C0"):
        read_dukev(write_dukev(tmp_path / "duke", layout))


def test_identity_folder_that_is_not_four_digits_is_rejected(tmp_path):
    layout = {**LAYOUT, "query": {"person5": {"0001": frames(5, 3, [1])}}}
    with pytest.raises(DatasetError, match="person5 is not an identity folder"):
        read_dukev(write_dukev(tmp_path / "duke", layout))
