"""Everything a run needs to resume exactly: model, optimizer, LR schedule, AMP scaler, sampler, RNGs."""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import random
import re
import time
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

STATE_FILE = "state.pt"
CHECKSUM_FILE = "state.pt.sha256"  # hex digest of STATE_FILE, written with it: catches truncation and bit rot
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = re.compile(r"epoch-(\d+)(?:-(\d+))?")  # epoch-NNNN, or epoch-NNNN-i for a re-trained epoch
logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read back: truncated, corrupt, or written by an incompatible run."""


def rng_state() -> dict[str, Any]:
    """The state of every random number generator the loop draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to directory/state.pt and its sha256 beside it, each atomically (temporary name, rename)."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_name(f"{STATE_FILE}.tmp")
    with open(tmp, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(state, writer)  # hashed as it is written: no second pass over a large file
    os.replace(tmp, path)
    tmp = path.with_name(f"{CHECKSUM_FILE}.tmp")
    tmp.write_text(writer.digest.hexdigest() + "\n")
    os.replace(tmp, path.with_name(CHECKSUM_FILE))
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    """Read directory/state.pt, failing with a CheckpointError that names the file when it is damaged."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {STATE_FILE}")
    checksum = Path(directory) / CHECKSUM_FILE
    if checksum.is_file():  # absent in checkpoints written before checksums were: those load unverified
        expected, actual = checksum.read_text().strip(), _sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint file {path} is unreadable: its sha256 {actual[:12]} does not match the "
                f"{expected[:12]} recorded in {CHECKSUM_FILE} when it was saved (truncated or corrupted since)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated zip archives
        raise CheckpointError(f"checkpoint file {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"checkpoint file {path} does not hold a GLTR training state")
    return state


def epoch_dir_name(epoch: int, taken: Collection[str] = ()) -> str:
    """`epoch-NNNN`, or `epoch-NNNN-i` when that directory is already in the run's storage.

    A run that fell back past a damaged checkpoint trains some epochs again. Ray Train deletes an
    evicted checkpoint by its path, so two checkpoints sharing one directory would lose the newer one
    when the older is evicted.
    """
    name = base = f"epoch-{epoch:04d}"
    i = 0
    while name in taken:
        i += 1
        name = f"{base}-{i}"
    return name


def stored_checkpoints(checkpoint) -> list[str]:
    """The checkpoint directories beside `checkpoint` (a `ray.train.Checkpoint`) in the run's storage.

    Newest first: by epoch, then by re-training count.
    """
    from pyarrow.fs import FileSelector, FileType

    infos = checkpoint.filesystem.get_file_info(FileSelector(posixpath.dirname(checkpoint.path.rstrip("/"))))
    names = [i.base_name for i in infos if i.type == FileType.Directory and CHECKPOINT_DIR.fullmatch(i.base_name)]
    return sorted(names, key=_checkpoint_order, reverse=True)


def load_resumable_state(checkpoint):
    """The state in `checkpoint`, or, when that one is damaged, in the newest earlier checkpoint that loads.

    Returns (state, the `ray.train.Checkpoint` it came from). Raises CheckpointError naming the run's
    storage when no checkpoint there loads.
    """
    import ray.train

    try:
        return _load_checkpoint(checkpoint), checkpoint
    except CheckpointError as e:
        damaged = e
    storage, name = posixpath.split(checkpoint.path.rstrip("/"))
    problems = [f"{name}: {damaged}"]
    for candidate in stored_checkpoints(checkpoint):
        if _checkpoint_order(candidate) >= _checkpoint_order(name):
            continue  # the damaged one itself, or a later one that Ray no longer tracks
        earlier = ray.train.Checkpoint(posixpath.join(storage, candidate), filesystem=checkpoint.filesystem)
        try:
            state = _load_checkpoint(earlier)
        except CheckpointError as e:
            problems.append(f"{candidate}: {e}")
            continue
        logger.warning(
            "latest checkpoint %s is damaged (%s); resuming from %s instead, after epoch %d",
            checkpoint.path,
            damaged,
            candidate,
            state["epoch"],
        )
        return state, earlier
    raise CheckpointError(
        f"no checkpoint in the run's storage {storage} can be loaded to resume from:\n  "
        + "\n  ".join(problems)
        + "\nStart the run afresh under a new name, or restore a good copy of a checkpoint directory there."
    )


def _load_checkpoint(checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as directory:
        return load_state(directory)


def _checkpoint_order(name: str) -> tuple[int, int]:
    match = CHECKPOINT_DIR.fullmatch(name)
    if match is None:  # not named by the loop: cannot tell its epoch, so nothing counts as earlier
        return (2**62, 0)
    return int(match[1]), int(match[2] or 0)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it (torch.save only calls write/flush)."""

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def upload_with_retries(
    checkpoint, checkpoint_dir_name: str, attempts: int = 5, base_delay_s: float = 1.0, storage=None
):
    """Ray Train `checkpoint_upload_fn`: persist to run storage, retrying transient storage errors.

    pyarrow retries each S3 request a few times itself (500, 503 SlowDown, dropped connections), but
    Ray's upload gives up on the first error that outlasts those, and the whole worker group then
    restarts. Here a failed copy is retried with jittered exponential backoff; the copy is idempotent
    (same files, same destination), so a retry after a partial upload is safe. `storage` is the run's
    StorageContext, this worker's unless given.
    """
    import ray.train

    storage = storage or ray.train.get_context().get_storage()
    for attempt in range(1, attempts + 1):
        try:
            return storage.persist_current_checkpoint(checkpoint, checkpoint_dir_name)
        except OSError as e:  # pyarrow raises OSError for S3 and filesystem failures
            if attempt == attempts:
                raise
            delay = base_delay_s * 2 ** (attempt - 1) * (0.5 + random.random())
            logger.warning(
                "checkpoint upload %s failed (%s); retry %d/%d in %.1fs",
                checkpoint_dir_name,
                e,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
