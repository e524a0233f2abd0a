"""Reader for DukeMTMC-VideoReID (Wu et al., CVPR 2018), modelled on torchreid's dukemtmcvidreid.py.

On disk::

    root/{train,query,gallery}/<pid4>/<tracklet4>/<pid4>_C<camera>_F<frame>_X<n>.jpg

e.g. `0001_C6_F0099_X30823.jpg`. The camera (1-based in the name) is read from the frame names,
which must agree within a tracklet and name the identity of the folder they sit in. Frames are
ordered by name, which orders them by frame number. The split folders already follow the torchreid
protocol; same-identity same-camera gallery entries are junk, which the evaluation handles.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gltr_platform.data.index import DatasetError, DatasetIndex, Tracklet

DUKEV_SPLITS = ("train", "query", "gallery")
_FRAME = re.compile(r"(\d{4})_C(\d)_F(\d+)_X(\d+)\.jpg", re.ASCII)
_PID_DIR = re.compile(r"\d{4}", re.ASCII)


def read_dukev(root: str | Path) -> DatasetIndex:
    """Index DukeMTMC-VideoReID at `root`: train/query/gallery tracklets, camids 0-based."""
    root = Path(os.path.abspath(root))
    splits = {split: _read_split(root / split, split) for split in DUKEV_SPLITS}
    return DatasetIndex("dukev", **splits, protocol="torchreid", meta={"root": str(root)})


def _read_split(split_dir: Path, split: str) -> list[Tracklet]:
    """All tracklets under one split folder, by pid then tracklet folder name."""
    if not split_dir.is_dir():
        raise DatasetError(
            f"{split_dir} is missing: DukeMTMC-VideoReID needs train/, query/ and gallery/ under {split_dir.parent}"
        )
    tracklets = []
    for pid_dir in _subdirs(split_dir):
        if not _PID_DIR.fullmatch(pid_dir.name):
            raise DatasetError(f"{pid_dir} is not an identity folder (expected 4 digits, e.g. 0001)")
        pid = int(pid_dir.name)
        for tracklet_dir in _subdirs(pid_dir):
            tracklets.append(_read_tracklet(tracklet_dir, pid, split))
    if not tracklets:
        raise DatasetError(f"{split_dir} holds no tracklets (expected <pid>/<tracklet>/*.jpg)")
    return tracklets


def _read_tracklet(tracklet_dir: Path, pid: int, split: str) -> Tracklet:
    """One tracklet folder: its .jpg frames sorted by name, camera taken from the names."""
    with os.scandir(tracklet_dir) as entries:
        names = sorted(e.name for e in entries if e.name.endswith(".jpg") and e.is_file())
    if not names:
        raise DatasetError(f"{tracklet_dir} holds no .jpg frames: remove the folder or restore them")
    cameras = set()
    for name in names:
        m = _FRAME.fullmatch(name)
        if m is None:
            raise DatasetError(
                f"{tracklet_dir / name} is not a DukeMTMC-VideoReID frame name (expected e.g. 0001_C6_F0099_X30823.jpg)"
            )
        if int(m[1]) != pid:
            raise DatasetError(f"{tracklet_dir / name} names pid {m[1]} but sits in {pid:04d}/")
        cameras.add(int(m[2]))
    if len(cameras) != 1:
        raise DatasetError(f"{tracklet_dir} mixes frames from cameras {sorted(cameras)}")
    camera = cameras.pop()
    if camera < 1:
        raise DatasetError(f"{tracklet_dir}: camera C0 in frame names (cameras are 1-based)")
    frames = tuple(str(tracklet_dir / name) for name in names)
    return Tracklet(frames, pid, camera - 1, split)


def _subdirs(folder: Path) -> list[Path]:
    """Sub-folders of `folder` by name; stray files (.DS_Store, Thumbs.db) are not data."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir())
