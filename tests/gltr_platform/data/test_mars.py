"""read_mars: the real MARS structure (from its real metadata) and every way the files can be wrong."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from gltr_platform.data.index import DatasetError
from gltr_platform.data.mars import mars_frame_name, read_mars

INFO_FILES = [
    "train_name.txt",
    "test_name.txt",
    "tracks_train_info.mat",
    "tracks_test_info.mat",
    "query_IDX.mat",
]


def names_for(rows) -> list[str]:
    """Frame names in MARS's scheme for track-info rows, tracklets numbered per (pid, camera)."""
    numbers: dict[tuple[int, int], int] = {}
    names = []
    for start, end, pid, camera in np.asarray(rows).tolist():
        t = numbers[pid, camera] = numbers.get((pid, camera), 0) + 1
        names += [mars_frame_name(pid, camera, t, f) for f in range(1, end - start + 2)]
    return names


def write_mars(root: Path, train, test, query, train_names=None, test_names=None, mat_dir: Path | None = None) -> Path:
    """A MARS tree without frame files: name lists (generated from the rows unless given) + .mat."""
    (root / "bbox_train").mkdir(parents=True)
    (root / "bbox_test").mkdir()
    info = root / "info"
    info.mkdir()
    train_names = names_for(train) if train_names is None else train_names
    test_names = names_for(test) if test_names is None else test_names
    (info / "train_name.txt").write_text("".join(n + "\n" for n in train_names))
    (info / "test_name.txt").write_text("".join(n + "\n" for n in test_names))
    if mat_dir is not None:
        for name in INFO_FILES[2:]:
            shutil.copyfile(mat_dir / name, info / name)
        return root
    scipy.io.savemat(info / "tracks_train_info.mat", {"track_train_info": np.asarray(train)})
    scipy.io.savemat(info / "tracks_test_info.mat", {"track_test_info": np.asarray(test)})
    scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.asarray(query)})
    return root


# --- The real MARS structure: the distributed metadata, frame names generated from its rows. ---


@pytest.fixture(scope="module")
def real_mars(tmp_path_factory, mars_info_dir) -> Path:
    def rows(name: str, key: str) -> np.ndarray:
        return scipy.io.loadmat(mars_info_dir / name)[key]

    train = rows("tracks_train_info.mat", "track_train_info")
    test = rows("tracks_test_info.mat", "track_test_info")
    root = tmp_path_factory.mktemp("real-mars") / "MARS"
    return write_mars(root, train, test, None, mat_dir=mars_info_dir)


@pytest.fixture(scope="module")
def real_torchreid(real_mars):
    return read_mars(real_mars)


@pytest.fixture(scope="module")
def real_official(real_mars):
    return read_mars(real_mars, protocol="official")


def test_real_mars_train_split_has_625_ids_in_8298_tracklets(real_torchreid):
    assert real_torchreid.num_train_pids == 625
    assert len(real_torchreid.train) == 8298
    assert sum(len(t) for t in real_torchreid.train) == 509_914


def test_real_mars_torchreid_protocol_has_1980_queries_and_9330_gallery_tracklets(real_torchreid):
    assert real_torchreid.protocol == "torchreid"
    assert len(real_torchreid.query) == 1980
    assert len(real_torchreid.gallery) == 9330


def test_real_mars_torchreid_protocol_drops_junk_everywhere(real_torchreid):
    for split in (real_torchreid.train, real_torchreid.query, real_torchreid.gallery):
        assert all(t.pid != -1 for t in split)


def test_real_mars_official_gallery_is_every_test_tracklet(real_official):
    assert len(real_official.gallery) == 12_180
    assert sum(len(t) for t in real_official.gallery) == 681_089
    assert sum(t.pid == -1 for t in real_official.gallery) == 870
    assert {t.frames for t in real_official.query} <= {t.frames for t in real_official.gallery}


def test_real_mars_query_is_the_same_in_both_protocols(real_torchreid, real_official):
    assert real_official.query == real_torchreid.query


def test_real_mars_cameras_are_zero_based_0_to_5_in_every_split(real_torchreid):
    for split in (real_torchreid.train, real_torchreid.query, real_torchreid.gallery):
        assert {t.camid for t in split} == set(range(6))


def test_real_mars_splits_are_labelled(real_official):
    assert {t.split for t in real_official.train} == {"train"}
    assert {t.split for t in real_official.query} == {"query"}
    assert {t.split for t in real_official.gallery} == {"gallery"}


def test_frames_are_absolute_paths_in_the_folder_named_by_their_first_four_chars(real_official):
    root = Path(real_official.meta["root"])
    junk = next(t for t in real_official.gallery if t.pid == -1)
    first = real_official.train[0]
    assert first.frames[0] == str(root / "bbox_train" / "0001" / "0001C1T0001F001.jpg")
    assert junk.frames[0] == str(root / "bbox_test" / "00-1" / "00-1C1T0001F001.jpg")
    assert all(os.path.isabs(f) for f in first.frames)


