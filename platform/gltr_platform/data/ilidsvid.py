"""Reader for iLIDS-VID (Wang et al., ECCV 2014) as distributed, modelled on torchreid's ilidsvid.py.

On disk (`root` is the folder the iLIDS-VID tarball was extracted into)::

    root/i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png ...
    root/i-LIDS-VID/sequences/cam2/person001/...
    root/train-test people splits/train_test_splits_ilidsvid.mat      ls_set: 10 x 300

Where each fact comes from:

* The folder layout, the split file's path and its variable `ls_set` (one row per split, one column per
  person, 1-based positions in the name-sorted list of person folders; the first half of a row is the
  test half, the rest the train half, "following Wang et al. ECCV'14"): torchreid's ilidsvid.py.
* Both cameras hold the same persons (torchreid asserts it); 300 identities, 600 tracklets, 2 cameras:
  torchreid's docstring. Neither count is enforced here: ls_set must cover the person folders present.
* Query = the test persons' cam1 tracklets, gallery = their cam2 tracklets, train = both cameras of the
  train persons: torchreid (process_data with cam1/cam2 flags).
* Frame names like `cam1_person001_00317.png`: a third-party listing of the tarball, not verified
  against the data; they are not parsed (person and camera come from the folders), only ordered.
* pid = the number in the person folder name. The numbers are not contiguous (from memory of the
  dataset, not verified), which is why ls_set is mapped through the sorted folder list, as torchreid does.

The split file ships in the tarball, so a missing one is an error rather than a reason to draw new
splits: results on other splits would not compare with published ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from gltr_platform.data.identity_splits import IdentitySplit, split_index
from gltr_platform.data.index import DatasetError, DatasetIndex, Tracklet
from gltr_platform.data.matfile import load_int_matrix
from gltr_platform.data.person_folders import person_folders, png_frames

CAMERAS = ("cam1", "cam2")  # camid 0 (query), camid 1 (gallery)
SEQUENCES = Path("i-LIDS-VID", "sequences")
SPLIT_FILE = Path("train-test people splits", "train_test_splits_ilidsvid.mat")
_PERSON = re.compile(r"person(\d+)", re.ASCII)


def read_ilidsvid(root: str | Path, split: int = 0) -> DatasetIndex:
    """Index iLIDS-VID at `root` under identity split `split` (0-9): absolute frame paths, camids 0-based."""
    root = Path(os.path.abspath(root))
    by_camera = []
    for camera in CAMERAS:
        camera_dir = root / SEQUENCES / camera
        if not camera_dir.is_dir():
            raise DatasetError(
                f"{camera_dir} is missing: iLIDS-VID needs {SEQUENCES / 'cam1'} and {SEQUENCES / 'cam2'} under {root}"
            )
        by_camera.append(person_folders(camera_dir, _PERSON, "person001"))
    cam1, cam2 = by_camera
    for here, there, other in ((cam1, cam2, "cam2"), (cam2, cam1, "cam1")):
        missing = sorted(set(here) - set(there))
        if missing:
            raise DatasetError(f"{here[missing[0]]} has no counterpart in {other}: every person has both cameras")
    if not cam1:
        raise DatasetError(f"{root / SEQUENCES / 'cam1'} holds no person folders (expected person001/ ...)")
    persons = sorted(cam1, key=lambda pid: cam1[pid].name)  # ls_set counts folders in name order
    splits = _read_splits(root / SPLIT_FILE, persons)
    tracklets = [
        Tracklet(png_frames(folders[pid]), pid, camid, "train")
        for pid in persons
        for camid, folders in enumerate(by_camera)
    ]
    meta = {"root": str(root), "split_source": SPLIT_FILE.as_posix()}
    return split_index("ilidsvid", tracklets, splits, split, meta)


def _read_splits(mat_file: Path, persons: list[int]) -> list[IdentitySplit]:
    """The splits of `ls_set`, each row's positions turned into the pids of the name-sorted persons."""
    ls_set = load_int_matrix(mat_file, "ls_set", "the iLIDS-VID tarball ships it; restore it from there")
    if ls_set.ndim != 2 or ls_set.size == 0:
        raise DatasetError(f"{mat_file}: ls_set has shape {ls_set.shape}, expected splits x persons (10 x 300)")
    if ls_set.shape[1] != len(persons):
        raise DatasetError(
            f"{mat_file}: ls_set has {ls_set.shape[1]} columns (persons) but there are {len(persons)} person "
            "folders per camera: the split file and the sequences do not belong together"
        )
    expected = np.arange(1, len(persons) + 1)
    half = len(persons) // 2
    splits = []
    for row, positions in enumerate(ls_set):
        if not np.array_equal(np.sort(positions), expected):
            raise DatasetError(f"{mat_file}: row {row + 1} of ls_set is not an ordering of persons 1..{len(persons)}")
        pids = [persons[p - 1] for p in positions.tolist()]
        splits.append(IdentitySplit(train=tuple(sorted(pids[half:])), test=tuple(sorted(pids[:half]))))
    return splits
