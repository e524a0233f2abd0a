"""Pack a dataset into a few large shards plus a manifest, on S3 or in a local directory.

Millions of small JPEG objects download at a few hundred requests per second; a few 256 MiB shards
download at line rate with multipart ranged GETs. Frames of a tracklet are written contiguously, in
order, into one shard, so a tracklet is one sequential read. Layout below the destination::

    manifest.json                (see gltr_platform.data.manifest; uploaded last)
    shards/shard-00000.bin ...

The manifest is written last (uploaded after every shard is, or renamed into place with the whole
directory), so a reader never sees a manifest whose shards are missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gltr_platform.data import s3
from gltr_platform.data.dukev import read_dukev
from gltr_platform.data.ilidsvid import read_ilidsvid
from gltr_platform.data.index import DatasetError, DatasetIndex, DirectoryFrameSource, FrameSource
from gltr_platform.data.manifest import MANIFEST_NAME, SPLITS, Manifest, build_manifest
from gltr_platform.data.mars import read_mars
from gltr_platform.data.prid2011 import read_prid2011

DEFAULT_SHARD_SIZE = 256 * 1024 * 1024
SHARD_DIR = "shards"
# Frames are read from disk by this many threads: on network file systems each small read waits.
_READERS = 16
# Shards waiting for upload before packing pauses: bounds the local disk a pack to S3 needs.
_UPLOAD_BACKLOG = 4


def raw_kind(root: Path) -> str | None:
    """ "mars", "dukev", "ilidsvid" or "prid2011" when `root` is a raw dataset directory of that kind, else None."""
    if (root / "info").is_dir() and (root / "bbox_train").is_dir():
        return "mars"
    if all((root / d).is_dir() for d in ("train", "query", "gallery")):
        return "dukev"
    # Only the top folder identifies these two, so a copy missing a camera or the split file is read, and
    # the reader names what is missing instead of the directory being refused as no dataset at all.
    if (root / "i-LIDS-VID").is_dir():
        return "ilidsvid"
    if (root / "prid_2011").is_dir():
        return "prid2011"
    return None


def read_raw(root: str | Path) -> DatasetIndex:
    """Index a raw dataset directory completely, so any protocol (and any identity split) can be built."""
    root = Path(root)
    kind = raw_kind(root)
    if kind == "mars":
        return read_mars(root, protocol="official")
    readers = {"dukev": read_dukev, "ilidsvid": read_ilidsvid, "prid2011": read_prid2011}
    if kind in readers:
        index = readers[kind](root)
        # These have one gallery under both protocols and no junk pid, so the index is complete in the
        # "official" sense. iLIDS-VID and PRID-2011: split 0 lists every tracklet, and every split is in
        # the index's meta, so the packed dataset serves all of them.
        index.protocol = "official"
        return index
    raise DatasetError(
        f"{root} is not a raw dataset directory: expected MARS (info/, bbox_train/, bbox_test/), "
        "DukeMTMC-VideoReID (train/, query/, gallery/), iLIDS-VID (i-LIDS-VID/sequences/, "
        "train-test people splits/) or PRID-2011 (prid_2011/multi_shot/)"
    )


def parse_size(text: str) -> int:
    """Bytes in a size such as "256MB", "1GiB", "512k" or "1048576" (K/M/G are powers of 1024)."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (s[:-1], s[-1]) if s and s[-1] in units else (s, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(f"invalid size {text!r}: use e.g. 256MB, 1GB or a number of bytes")
    if value < 1:
        raise DatasetError(f"invalid size {text!r}: must be at least 1 byte")
    return int(value)


