"""Which frames of a tracklet make a clip: T indices out of n, for training, validation and test.

Training draws a fixed-length clip of T frames per tracklet each time the tracklet is sampled; testing
looks at the whole tracklet, cut into consecutive chunks so that memory stays bounded however long the
tracklet is. A tracklet shorter than T is cycled in order (0, 1, .., n-1, 0, 1, ..) so every clip has
exactly T frames.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SamplingMode = Literal["consecutive", "restricted", "evenly"]
SAMPLING_MODES: tuple[str, ...] = ("consecutive", "restricted", "evenly")


def sample_clip(n: int, seq_len: int, mode: SamplingMode, rng: np.random.Generator | None = None) -> np.ndarray:
    """Return `seq_len` frame indices (int64, in temporal order) into a tracklet of `n` frames.

    - "consecutive": `seq_len` consecutive frames from a uniformly random start (the official GLTR
      sampling; keeps the short-range motion the dilated temporal convolutions look at).
    - "restricted": restricted random sampling; the tracklet is cut into `seq_len` equal chunks and
      one random frame is taken from each, so a clip spans the whole tracklet.
    - "evenly": the middle frame of each of those chunks; deterministic, for validation and test.
    """
    _check_lengths(n, seq_len)
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
    if mode != "evenly" and rng is None:
        raise ValueError(f"sampling mode {mode!r} is random: pass a numpy Generator as rng")
    if n <= seq_len:
        # Every chunk is a single frame of the cycled tracklet: all three modes agree.
        return np.arange(seq_len, dtype=np.int64) % n
    if mode == "consecutive":
        start = rng.integers(0, n - seq_len + 1)
        return np.arange(start, start + seq_len, dtype=np.int64)
    bounds = np.arange(seq_len + 1, dtype=np.int64) * n // seq_len  # chunk i is [bounds[i], bounds[i+1])
    if mode == "restricted":
        return rng.integers(bounds[:-1], bounds[1:])
    return (bounds[:-1] + bounds[1:]) // 2


def chunk_indices(n: int, chunk_len: int) -> np.ndarray:
    """Cut a tracklet of `n` frames into consecutive chunks: an int64 array (num_chunks, chunk_len).

    Chunks are equal-length so they batch through the model; the last one ends at the tracklet's last
    frame and overlaps its predecessor rather than repeating frames. Every frame is in some chunk. A
    tracklet shorter than `chunk_len` is one cycled chunk.
    """
    _check_lengths(n, chunk_len)
    if n <= chunk_len:
        return (np.arange(chunk_len, dtype=np.int64) % n)[None, :]
    starts = np.arange(0, n - chunk_len + 1, chunk_len, dtype=np.int64)
    if starts[-1] + chunk_len < n:
        starts = np.append(starts, n - chunk_len)
    return starts[:, None] + np.arange(chunk_len, dtype=np.int64)[None, :]


def _check_lengths(n: int, length: int) -> None:
    if n < 1:
        raise ValueError(f"a tracklet needs at least one frame, got n={n}")
    if length < 1:
        raise ValueError(f"a clip or chunk needs at least one frame, got length={length}")