def test_reading_needs_no_frame_files(real_mars, real_official):
    # The tree holds no images at all: the name lists checked against the .mat rows are the index.
    assert not any((real_mars / "bbox_train").iterdir())
    assert len(real_official.train) == 8298


# --- A hand-made small tree, to pin the protocols down exactly. ---

TRAIN = [[1, 3, 1, 1], [4, 5, 1, 2], [6, 7, 2, 1]]
TEST = [
    [1, 2, -1, 1],  # 1 junk
    [3, 4, 0, 2],  # 2 distractor
    [5, 6, 3, 1],  # 3 query
    [7, 9, 3, 2],  # 4
    [10, 11, 3, 2],  # 5
    [12, 13, 4, 1],  # 6 query
    [14, 15, 4, 3],  # 7
]
QUERY = [[3, 6]]


@pytest.fixture
def small(tmp_path) -> Path:
    return write_mars(tmp_path / "MARS", TRAIN, TEST, QUERY)


def test_torchreid_gallery_is_test_minus_queries_minus_junk(small):
    index = read_mars(small)
    assert [(t.pid, t.camid) for t in index.query] == [(3, 0), (4, 0)]
    assert [(t.pid, t.camid, len(t)) for t in index.gallery] == [
        (0, 1, 2),
        (3, 1, 3),
        (3, 1, 2),
        (4, 2, 2),
    ]


def test_official_gallery_keeps_queries_and_junk_in_file_order(small):
    index = read_mars(small, protocol="official")
    assert [t.pid for t in index.gallery] == [-1, 0, 3, 3, 3, 4, 4]
    assert index.gallery[2].frames == index.query[0].frames


def test_train_tracklets_keep_file_pids_and_follow_the_name_list(small):
    index = read_mars(small)
    assert [(t.pid, t.camid, len(t)) for t in index.train] == [(1, 0, 3), (1, 1, 2), (2, 0, 2)]
    assert [Path(f).name for f in index.train[0].frames] == [
        "0001C1T0001F001.jpg",
        "0001C1T0001F002.jpg",
        "0001C1T0001F003.jpg",
    ]


def test_junk_queries_are_dropped_in_both_protocols(tmp_path):
    root = write_mars(tmp_path / "MARS", TRAIN, TEST, [[1, 3]])
    for protocol in ("torchreid", "official"):
        assert [t.pid for t in read_mars(root, protocol).query] == [3]


def test_index_name_and_protocol_are_recorded(small):
    index = read_mars(small, protocol="official")
    assert (index.name, index.protocol) == ("mars", "official")
    assert index.meta["root"] == str(small)


def test_mars_frame_name_follows_the_naming_scheme():
    assert mars_frame_name(1, 1, 1, 1) == "0001C1T0001F001.jpg"
    assert mars_frame_name(-1, 6, 12, 345) == "00-1C6T0012F345.jpg"
    assert mars_frame_name(0, 2, 9999, 999) == "0000C2T9999F999.jpg"
    with pytest.raises(ValueError):
        mars_frame_name(1, 1, 1, 1000)


# --- Every way the files can be wrong gives one DatasetError naming the file. ---


def test_unknown_protocol_names_the_allowed_ones(small):
    with pytest.raises(DatasetError, match="torchreid.*official"):
        read_mars(small, protocol="mars")


def test_missing_root_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_mars(tmp_path / "nowhere")


@pytest.mark.parametrize("folder", ["bbox_train", "bbox_test"])
def test_missing_frame_folder_is_reported(small, folder):
    (small / folder).rmdir()
    with pytest.raises(DatasetError, match=f"{folder} is missing"):
        read_mars(small)


@pytest.mark.parametrize("name", INFO_FILES)
def test_missing_info_file_is_named(small, name):
    (small / "info" / name).unlink()
    with pytest.raises(DatasetError, match=f"{name} is missing"):
        read_mars(small)


@pytest.mark.parametrize("name", INFO_FILES[2:])
def test_corrupt_mat_file_is_named(small, name):
    (small / "info" / name).write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(DatasetError, match=f"{name} is not a readable MATLAB"):
        read_mars(small)


def test_truncated_mat_file_is_named(small):
    path = small / "info" / "tracks_test_info.mat"
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(DatasetError, match="tracks_test_info.mat"):
        read_mars(small)


def test_wrong_variable_name_is_reported_with_what_was_found(small):
    scipy.io.savemat(small / "info" / "tracks_train_info.mat", {"tracks": np.asarray(TRAIN)})
    with pytest.raises(DatasetError, match=r"no variable 'track_train_info' \(found \['tracks'\]\)"):
        read_mars(small)


def test_track_info_without_four_columns_is_rejected(small):
    rows = np.asarray(TEST)[:, :3]
    scipy.io.savemat(small / "info" / "tracks_test_info.mat", {"track_test_info": rows})
    with pytest.raises(DatasetError, match=r"tracks_test_info.mat: track_test_info has shape \(7, 3\)"):
        read_mars(small)


