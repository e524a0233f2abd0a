"""Reader for PRID-2011 (Hirzer et al., SCIA 2011), multi-shot, modelled on torchreid's prid2011.py.

On disk (`root` is torchreid's `prid2011/` folder: the zip extracted into it, plus its split file)::

    root/prid_2011/multi_shot/cam_a/person_0001/0001.png ...     385 persons
    root/prid_2011/multi_shot/cam_b/person_0001/...              749 persons
    root/splits_prid2011.json      optional: [{"train": ["person_0001", ...], "test": [...]}, ...]

Where each fact comes from:

* The folder layout, `splits_prid2011.json` beside `prid_2011/` and its form (a list of splits, each
  train and test lists of person folder names); query = the test persons' cam_a tracklets, gallery =
  their cam_b tracklets, train = both cameras of the train persons: torchreid's prid2011.py.
* cam_a sees 385 persons, cam_b 749, and only the first 200 (person_0001..person_0200) appear in both
  views, under the same folder name: torchreid's single-shot prid.py docstring and code. A folder
  name above 200 is a different person in each camera, so only pids 1..200 are ever used.
* The standard protocol uses the 178 persons whose sequences are longer than a threshold (torchreid's
  dataset docs: "only 178 persons whose sequences are more than a threshold are used"). The threshold
  is not stated there. Papers cite "more than 21 frames" (Wang et al., ECCV 2014; not verified here).
  A third-party reader of the iLIDS-VID authors' `train_test_splits_prid.mat` asserts that 178 persons
  have >= 27 frames in both cameras and 183 have >= 21, so MIN_FRAMES is 27: the count the published
  178 needs. Not verified against the data.
* Frame names `0001.png`: inferred from that third-party reader's sort key (4 digits before `.png`),
  not verified; they are only ordered, never parsed.

Without `splits_prid2011.json` (it is not in the PRID-2011 zip) the reader draws 10 splits itself,
deterministically (`seeded_splits`, seed SPLIT_SEED), says so in a warning and in `meta["split_source"]`:
numbers on them compare with each other, not with published ones. The iLIDS-VID authors' .mat is not
read: which person each of its columns means is documented nowhere we could check.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from gltr_platform.data.identity_splits import NUM_SPLITS, IdentitySplit, seeded_splits, split_index
from gltr_platform.data.index import DatasetError, DatasetIndex, Tracklet
from gltr_platform.data.person_folders import person_folders, png_frames

log = logging.getLogger(__name__)

CAMERAS = ("cam_a", "cam_b")  # camid 0 (query), camid 1 (gallery)
MULTI_SHOT = Path("prid_2011", "multi_shot")
SPLIT_FILE = "splits_prid2011.json"
SHARED_PERSONS = 200  # person_0001..person_0200 are the persons both cameras saw
MIN_FRAMES = 27  # per camera, for a person to enter generated splits (see the module docstring)
SPLIT_SEED = 0
_PERSON = re.compile(r"person_(\d+)", re.ASCII)


def read_prid2011(root: str | Path, split: int = 0) -> DatasetIndex:
    """Index PRID-2011 at `root` under identity split `split` (0-9): absolute frame paths, camids 0-based."""
    root = Path(os.path.abspath(root))
    by_camera = []
    for camera in CAMERAS:
        camera_dir = root / MULTI_SHOT / camera
        if not camera_dir.is_dir():
            raise DatasetError(
                f"{camera_dir} is missing: PRID-2011 needs {MULTI_SHOT / 'cam_a'} and {MULTI_SHOT / 'cam_b'} "
                f"under {root}"
            )
        folders = person_folders(camera_dir, _PERSON, "person_0001")
        by_camera.append({pid: folder for pid, folder in folders.items() if pid <= SHARED_PERSONS})
    in_a, in_b = by_camera
    for here, there, other in ((in_a, in_b, "cam_b"), (in_b, in_a, "cam_a")):
        missing = sorted(set(here) - set(there))
        if missing:
            raise DatasetError(
                f"{here[missing[0]]} has no counterpart in {other}: the first {SHARED_PERSONS} persons are in both"
            )
    if not in_a:
        raise DatasetError(
            f"no person folder person_0001..person_{SHARED_PERSONS:04d} under {root / MULTI_SHOT}: "
            "these are the persons both cameras saw"
        )
    frames = [{pid: png_frames(folder) for pid, folder in folders.items()} for folders in by_camera]
    cam_a, cam_b = frames
    split_file = root / SPLIT_FILE
    if split_file.exists():
        splits = _read_json_splits(split_file, set(cam_a))
        source = SPLIT_FILE
    else:
        eligible = [pid for pid in sorted(cam_a) if min(len(cam_a[pid]), len(cam_b[pid])) >= MIN_FRAMES]
        if len(eligible) < 2:
            raise DatasetError(
                f"only {len(eligible)} persons under {root / MULTI_SHOT} have >= {MIN_FRAMES} frames in both "
                "cameras: too few to split into train and test"
            )
        splits = seeded_splits(eligible, SPLIT_SEED)
        source = (
            f"generated: {NUM_SPLITS} seeded halves (seed {SPLIT_SEED}) of the {len(eligible)} persons with "
            f">= {MIN_FRAMES} frames in both cameras, not the published splits"
        )
        log.warning("PRID-2011: no %s in %s; using %s", SPLIT_FILE, root, source)
    used = sorted({pid for s in splits for pid in s.train + s.test})
    tracklets = [Tracklet(cam[pid], pid, camid, "train") for pid in used for camid, cam in enumerate(frames)]
    return split_index("prid2011", tracklets, splits, split, {"root": str(root), "split_source": source})


def _read_json_splits(path: Path, persons: set[int]) -> list[IdentitySplit]:
    """The splits of torchreid's splits_prid2011.json, as pids of persons seen by both cameras."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not readable JSON ({e}); re-download it") from e
    if not isinstance(data, list) or not data:
        raise DatasetError(f'{path}: expected a non-empty list of {{"train": [...], "test": [...]}} splits')
    splits = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("train", "test")):
            raise DatasetError(f'{path}: split {i} is not {{"train": [person folders], "test": [person folders]}}')
        halves = []
        for role in ("train", "test"):
            pids = []
            for name in entry[role]:
                m = _PERSON.fullmatch(name) if isinstance(name, str) else None
                if m is None:
                    raise DatasetError(f"{path}: split {i} {role} lists {name!r}, not a person folder like person_0001")
                if int(m[1]) not in persons:
                    raise DatasetError(
                        f"{path}: split {i} {role} lists {name}, which is not one of the persons both cameras "
                        f"saw (person_0001..person_{SHARED_PERSONS:04d}, present in cam_a and cam_b)"
                    )
                pids.append(int(m[1]))
            halves.append(tuple(sorted(set(pids))))
        train, test = halves
        if set(train) & set(test):
            both = min(set(train) & set(test))
            raise DatasetError(f"{path}: split {i} lists person_{both:04d} in both train and test")
        splits.append(IdentitySplit(train=train, test=test))
    return splits
