"""The manifest of a packed dataset: its schema, its version hash, and the index it describes.

A packed dataset is a handful of large shard objects (frames as the raw dataset encodes them, JPEG or
PNG, concatenated) plus one `manifest.json`::

    {
      "format": "gltr-packed", "version": 1,
      "dataset": "mars",
      "protocol": "official",              # protocol of the index it was packed from
      "meta": {...},                        # the index's meta, minus local paths (iLIDS-VID, PRID-2011:
                                            # "identity_splits", every split as lists of pids)
      "shards": [{"name": "shards/shard-00000.bin", "size": 268435456, "sha256": "..."}, ...],
      "tracklets": [                        # each distinct tracklet once, its frames contiguous
        {"pid": 1, "camid": 0, "dir": "bbox_train/0001",
         "frames": ["0001C1T0001F001.jpg", ...],   # frame name = dir + "/" + frame
         "shard": 0, "offset": 0, "lengths": [5120, ...]},  # frame i at offset + sum(lengths[:i])
        ...
      ],
      "splits": {"train": [0, 1, ...], "query": [...], "gallery": [...]},  # rows of "tracklets"
      "version_hash": "..."                 # sha256 of the canonical JSON of everything above
    }

Protocols are built at read time from the stored splits. A dataset packed from an "official" index
(MARS: every test tracklet in the gallery, queries and junk pid -1 included; DukeV, whose split
folders are the same under both protocols) serves both protocols: "torchreid" removes the queries
and junk from that gallery. One packed from a "torchreid" index can only serve "torchreid", since
the junk tracklets are not in it. Packing a raw directory always stores the complete form.

Identity splits are built at read time too: iLIDS-VID and PRID-2011 are packed as split 0, which lists
every tracklet, and `build_index(..., split=k)` re-divides them by split k (see identity_splits).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gltr_platform.data.identity_splits import select_split
from gltr_platform.data.index import DatasetError, DatasetIndex, Tracklet, check_query_gallery

FORMAT = "gltr-packed"
VERSION = 1
MANIFEST_NAME = "manifest.json"
PROTOCOLS = ("torchreid", "official")
JUNK_PID = -1
SPLITS = ("train", "query", "gallery")


class ShardInfo(BaseModel):
    """One shard object: its path below the dataset root, size in bytes and sha256 (hex)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._/-]*$")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _stays_inside(cls, name: str) -> str:
        # The name becomes a path below the cache entry: it must not climb out of it.
        if ".." in name.split("/"):
            raise ValueError(f"shard name {name!r} contains '..'")
        return name


class TrackletRecord(BaseModel):
    """One tracklet and where its frames lie: contiguous in one shard, starting at `offset`."""

    model_config = ConfigDict(extra="forbid")
    pid: int
    camid: int
    dir: str
    frames: list[str]
    shard: int
    offset: int
    lengths: list[int]

    @model_validator(mode="after")
    def _frames_match_lengths(self) -> TrackletRecord:
        if len(self.frames) != len(self.lengths) or not self.frames:
            raise ValueError(f"{len(self.frames)} frames but {len(self.lengths)} lengths (need equal, non-zero)")
        return self

    def frame_names(self) -> tuple[str, ...]:
        """The frame names, as used in Tracklet.frames and FrameSource.read_frame."""
        prefix = f"{self.dir}/" if self.dir else ""
        return tuple(prefix + f for f in self.frames)


