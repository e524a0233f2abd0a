"""Turn a dataset spec (an S3 URI or a local directory) into an index and a frame source.

Accepted specs:

* `s3://bucket/prefix` of a packed dataset: synced into the node-local cache (see shard_cache);
* a local packed directory (holds manifest.json): read in place;
* a raw MARS directory (info/, bbox_train/, bbox_test/), raw DukeMTMC-VideoReID directory
  (train/, query/, gallery/), raw iLIDS-VID directory (i-LIDS-VID/sequences/, train-test people
  splits/) or raw PRID-2011 directory (prid_2011/multi_shot/): indexed and packed into the cache on
  first use, under a key hashed from the directory's path and file listing, so later calls (and other
  processes) reuse it. One pack serves every identity split of iLIDS-VID and PRID-2011.

Training always reads a packed dataset, so local and S3 runs take the same path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from gltr_platform.data import s3
from gltr_platform.data.index import DatasetError, DatasetIndex, FrameSource
from gltr_platform.data.manifest import MANIFEST_NAME
from gltr_platform.data.pack import pack, raw_kind, read_raw
from gltr_platform.data.shard_cache import PackedDataset, sync

ACCEPTED = (
    "an s3://bucket/prefix URI of a packed dataset, a local packed directory (with manifest.json), "
    "a raw MARS directory (info/, bbox_train/), a raw DukeMTMC-VideoReID directory "
    "(train/, query/, gallery/), a raw iLIDS-VID directory (i-LIDS-VID/) or a raw PRID-2011 directory "
    "(prid_2011/)"
)


def open_dataset(
    spec: str | Path,
    cache_dir: str | Path,
    protocol: str = "torchreid",
    *,
    split: int = 0,
    verify: bool = False,
    progress: bool = True,
) -> tuple[DatasetIndex, FrameSource, dict[str, Any]]:
    """The index, frame source and info (`uri`, `version`, `kind`, `path`) of dataset `spec`.

    `split` picks one of the identity splits of iLIDS-VID or PRID-2011 (0-9); other datasets have split 0 only.
    """
    dataset = _open_packed(spec, Path(cache_dir), protocol, split, verify, progress)
    info = {
        "uri": str(spec) if s3.is_s3_uri(str(spec)) else str(Path(spec).absolute()),
        "version": dataset.version,
        "kind": _kind(spec),
        "path": str(dataset.root),
    }
    return dataset.index, dataset, info


def check_spec(spec: str | Path) -> None:
    """DatasetError unless `spec` could name a dataset: a well-formed s3:// URI, or a packed or raw directory.

    Cheap (no network, no torch): entry points call it before they start anything.
    """
    if s3.is_s3_uri(str(spec)):
        s3.parse_s3_uri(str(spec))
        return
    root = Path(spec)
    if not root.is_dir():
        raise DatasetError(f"{spec} is not a directory or an S3 URI: expected {ACCEPTED}")
    if not (root / MANIFEST_NAME).is_file() and raw_kind(root) is None:
        raise DatasetError(f"{spec} is not a dataset directory: expected {ACCEPTED}")


def _kind(spec: str | Path) -> str:
    """ "s3", "packed", or the kind of a raw directory ("mars", "dukev", "ilidsvid", "prid2011")."""
    if s3.is_s3_uri(str(spec)):
        return "s3"
    root = Path(spec)
    return "packed" if (root / MANIFEST_NAME).is_file() else str(raw_kind(root))


def _open_packed(
    spec: str | Path, cache_dir: Path, protocol: str, split: int, verify: bool, progress: bool
) -> PackedDataset:
    """The packed dataset behind `spec`, synced or packed into `cache_dir` when needed."""
    check_spec(spec)
    if s3.is_s3_uri(str(spec)):
        return sync(str(spec), cache_dir, protocol=protocol, split=split, verify=verify, progress=progress)
    root = Path(spec)
    if (root / MANIFEST_NAME).is_file():
        return PackedDataset.open(root, protocol, split=split, verify=verify)
    packed = cache_dir / "raw" / f"{raw_kind(root)}-{listing_key(root)}"
    # Indexed before anything is created in the cache, so a broken raw directory leaves nothing there.
    index = None if (packed / MANIFEST_NAME).is_file() else read_raw(root)
    packed.parent.mkdir(parents=True, exist_ok=True)
    # Per-GPU processes on one node: one packs, the others wait and reuse its result.
    with FileLock(packed.with_name(packed.name + ".lock")):
        if not (packed / MANIFEST_NAME).is_file():  # pack() renames a complete directory into place
            pack(index or read_raw(root), packed, progress=progress)
    return PackedDataset.open(packed, protocol, split=split, verify=verify)


def listing_key(root: Path) -> str:
    """A hash of a directory's absolute path and its files' relative names, sizes and mtimes."""
    digest = hashlib.sha256(str(root.absolute()).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            digest.update(f"{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
