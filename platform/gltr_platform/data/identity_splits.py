"""Repeated identity splits: the protocol of two-camera datasets tested on random halves of their people.

iLIDS-VID and PRID-2011 hold one tracklet per person and camera. Each split divides the persons in two:
the train half is trained on (both cameras' tracklets); of the test half, camera 0's tracklets are the
queries and camera 1's the gallery. Published results are the CMC averaged over the splits. An index
carries all its splits in `meta["identity_splits"]` (JSON lists of pids, so they survive packing), and
any split of it, read from disk or from a packed manifest, is `select_split(index, k)`: a split number
is all a run needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gltr_platform.data.index import DatasetError, DatasetIndex, Tracklet

NUM_SPLITS = 10
SPLITS_KEY = "identity_splits"
QUERY_CAMID, GALLERY_CAMID = 0, 1


@dataclass(frozen=True)
class IdentitySplit:
    """One trial of the protocol: the pids trained on and the pids tested on."""

    train: tuple[int, ...]
    test: tuple[int, ...]


def seeded_splits(pids: Iterable[int], seed: int, num_splits: int = NUM_SPLITS) -> list[IdentitySplit]:
    """`num_splits` random halves of `pids` (test: the first floor(n/2) drawn), the same on every machine."""
    # A hash orders the persons rather than a seeded shuffle: neither `random` nor numpy promises the same
    # shuffle across versions, and a split must name the same people wherever and whenever it is made.
    people = sorted(set(pids))
    splits = []
    for k in range(num_splits):
        drawn = sorted(people, key=lambda pid: hashlib.sha256(f"{seed}/{k}/{pid}".encode()).digest())
        half = len(drawn) // 2
        splits.append(IdentitySplit(train=tuple(sorted(drawn[half:])), test=tuple(sorted(drawn[:half]))))
    return splits


def split_index(
    name: str, tracklets: Sequence[Tracklet], splits: Sequence[IdentitySplit], split: int, meta: dict[str, Any]
) -> DatasetIndex:
    """Split `split` of a two-camera dataset's `tracklets`, with every split kept in the index's meta."""
    encoded = [{"train": list(s.train), "test": list(s.test)} for s in splits]
    pool = DatasetIndex(name, list(tracklets), [], [], meta={**meta, SPLITS_KEY: encoded})
    return select_split(pool, split)


def select_split(index: DatasetIndex, split: int) -> DatasetIndex:
    """`index` divided by its identity split `split`; an index without identity splits has only split 0."""
    splits = index.meta.get(SPLITS_KEY)
    if splits is None:
        if split != 0:
            raise DatasetError(
                f"dataset {index.name!r} has one fixed train/test split, so split {split} does not exist: "
                "split numbers apply to iLIDS-VID and PRID-2011 only; use split 0"
            )
        return index
    if not 0 <= split < len(splits):
        raise DatasetError(
            f"dataset {index.name!r} has {len(splits)} identity splits (0..{len(splits) - 1}); "
            f"split {split} does not exist"
        )
    train_pids, test_pids = set(splits[split]["train"]), set(splits[split]["test"])
    # Every tracklet is in some list whichever split the index was divided by; a canonical order makes
    # a split read from disk and the same split from a packed manifest list their tracklets alike.
    pool = sorted({(t.pid, t.camid, t.frames) for s in (index.train, index.query, index.gallery) for t in s})
    lists: dict[str, list[Tracklet]] = {"train": [], "query": [], "gallery": []}
    for pid, camid, frames in pool:
        if pid in train_pids:
            lists["train"].append(Tracklet(frames, pid, camid, "train"))
        elif pid in test_pids and camid in (QUERY_CAMID, GALLERY_CAMID):
            role = "query" if camid == QUERY_CAMID else "gallery"
            lists[role].append(Tracklet(frames, pid, camid, role))
    return replace(index, **lists, meta={**index.meta, "split": split})