def pack(
    src: DatasetIndex | str | Path,
    dest: str | Path,
    *,
    frames: FrameSource | None = None,
    shard_size_bytes: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> Manifest:
    """Pack a raw dataset directory or a DatasetIndex into shards + manifest at `dest` (s3:// or dir).

    For an index, `frames` reads its frame references (default: they are file paths). Frame names in
    the manifest are the references relative to their common directory, with "/" separators.
    """
    if shard_size_bytes < 1:
        raise DatasetError(f"shard size must be positive, got {shard_size_bytes}")
    index = src if isinstance(src, DatasetIndex) else read_raw(src)
    source = frames if frames is not None else DirectoryFrameSource()
    layout = _Layout.of(index)
    if not layout.records:
        raise DatasetError(f"dataset {index.name!r} has no tracklets: nothing to pack")
    if s3.is_s3_uri(str(dest)):
        return _pack_to_s3(layout, source, s3.parse_s3_uri(str(dest)), shard_size_bytes, progress)
    return _pack_to_dir(layout, source, Path(dest), shard_size_bytes, progress)


@dataclass
class _Layout:
    """The distinct tracklets of an index, their names in the manifest, and the split rows."""

    index: DatasetIndex
    records: list[dict[str, Any]] = field(default_factory=list)
    refs: list[tuple[str, ...]] = field(default_factory=list)  # frame references, to read bytes
    splits: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, index: DatasetIndex) -> _Layout:
        layout = cls(index)
        all_refs = [f for s in SPLITS for t in getattr(index, s) for f in t.frames]
        absolute = bool(all_refs) and all(os.path.isabs(f) for f in all_refs)
        base = os.path.commonpath([os.path.dirname(f) for f in all_refs]) if absolute else ""
        row_of: dict[tuple[tuple[str, ...], int, int], int] = {}
        for split in SPLITS:
            rows = layout.splits.setdefault(split, [])
            for t in getattr(index, split):
                key = (t.frames, t.pid, t.camid)
                if key not in row_of:  # a tracklet listed in two splits is stored once
                    row_of[key] = len(layout.records)
                    layout.records.append(_record(t.frames, t.pid, t.camid, base))
                    layout.refs.append(t.frames)
                rows.append(row_of[key])
        return layout

    def content(self, shards: list[dict[str, Any]]) -> dict[str, Any]:
        """Manifest content (without format, version, hash) once the shards are written."""
        # root: a local path; split: the view the index was read as (all splits are in the meta). Not data.
        meta = {k: v for k, v in self.index.meta.items() if k not in ("root", "split")}
        return {
            "dataset": self.index.name,
            "protocol": self.index.protocol,
            "meta": _json_safe(meta),
            "shards": shards,
            "tracklets": self.records,
            "splits": self.splits,
        }


def _record(refs: tuple[str, ...], pid: int, camid: int, base: str) -> dict[str, Any]:
    """A manifest tracklet record (shard, offset, lengths filled in when written)."""
    cut = len(base) + 1 if base and base != os.sep else len(base)
    names = [f[cut:].replace(os.sep, "/") for f in refs]
    dirs = {posixpath.dirname(n) for n in names}
    d = dirs.pop() if len(dirs) == 1 else ""
    frames = [n[len(d) + 1 :] if d else n for n in names]
    return {"pid": int(pid), "camid": int(camid), "dir": d, "frames": frames}


def _json_safe(value: Any) -> Any:
    """`value` with anything JSON cannot hold turned into its string form."""
    return json.loads(json.dumps(value, default=str))


class _ShardWriter:
    """Appends tracklets to shard files in `workdir`, starting a new shard past `shard_size` bytes."""

    def __init__(self, workdir: Path, shard_size: int, on_close: Callable[[Path, dict], None]):
        self.dir = workdir / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.on_close = on_close
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None

    def add(self, record: dict[str, Any], data: list[bytes]) -> None:
        total = sum(map(len, data))
        if self._file is not None and self._size + total > self.shard_size:
            self.close()
        if self._file is None:
            self._name = f"{SHARD_DIR}/shard-{len(self.shards):05d}.bin"
            self._path = self.dir / posixpath.basename(self._name)
            self._file = open(self._path, "wb")  # noqa: SIM115 - spans many add() calls
            self._size, self._hash = 0, hashlib.sha256()
        record.update(shard=len(self.shards), offset=self._size, lengths=[len(b) for b in data])
        for b in data:
            self._file.write(b)
            self._hash.update(b)
        self._size += total

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        info = {"name": self._name, "size": self._size, "sha256": self._hash.hexdigest()}
        self.shards.append(info)
        self.on_close(self._path, info)