def test_non_integer_track_info_is_rejected(small):
    rows = np.asarray(TRAIN, dtype=float) + 0.5
    scipy.io.savemat(small / "info" / "tracks_train_info.mat", {"track_train_info": rows})
    with pytest.raises(DatasetError, match="non-integer"):
        read_mars(small)


def test_integral_float_track_info_is_accepted(small):
    rows = np.asarray(TRAIN, dtype=float)
    scipy.io.savemat(small / "info" / "tracks_train_info.mat", {"track_train_info": rows})
    assert len(read_mars(small).train) == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([3, 2, 1, 1], "start > end"),
        ([0, 3, 1, 1], "start < 1"),
        ([1, 8, 1, 1], "ends past the 7 names in .*train_name.txt"),
        ([1, 3, 1, 0], "camid < 1"),
    ],
)
def test_impossible_track_rows_are_named_by_row(tmp_path, row, message):
    root = write_mars(tmp_path / "MARS", [row, *TRAIN[1:]], TEST, QUERY, train_names=names_for(TRAIN))
    with pytest.raises(DatasetError, match=f"tracks_train_info.mat: row 1 .*{message}"):
        read_mars(root)


@pytest.mark.parametrize(
    ("row", "claims"),
    [
        ([6, 7, 5, 1], "pid 5 camera 1"),  # wrong pid
        ([6, 7, 2, 3], "pid 2 camera 3"),  # wrong camera
        ([6, 7, -1, 1], "pid -1 camera 1"),  # claims junk, names say pid 2
    ],
)
def test_rows_disagreeing_with_the_name_list_are_rejected(tmp_path, row, claims):
    train = [*TRAIN[:2], row]
    root = write_mars(tmp_path / "MARS", train, TEST, QUERY, train_names=names_for(TRAIN))
    with pytest.raises(DatasetError, match=f"row 3 .* claims {claims}, but line 6 of .*train_name"):
        read_mars(root)


def test_junk_names_under_a_real_pid_are_rejected(tmp_path):
    test = [[1, 2, 7, 1], *TEST[1:]]  # rows say pid 7 where the names are 00-1 junk
    root = write_mars(tmp_path / "MARS", TRAIN, test, QUERY, test_names=names_for(TEST))
    with pytest.raises(DatasetError, match="row 1 .* claims pid 7 camera 1, but line 1 of .*00-1C1"):
        read_mars(root)


@pytest.mark.parametrize(
    "bad",
    [
        "0001C1T0001F01.jpg",  # short frame number
        "0001X1T0001F002.jpg",  # X for C
        "00a1C1T0001F002.jpg",  # letter in pid
        "0-01C1T0001F002.jpg",  # not the junk prefix
        "0001C1T0001F002.png",  # not a jpg
        "0001C1T0001F0002.jpg",  # too long
    ],
)
def test_unparsable_frame_names_are_reported_with_their_line(tmp_path, bad):
    names = names_for(TRAIN)
    names[1] = bad
    root = write_mars(tmp_path / "MARS", TRAIN, TEST, QUERY, train_names=names)
    with pytest.raises(DatasetError, match="line 2 of .*train_name.txt is .*not a MARS frame name"):
        read_mars(root)


def test_empty_name_list_is_rejected(tmp_path):
    root = write_mars(tmp_path / "MARS", TRAIN, TEST, QUERY, test_names=[])
    with pytest.raises(DatasetError, match="test_name.txt is empty"):
        read_mars(root)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([[0, 3]], "query index 0 is outside the 7 test tracklets"),
        ([[3, 8]], "query index 8 is outside the 7 test tracklets"),
        ([[3, 3]], "more than once"),
        (np.zeros((1, 0)), r"shape \(1, 0\)"),
        ([[3, 6], [4, 7]], r"shape \(2, 2\)"),
    ],
)
def test_bad_query_indices_are_rejected(tmp_path, query, message):
    root = write_mars(tmp_path / "MARS", TRAIN, TEST, query)
    with pytest.raises(DatasetError, match=f"query_IDX.mat: .*{message}"):
        read_mars(root)


def test_a_column_vector_of_queries_is_accepted(tmp_path):
    root = write_mars(tmp_path / "MARS", TRAIN, TEST, [[3], [6]])
    assert len(read_mars(root).query) == 2


def test_name_list_that_is_not_text_is_rejected(small):
    (small / "info" / "train_name.txt").write_bytes(b"0001C1T0001F001.jpg\n\xff\xfe\x00\n")
    with pytest.raises(DatasetError, match="train_name.txt is unreadable"):
        read_mars(small)


def test_nan_in_track_info_is_rejected(small):
    rows = np.asarray(TRAIN, dtype=float)
    rows[0, 1] = np.nan
    scipy.io.savemat(small / "info" / "tracks_train_info.mat", {"track_train_info": rows})
    with pytest.raises(DatasetError, match="tracks_train_info.mat: track_train_info holds non-integer"):
        read_mars(small)