class Manifest(BaseModel):
    """The validated manifest of a packed dataset."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["gltr-packed"]
    version: Literal[1]
    dataset: str
    protocol: Literal["torchreid", "official"]
    meta: dict[str, Any]
    shards: list[ShardInfo]
    tracklets: list[TrackletRecord]
    splits: dict[Literal["train", "query", "gallery"], list[int]]
    version_hash: str

    @model_validator(mode="after")
    def _references_in_range(self) -> Manifest:
        for split, rows in self.splits.items():
            if rows and not 0 <= min(rows) <= max(rows) < len(self.tracklets):
                raise ValueError(f"splits.{split} refers to a tracklet that does not exist")
        for i, t in enumerate(self.tracklets):
            if not 0 <= t.shard < len(self.shards):
                raise ValueError(f"tracklets[{i}] refers to shard {t.shard}, which does not exist")
            if t.offset < 0 or t.offset + sum(t.lengths) > self.shards[t.shard].size:
                raise ValueError(f"tracklets[{i}] lies outside {self.shards[t.shard].name}")
        return self

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols this dataset can serve."""
        return PROTOCOLS if self.protocol == "official" else (self.protocol,)

    @property
    def total_bytes(self) -> int:
        """Sum of the shard sizes."""
        return sum(s.size for s in self.shards)

    def to_json(self) -> bytes:
        """The manifest file's bytes."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()


def version_hash(content: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of a manifest without its `version_hash` field.

    Nothing local (paths, times) is in a manifest, so identical data packs to an identical hash, and
    the shard checksums are in it, so any change to any byte changes the hash.
    """
    body = {k: v for k, v in content.items() if k != "version_hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_manifest(content: dict[str, Any]) -> Manifest:
    """Validate freshly packed content and seal it with its version hash."""
    content = {**content, "format": FORMAT, "version": VERSION}
    content["version_hash"] = version_hash(content)
    return Manifest.model_validate(content)


def parse_manifest(raw: bytes, source: str) -> Manifest:
    """Parse and check manifest bytes read from `source` (a path or URI, for messages)."""
    try:
        content = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{source} is not valid JSON ({e}); re-pack the dataset") from e
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise DatasetError(f"{source} is not a packed-dataset manifest (format {found!r}, expected {FORMAT!r})")
    if content.get("version") != VERSION:
        raise DatasetError(
            f"{source} has manifest version {content.get('version')!r}, but this gltr_platform "
            f"reads version {VERSION} only: upgrade gltr_platform or re-pack the dataset with it"
        )
    if content.get("version_hash") != version_hash(content):
        raise DatasetError(
            f"{source} does not match its own version_hash: the manifest was edited or corrupted; re-pack the dataset"
        )
    try:
        return Manifest.model_validate(content)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DatasetError(f"{source} is malformed at {where}: {first['msg']}") from e


def check_protocol(manifest: Manifest, protocol: str) -> None:
    """DatasetError unless the packed dataset can serve `protocol`."""
    if protocol not in PROTOCOLS:
        raise DatasetError(f"unknown protocol {protocol!r}: choose one of {list(PROTOCOLS)}")
    if protocol not in manifest.protocols:
        raise DatasetError(
            f"packed dataset {manifest.dataset!r} ({manifest.version_hash[:12]}) was packed from a "
            f"{manifest.protocol!r} index and cannot serve the {protocol!r} protocol; "
            "re-pack it from the raw dataset directory"
        )


def build_index(manifest: Manifest, protocol: str, split: int = 0) -> DatasetIndex:
    """The DatasetIndex of a packed dataset under `protocol` and identity `split`; frames are frame names."""
    check_protocol(manifest, protocol)
    records = manifest.tracklets
    rows = {s: manifest.splits.get(s, []) for s in SPLITS}
    if protocol != manifest.protocol:  # "torchreid" from an "official" pack
        queries = set(rows["query"])
        rows["gallery"] = [r for r in rows["gallery"] if r not in queries and records[r].pid != JUNK_PID]
    lists = {
        name: [Tracklet(records[r].frame_names(), records[r].pid, records[r].camid, name) for r in rows[name]]
        for name in SPLITS
    }
    meta = {**manifest.meta, "version_hash": manifest.version_hash, "packed": True}
    index = select_split(DatasetIndex(manifest.dataset, protocol=protocol, meta=meta, **lists), split)
    check_query_gallery(index)
    return index


class FrameTable:
    """Where each frame lies (shard, offset, length), looked up by name in sorted numpy arrays.

    Arrays rather than a dict of 1.2M Python objects (MARS): about 60 bytes per frame, and forked
    DataLoader workers share the pages instead of copying them as reference counts change.
    """

    def __init__(self, manifest: Manifest):
        names: list[bytes] = []
        shard, offset, length = [], [], []
        for t in manifest.tracklets:
            lengths = np.asarray(t.lengths, dtype=np.int64)
            names.extend(n.encode() for n in t.frame_names())
            shard.append(np.full(len(lengths), t.shard, dtype=np.int32))
            offset.append(t.offset + np.cumsum(lengths) - lengths)
            length.append(lengths)
        all_names = np.array(names, dtype=np.bytes_)
        order = np.argsort(all_names, kind="stable")
        self.names = all_names[order]
        self.shard = np.concatenate(shard)[order] if shard else np.zeros(0, np.int32)
        self.offset = np.concatenate(offset)[order] if offset else np.zeros(0, np.int64)
        self.length = np.concatenate(length)[order] if length else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def locate(self, frame: str) -> tuple[int, int, int] | None:
        """(shard, offset, length) of `frame`, or None when it is not in the dataset."""
        key = frame.encode()
        i = int(np.searchsorted(self.names, key))
        if i == len(self.names) or self.names[i] != key:
            return None
        return int(self.shard[i]), int(self.offset[i]), int(self.length[i])
