"""Reader for MARS (Zheng et al., ECCV 2016) as distributed, modelled on torchreid's mars.py.

On disk::

    root/bbox_train/<pid4>/<name>     root/bbox_test/<pid4>/<name>     (pid4: 0001.., 0000, 00-1)
    root/info/train_name.txt          one frame name per line, e.g. 0001C1T0001F001.jpg
    root/info/test_name.txt
    root/info/tracks_train_info.mat   track_train_info: rows [start, end, pid, camid]; start and end
                                      are 1-based inclusive lines of train_name.txt
    root/info/tracks_test_info.mat    track_test_info: the same for test_name.txt
    root/info/query_IDX.mat           query_IDX: 1-based rows of track_test_info

A frame name is pid (4 chars, `00-1` for junk), `C` + camera digit, `T` + 4-digit tracklet, `F` +
3-digit frame. The .mat rows are the index; the name lists are checked against them (same pid and
camera for every frame of a tracklet). Frame files are never opened or stat'ed: there are 1.2M.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gltr_platform.data.index import DatasetError, DatasetIndex, Tracklet
from gltr_platform.data.matfile import load_int_matrix

MARS_PROTOCOLS = ("torchreid", "official")
JUNK_PID = -1
DISTRACTOR_PID = 0

_NAME_LEN = len("0001C1T0001F001.jpg")
# Fixed characters of a frame name; everything else (pid, camera, tracklet, frame) is a digit.
_LITERALS = {4: "C", 6: "T", 11: "F", 15: ".", 16: "j", 17: "p", 18: "g"}
_DIGITS = [5, 7, 8, 9, 10, 12, 13, 14]
_SHIPPED = "MARS ships it in info/"


def mars_frame_name(pid: int, camera: int, tracklet: int, frame: int) -> str:
    """The MARS file name of a frame; `camera`, `tracklet` and `frame` are 1-based as in names."""
    if not (-1 <= pid <= 9999 and 1 <= camera <= 9 and 1 <= tracklet <= 9999 and 1 <= frame <= 999):
        raise ValueError(f"no MARS frame name for pid={pid} camera={camera} T={tracklet} F={frame}")
    prefix = "00-1" if pid == JUNK_PID else f"{pid:04d}"
    return f"{prefix}C{camera}T{tracklet:04d}F{frame:03d}.jpg"


def read_mars(root: str | Path, protocol: str = "torchreid") -> DatasetIndex:
    """Index MARS at `root`: train/query/gallery tracklets of absolute frame paths, camids 0-based.

    "torchreid": junk (pid -1) is dropped everywhere and the gallery is the test tracklets that are
    not queries (9,330 on MARS). "official" (the MATLAB evaluation): the gallery is every test
    tracklet, queries and junk included (12,180). The query set (1,980) is the same in both.
    """
    if protocol not in MARS_PROTOCOLS:
        raise DatasetError(f"unknown MARS protocol {protocol!r}: choose one of {MARS_PROTOCOLS}")
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DatasetError(f"MARS root {root} does not exist (expected bbox_train/, bbox_test/, info/)")
    for folder in ("bbox_train", "bbox_test"):
        if not (root / folder).is_dir():
            raise DatasetError(f"{root / folder} is missing: is {root} the MARS folder?")
    info = root / "info"
    train_rows, train_paths = _read_tracks(
        info / "train_name.txt",
        info / "tracks_train_info.mat",
        "track_train_info",
        root / "bbox_train",
    )
    test_rows, test_paths = _read_tracks(
        info / "test_name.txt", info / "tracks_test_info.mat", "track_test_info", root / "bbox_test"
    )
    query_rows = _read_query_rows(info / "query_IDX.mat", len(test_rows))

    def tracklets(rows: np.ndarray, paths: list[str], which: np.ndarray, split: str) -> list[Tracklet]:
        return [
            Tracklet(tuple(paths[start - 1 : end]), int(pid), int(camid) - 1, split)
            for start, end, pid, camid in rows[which].tolist()
        ]

    real = train_rows[:, 2] != JUNK_PID
    train = tracklets(train_rows, train_paths, np.flatnonzero(real), "train")
    real = test_rows[:, 2] != JUNK_PID
    query = tracklets(test_rows, test_paths, query_rows[real[query_rows]], "query")
    if protocol == "torchreid":
        in_gallery = real.copy()
        in_gallery[query_rows] = False
    else:
        in_gallery = np.ones(len(test_rows), dtype=bool)
    gallery = tracklets(test_rows, test_paths, np.flatnonzero(in_gallery), "gallery")
    return DatasetIndex("mars", train, query, gallery, protocol=protocol, meta={"root": str(root)})


def _read_tracks(names_file: Path, mat_file: Path, key: str, frames_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The checked [start, end, pid, camid] rows of `mat_file`; the frame paths of `names_file`."""
    rows = load_int_matrix(mat_file, key, _SHIPPED)
    if rows.ndim != 2 or rows.shape[1] != 4 or rows.shape[0] == 0:
        raise DatasetError(f"{mat_file}: {key} has shape {rows.shape}, expected N x 4 rows [start, end, pid, camid]")
    names = _read_names(names_file)
    pids, cams = _parse_names(names, names_file)
    start, end, pid, camid = rows.T

    def fail(bad: np.ndarray, what: str) -> None:
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{mat_file}: row {r + 1} {rows[r].tolist()} {what}")

    fail(start < 1, "has start < 1 (indices are 1-based)")
    fail(start > end, "has start > end")
    fail(end > len(names), f"ends past the {len(names)} names in {names_file}")
    fail(camid < 1, "has camid < 1 (cameras are 1-based in the file)")
    fail(pid < JUNK_PID, "has a pid below -1")

    # Every frame of every tracklet, as (row, line) pairs, to compare names with rows in one pass.
    lengths = end - start + 1
    row_of = np.repeat(np.arange(len(rows)), lengths)
    line = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    line += np.repeat(start - 1, lengths)
    wrong = (pids[line] != pid[row_of]) | (cams[line] != camid[row_of])
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        r, n = int(row_of[i]), int(line[i])
        raise DatasetError(
            f"{mat_file}: row {r + 1} {rows[r].tolist()} claims pid {pid[r]} camera {camid[r]}, "
            f"but line {n + 1} of {names_file} is {names[n]!r}; the name list and the track info "
            "do not belong together"
        )
    prefix = f"{frames_dir}{os.sep}"
    return rows, [f"{prefix}{name[:4]}{os.sep}{name}" for name in names]