def _write_shards(
    layout: _Layout,
    source: FrameSource,
    workdir: Path,
    shard_size: int,
    progress: bool,
    on_close: Callable[[Path, dict], None],
) -> list[dict[str, Any]]:
    """Read every frame (threads, bounded window) and write the shards in manifest order."""
    writer = _ShardWriter(workdir, shard_size, on_close)
    total = sum(len(r["frames"]) for r in layout.records)
    bar = s3.progress_bar(total, "frame", "pack", progress)
    with ThreadPoolExecutor(_READERS) as pool, bar:
        for row, data in enumerate(_read_tracklets(pool, source, layout.refs)):
            writer.add(layout.records[row], data)
            bar.update(len(data))
        writer.close()
    return writer.shards


def _read_tracklets(
    pool: ThreadPoolExecutor, source: FrameSource, refs: list[tuple[str, ...]]
) -> Iterator[list[bytes]]:
    """The frame bytes of each tracklet in order, read ahead by at most a window of tracklets."""

    def read(frames: tuple[str, ...]) -> list[bytes]:
        out = []
        for f in frames:
            try:
                out.append(source.read_frame(f))
            except OSError as e:
                raise DatasetError(f"cannot read frame {f}: {e}") from e
        return out

    window: deque = deque()
    pending = iter(refs)
    for frames in pending:
        window.append(pool.submit(read, frames))
        if len(window) >= 4 * _READERS:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


def _pack_to_dir(layout: _Layout, source: FrameSource, dest: Path, shard_size: int, progress: bool) -> Manifest:
    """Write the packed layout to a sibling temporary directory, then rename it to `dest`."""
    dest = dest.absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetError(f"{dest} already exists and is not empty: pack into a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shards = _write_shards(layout, source, tmp, shard_size, progress, lambda p, i: None)
        manifest = build_manifest(layout.content(shards))
        (tmp / MANIFEST_NAME).write_bytes(manifest.to_json())
        os.replace(tmp, dest)  # atomic; replaces `dest` only if it is an empty directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _pack_to_s3(layout: _Layout, source: FrameSource, uri: s3.S3Uri, shard_size: int, progress: bool) -> Manifest:
    """Write shards to a temporary directory, uploading each while the next is written."""
    client = s3.make_client()
    s3.check_bucket(client, uri)
    manifest_key = uri.key(MANIFEST_NAME)
    if s3.object_exists(client, uri, manifest_key):
        raise DatasetError(
            f"{uri.child(MANIFEST_NAME)} already exists: a packed dataset is never overwritten in "
            "place (readers may be using it); pack to a new prefix, e.g. .../v2"
        )
    uploads: deque = deque()

    def wait_oldest() -> None:
        path, what, future = uploads.popleft()
        with s3.s3_errors(uri, what, client):
            future.result()
        path.unlink()

    with (
        tempfile.TemporaryDirectory(prefix="gltr-pack-") as tmp,
        s3.create_transfer_manager(client) as manager,
    ):

        def upload(path: Path, info: dict) -> None:
            if len(uploads) >= _UPLOAD_BACKLOG:
                wait_oldest()
            future = manager.upload(str(path), uri.bucket, uri.key(info["name"]))
            uploads.append((path, uri.child(info["name"]), future))

        try:
            shards = _write_shards(layout, source, Path(tmp), shard_size, progress, upload)
            while uploads:
                wait_oldest()
        except BaseException:
            for _, _, future in uploads:
                future.cancel()
            raise
    manifest = build_manifest(layout.content(shards))
    with s3.s3_errors(uri, uri.child(MANIFEST_NAME), client):
        client.put_object(
            Bucket=uri.bucket,
            Key=manifest_key,
            Body=manifest.to_json(),
            ContentType="application/json",
        )
    return manifest
