"""Camera folders of person folders of PNG frames: the on-disk form iLIDS-VID and PRID-2011 share."""

from __future__ import annotations

import os
import re
from pathlib import Path

from gltr_platform.data.index import DatasetError

FRAME_SUFFIX = ".png"


def person_folders(camera_dir: Path, name: re.Pattern[str], example: str) -> dict[int, Path]:
    """The person folders of one camera by pid, the number `name` captures; stray files are skipped."""
    with os.scandir(camera_dir) as entries:
        folders = sorted(Path(e.path) for e in entries if e.is_dir())
    by_pid: dict[int, Path] = {}
    for folder in folders:
        m = name.fullmatch(folder.name)
        if m is None:
            raise DatasetError(f"{folder} is not a person folder (expected names like {example})")
        pid = int(m[1])
        if pid in by_pid:
            raise DatasetError(f"{folder} and {by_pid[pid]} are the same person number {pid}")
        by_pid[pid] = folder
    return by_pid


def png_frames(person_dir: Path) -> tuple[str, ...]:
    """The frames of one person folder as absolute paths in frame order; DatasetError when it has none."""
    with os.scandir(person_dir) as entries:
        names = [e.name for e in entries if e.name.endswith(FRAME_SUFFIX) and e.is_file()]
    if not names:
        raise DatasetError(f"{person_dir} holds no {FRAME_SUFFIX} frames: the copy is incomplete, restore them")
    # Shorter names first, then by name: the frame order whether or not frame numbers are zero-padded.
    names.sort(key=lambda n: (len(n), n))
    return tuple(str(person_dir / n) for n in names)
