"""Sync a packed dataset from S3 into a node-local cache, and serve its frames from the shards.

Cache layout::

    cache_dir/<version_hash>.lock            one FileLock per dataset version: one GPU process per
                                             node downloads, the others wait and then reuse it
    cache_dir/<version_hash>/manifest.json
    cache_dir/<version_hash>/shards/shard-00000.bin ...
    cache_dir/<version_hash>/.complete        written last, after every shard is verified

An entry is valid only with its `.complete` marker, so a crash or failure at any point leaves
nothing a later call would trust. Shards are downloaded to `<name>.part`, sha256-checked and renamed;
a later sync resumes, keeping the shards that are already there and check out. A cache directory that
cannot take the dataset (full, over quota, read-only) fails the sync with a DatasetError naming it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from gltr_platform.data import s3
from gltr_platform.data.index import DatasetError, DatasetIndex
from gltr_platform.data.manifest import (
    MANIFEST_NAME,
    FrameTable,
    Manifest,
    ShardInfo,
    build_index,
    check_protocol,
    parse_manifest,
)

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
PART_SUFFIX = ".part"
# Shards handed to the transfer manager at once; it bounds the requests in flight itself. Enough to
# keep it busy when shards are small (a few parts each); each thread mostly waits, then verifies.
_SHARDS_IN_FLIGHT = 2 * s3.MAX_CONCURRENCY
# Threads checking shards already on disk (hashing: CPU- and disk-bound).
_CHECKERS = 8
# How a cache directory refuses data: no space, over quota or the file size limit; or not writable.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class PackedDataset:
    """A packed dataset on local disk: its manifest, its index under one protocol and split, and its frames.

    It is the dataset's FrameSource: `read_frame(name)` reads the frame's byte range from its shard
    with os.pread. Descriptors are opened lazily per process, so the object can be shared with forked
    DataLoader workers or pickled to spawned ones.
    """

    def __init__(self, root: str | Path, manifest: Manifest, protocol: str = "torchreid", split: int = 0):
        self.root = Path(root)
        self.manifest = manifest
        self.index: DatasetIndex = build_index(manifest, protocol, split)
        self._table: FrameTable | None = None
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, root: str | Path, protocol: str = "torchreid", *, split: int = 0, verify: bool = False
    ) -> PackedDataset:
        """Open a local packed directory at identity `split`; shard sizes are checked, checksums only with `verify`."""
        root = Path(root)
        path = root / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"{path} is missing: {root} is not a packed dataset") from None
        manifest = parse_manifest(raw, str(path))
        check_protocol(manifest, protocol)
        for shard in manifest.shards:
            problem = _shard_problem(root / shard.name, shard, verify)
            if problem:
                raise DatasetError(f"{root / shard.name} {problem}; re-pack or re-sync the dataset")
        return cls(root, manifest, protocol, split)

    @property
    def version(self) -> str:
        """The dataset version hash (sha256 of the manifest content)."""
        return self.manifest.version_hash

    @property
    def protocol(self) -> str:
        """The evaluation protocol `index` was built for."""
        return self.index.protocol

    def read_frame(self, frame: str) -> bytes:
        """The encoded bytes of frame `frame` (a name from index tracklets' frames)."""
        if self._table is None:
            self._table = FrameTable(self.manifest)
        where = self._table.locate(frame)
        if where is None:
            raise DatasetError(f"frame {frame!r} is not in packed dataset {self.manifest.dataset!r} at {self.root}")
        shard, offset, length = where
        data = os.pread(self._fd(shard), length, offset)
        if len(data) != length:
            raise DatasetError(
                f"{self.root / self.manifest.shards[shard].name} is truncated (frame {frame!r} "
                "lies past its end); re-sync with verify=True"
            )
        return data

    def close(self) -> None:
        """Close this process's shard descriptors (they reopen on the next read)."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __enter__(self) -> PackedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_fds={}, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _fd(self, shard: int) -> int:
        """This process's read-only descriptor of `shard`."""
        if self._pid != os.getpid():
            # A forked child: the inherited descriptors and lock belong to the parent's threads.
            self._fds, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    path = self.root / self.manifest.shards[shard].name
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    self._fds[shard] = fd
        return fd


def fetch_manifest(uri: str, protocol: str = "torchreid") -> Manifest:
    """Only the manifest of the packed dataset at `uri`: its index and version, no shard downloaded."""
    return _get_manifest(uri, protocol, s3.make_client())[0]


def _get_manifest(uri: str, protocol: str, client: Any) -> tuple[Manifest, bytes]:
    loc = s3.parse_s3_uri(uri)
    manifest_uri = loc.child(MANIFEST_NAME)
    with s3.s3_errors(loc, manifest_uri, client):
        try:
            raw = s3.get_bytes(client, loc.bucket, loc.key(MANIFEST_NAME))
        except client.exceptions.NoSuchKey:
            raise DatasetError(
                f"no packed dataset at {loc}: {manifest_uri} does not exist; check the prefix, "
                "or pack one with `python -m gltr_platform.data pack SRC " + str(loc) + "`"
            ) from None
    manifest = parse_manifest(raw, manifest_uri)
    check_protocol(manifest, protocol)
    return manifest, raw


def sync(
    uri: str,
    cache_dir: str | Path,
    *,
    protocol: str = "torchreid",
    split: int = 0,
    verify: bool = False,
    progress: bool = True,
) -> PackedDataset:
    """Download the packed dataset at `uri` (s3://bucket/prefix) into `cache_dir`, or reuse it there.

    A complete cache entry for the manifest's version is reused without downloading a shard (sizes
    are checked; checksums too with `verify`, re-fetching shards that fail).
    """
    loc = s3.parse_s3_uri(uri)
    client = s3.make_client()
    manifest, raw = _get_manifest(uri, protocol, client)
    cache = Path(cache_dir)
    entry = cache / manifest.version_hash
    with _cache_errors(cache, manifest):
        cache.mkdir(parents=True, exist_ok=True)
        with _locked(cache / f"{manifest.version_hash}.lock", entry):
            if verify or not _is_complete(entry, manifest):
                _fill(entry, manifest, raw, client, loc, progress)
            else:
                log.info("using cached %s (%s) at %s", manifest.dataset, manifest.version_hash, entry)
    return PackedDataset(entry, manifest, protocol, split)


@contextmanager
def _cache_errors(cache: Path, manifest: Manifest) -> Iterator[None]:
    """Turn a cache directory that cannot take the dataset into a DatasetError saying what to do."""
    try:
        yield
    except OSError as e:
        where = f"the dataset cache {cache}"
        detail = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        if e.errno in _NO_ROOM:
            raise DatasetError(
                f"{where} has no room for {manifest.dataset} ({detail}): it needs "
                f"{manifest.total_bytes / 2**20:.1f} MiB; free space there or point --cache / data.cache_dir "
                "at a larger disk, then sync again (shards already verified are kept)"
            ) from e
        if e.errno in _NOT_WRITABLE:
            raise DatasetError(
                f"cannot write to {where} ({detail}): make it writable or point "
                "--cache / data.cache_dir at a writable directory"
            ) from e
        raise


@contextmanager
def _locked(path: Path, entry: Path) -> Iterator[None]:
    """Hold the cache entry's FileLock, telling the user when another process has it."""
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is syncing %s; waiting for it", entry)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _is_complete(entry: Path, manifest: Manifest) -> bool:
    """Marker for this version present, manifest there, every shard of the right size."""
    try:
        if (entry / COMPLETE_MARKER).read_text() != manifest.version_hash:
            return False
    except FileNotFoundError:
        return False
    return (entry / MANIFEST_NAME).is_file() and all(
        _shard_problem(entry / s.name, s, check_hash=False) is None for s in manifest.shards
    )


def _fill(entry: Path, manifest: Manifest, raw: bytes, client: Any, loc: s3.S3Uri, progress: bool) -> None:
    """Make `entry` complete: verify what is there, download the rest, then write the marker."""
    (entry / COMPLETE_MARKER).unlink(missing_ok=True)  # from here on the entry is not valid
    for shard in manifest.shards:
        (entry / shard.name).parent.mkdir(parents=True, exist_ok=True)
    _remove_partial(entry)  # left by a process that died holding the lock
    # Shards already here (an earlier, interrupted sync; or verify=True) are kept if they check out.
    present = [s for s in manifest.shards if (entry / s.name).exists()]
    with ThreadPoolExecutor(_CHECKERS) as pool:
        checked = pool.map(lambda s: _shard_problem(entry / s.name, s), present)
        problems = dict(zip(present, checked, strict=True))
    todo = [s for s in manifest.shards if problems.get(s, "is missing")]
    for s in todo:
        (entry / s.name).unlink(missing_ok=True)
    if todo:
        log.info("downloading %d of %d shards of %s", len(todo), len(manifest.shards), loc)
        try:
            _download(entry, todo, client, loc, progress, manifest.dataset)
        finally:
            _remove_partial(entry)
    _write_atomic(entry / MANIFEST_NAME, raw)
    _write_atomic(entry / COMPLETE_MARKER, manifest.version_hash.encode())


def _download(entry: Path, shards: list[ShardInfo], client: Any, loc: s3.S3Uri, progress: bool, name: str) -> None:
    """Fetch `shards` concurrently through one transfer manager, each verified before renaming."""
    bar = s3.progress_bar(sum(s.size for s in shards), "B", f"sync {name}", progress)
    subscriber = s3.ProgressSubscriber(bar)

    def fetch(manager: Any, shard: ShardInfo) -> None:
        final = entry / shard.name
        part = final.with_name(final.name + PART_SUFFIX)
        what = loc.child(shard.name)
        problem = ""
        for attempt in (1, 2):
            with s3.s3_errors(loc, what, client):
                future = manager.download(loc.bucket, loc.key(shard.name), str(part), subscribers=[subscriber])
                future.result()
            problem = _shard_problem(part, shard) or ""
            if not problem:
                os.replace(part, final)
                return
            part.unlink(missing_ok=True)
            log.warning("%s %s (download %d of 2)", what, problem, attempt)
        raise DatasetError(
            f"{what} {problem}, twice: the packed dataset in S3 is damaged; re-pack it to a new "
            "prefix with `python -m gltr_platform.data pack`"
        )

    # The manager is the inner context: on a failure or Ctrl-C it exits first and cancels the
    # transfers in flight, so the pool's threads finish at once instead of completing downloads.
    with (
        bar,
        ThreadPoolExecutor(_SHARDS_IN_FLIGHT) as pool,
        s3.create_transfer_manager(client) as manager,
    ):
        futures = [pool.submit(fetch, manager, s) for s in shards]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _shard_problem(path: Path, shard: ShardInfo, check_hash: bool = True) -> str | None:
    """What is wrong with the shard file at `path` ("is missing", size, checksum), or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size != shard.size:
        return f"is {size} bytes but the manifest says {shard.size} (truncated or replaced)"
    if check_hash:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != shard.sha256:
            return f"has sha256 {digest[:16]}... but the manifest says {shard.sha256[:16]}... (corrupt)"
    return None


def _remove_partial(entry: Path) -> None:
    """Delete unfinished files: downloads, ours (`.part`) and the transfer manager's (`.part.<random>`),
    and `_write_atomic`'s temporaries."""
    for part in [*entry.rglob(f"*{PART_SUFFIX}*"), *entry.glob("*.tmp-*")]:
        part.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name in the same directory and a rename."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves a truncated temporary otherwise
        raise