def _read_names(names_file: Path) -> list[str]:
    """The frame names of a MARS name list, one per line."""
    try:
        names = names_file.read_text(encoding="ascii").split()
    except FileNotFoundError:
        raise DatasetError(f"{names_file} is missing (MARS lists its frame names there)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{names_file} is unreadable ({e}); re-download it") from e
    if not names:
        raise DatasetError(f"{names_file} is empty: expected one frame name per line")
    return names


def _parse_names(names: list[str], names_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-name pid (-1 for junk) and camera digit; DatasetError on the first malformed name."""

    def malformed(good: np.ndarray) -> DatasetError:
        n = int(np.flatnonzero(~good)[0])
        return DatasetError(
            f"line {n + 1} of {names_file} is {names[n]!r}, not a MARS frame name "
            "(expected pid, camera, tracklet, frame as in 0001C1T0001F001.jpg; junk: 00-1C1...)"
        )

    good = np.fromiter(map(len, names), dtype=np.int64, count=len(names)) == _NAME_LEN
    if not good.all():
        raise malformed(good)
    # One row of character codes per name (the names are ASCII: the file was decoded as such).
    codes = np.array(names, dtype=f"S{_NAME_LEN}").view(np.uint8).reshape(len(names), _NAME_LEN)
    digit = (codes >= ord("0")) & (codes <= ord("9"))
    good &= digit[:, _DIGITS].all(axis=1)
    for i, c in _LITERALS.items():
        good &= codes[:, i] == ord(c)
    junk = (codes[:, :4] == np.frombuffer(b"00-1", dtype=np.uint8)).all(axis=1)
    good &= digit[:, :4].all(axis=1) | junk
    if not good.all():
        raise malformed(good)
    pids = (codes[:, :4].astype(np.int64) - ord("0")) @ np.array([1000, 100, 10, 1])
    pids[junk] = JUNK_PID
    return pids, codes[:, 5].astype(np.int64) - ord("0")


def _read_query_rows(mat_file: Path, num_test: int) -> np.ndarray:
    """0-based rows of the test track info that are queries."""
    idx = load_int_matrix(mat_file, "query_IDX", _SHIPPED)
    if idx.ndim > 2 or (idx.ndim == 2 and min(idx.shape) != 1) or idx.size == 0:
        raise DatasetError(f"{mat_file}: query_IDX has shape {idx.shape}, expected a 1 x N vector")
    idx = idx.ravel()
    bad = (idx < 1) | (idx > num_test)
    if bad.any():
        raise DatasetError(
            f"{mat_file}: query index {idx[bad][0]} is outside the {num_test} test tracklets "
            "(indices are 1-based rows of tracks_test_info.mat)"
        )
    if len(np.unique(idx)) != len(idx):
        raise DatasetError(f"{mat_file}: query_IDX lists a test tracklet more than once")
    return idx - 1
