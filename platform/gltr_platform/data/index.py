"""The common dataset index every reader produces and every loader consumes.

A dataset is three lists of tracklets (train, query, gallery). A tracklet is an ordered tuple of frame
references plus its identity (pid, exactly as in the dataset's files) and camera (0-based). For raw
datasets on disk a frame reference is a file path; for packed datasets it is the frame's name inside the
manifest, and the bytes come from a `FrameSource`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class DatasetError(ValueError):
    """A dataset on disk or in S3 is malformed. The message names the file or object at fault."""


@dataclass(frozen=True)
class Tracklet:
    frames: tuple[str, ...]
    pid: int
    camid: int
    split: str  # "train", "query" or "gallery"

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class DatasetIndex:
    name: str
    train: list[Tracklet]
    query: list[Tracklet]
    gallery: list[Tracklet]
    protocol: str = "torchreid"
    meta: dict = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({t.pid for t in self.train})

    def summary(self) -> str:
        def line(name: str, ts: list[Tracklet]) -> str:
            pids = len({t.pid for t in ts})
            frames = sum(len(t) for t in ts)
            return f"  {name:<8} {pids:>6} ids {len(ts):>7} tracklets {frames:>9} frames"

        head = f"{self.name} ({self.protocol} protocol)"
        if "split" in self.meta:  # one of several identity splits (iLIDS-VID, PRID-2011)
            head += f", identity split {self.meta['split']} ({self.meta.get('split_source', 'source unknown')})"
        return "\n".join([head] + [line(n, getattr(self, n)) for n in ("train", "query", "gallery")])


def check_query_gallery(index: DatasetIndex) -> None:
    """DatasetError when no query identity appears in the gallery: the test split could rank nothing."""
    gallery = {t.pid for t in index.gallery}
    if index.query and index.gallery and not any(t.pid in gallery for t in index.query):
        raise DatasetError(
            f"dataset {index.name!r}: none of its {len({t.pid for t in index.query})} query identities appears "
            f"in the gallery ({index.protocol} protocol), so no query can be matched: the query/gallery split "
            "is broken; re-pack the dataset from its raw directory"
        )


class FrameSource(Protocol):
    """Returns the encoded (JPEG or PNG) bytes of one frame of a tracklet."""

    def read_frame(self, frame: str) -> bytes: ...


class DirectoryFrameSource:
    """Frames are files; a frame reference is a path (absolute, or relative to `root`)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else None

    def read_frame(self, frame: str) -> bytes:
        path = Path(frame) if self.root is None else self.root / frame
        return path.read_bytes()


def relabel(tracklets: list[Tracklet]) -> dict[int, int]:
    """Map the pids of `tracklets` to 0..N-1 (sorted by pid) for the classifier."""
    return {pid: label for label, pid in enumerate(sorted({t.pid for t in tracklets}))}


@dataclass
class ValidationSplit:
    train: list[Tracklet]
    query: list[Tracklet]
    gallery: list[Tracklet]


def carve_validation(train: list[Tracklet], num_ids: int, seed: int = 0) -> ValidationSplit:
    """Hold out `num_ids` *training* identities as a query/gallery split for tuning.

    The test split is never touched. For each held-out identity its first tracklet becomes the query and
    the rest go to the gallery. Only identities seen by two or more cameras are held out, so every query
    has a cross-camera match.
    """
    by_pid: dict[int, list[Tracklet]] = defaultdict(list)
    for t in train:
        by_pid[t.pid].append(t)
    eligible = sorted(pid for pid, ts in by_pid.items() if len({t.camid for t in ts}) >= 2)
    if num_ids < 1:
        raise DatasetError(f"validation needs at least 1 identity, got num_ids={num_ids}")
    if num_ids >= len(by_pid):
        raise DatasetError(
            f"cannot hold out {num_ids} of {len(by_pid)} training identities for validation: "
            "leave some to train on (lower the number of validation identities)"
        )
    if len(eligible) < num_ids:
        raise DatasetError(
            f"only {len(eligible)} training identities appear in two or more cameras, "
            f"{num_ids} requested for validation"
        )
    held = set(random.Random(seed).sample(eligible, num_ids))
    keep = [t for t in train if t.pid not in held]
    query: list[Tracklet] = []
    gallery: list[Tracklet] = []
    for pid in sorted(held):
        first, *rest = by_pid[pid]
        query.append(Tracklet(first.frames, pid, first.camid, "query"))
        gallery.extend(Tracklet(t.frames, pid, t.camid, "gallery") for t in rest)
    return ValidationSplit(train=keep, query=query, gallery=gallery)
