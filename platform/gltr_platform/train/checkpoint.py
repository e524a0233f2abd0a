"""Everything a run needs to resume exactly: model, optimizer, LR schedule, AMP scaler, sampler, RNGs."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
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
    """Write `state` to directory/state.pt atomically (temporary name, then rename)."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    """Read directory/state.pt, failing with a CheckpointError that names the file when it is damaged."""
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {directory} has no {STATE_FILE}") from None
    except Exception as e:  # torch raises several types for truncated zip archives
        raise CheckpointError(f"checkpoint file {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"checkpoint file {path} does not hold a GLTR training state")
    return state


def upload_with_retries(checkpoint, checkpoint_dir_name: str, attempts: int = 5, base_delay_s: float = 1.0):
    """Ray Train `checkpoint_upload_fn`: persist to run storage, retrying transient storage errors.

    Ray's own upload gives up on the first error, and one S3 503 (SlowDown) then restarts the whole
    worker group. Here a failed copy is retried with jittered exponential backoff; the copy is
    idempotent (same files, same destination), so a retry after a partial upload is safe.
    """
    import ray.train

    storage = ray.train.get_context().get_storage()
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
