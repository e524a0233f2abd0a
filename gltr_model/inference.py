"""Test-time tracklet embeddings: the whole tracklet, fixed-length chunks, or T evenly spaced frames."""

from __future__ import annotations

import torch
from torch import nn

MODES = ("whole", "chunks", "evenly")


def evenly_spaced(n: int, t: int) -> torch.Tensor:
    """Indices of `t` frames spread evenly over a tracklet of `n` frames (repeats when n < t)."""
    if n < 1 or t < 1:
        raise ValueError(f"need n >= 1 and t >= 1, got n={n}, t={t}")
    return torch.linspace(0, n - 1, t).round().long()


@torch.no_grad()
def embed_tracklet(
    model: nn.Module,
    frames: torch.Tensor,
    mode: str = "whole",
    seq_len: int = 16,
    chunk_len: int = 64,
) -> torch.Tensor:
    """Embed one tracklet of (n, 3, H, W) frames into a (D,) vector with `model` in eval mode.

    "whole" feeds every frame in one pass (official GLTR; memory grows with n). "chunks" splits the
    tracklet into consecutive chunks of at most `chunk_len` frames and averages their embeddings
    weighted by length (bounded memory for tracklets of thousands of frames). "evenly" feeds `seq_len`
    evenly spaced frames.
    """
    if mode not in MODES:
        raise ValueError(f"unknown test mode {mode!r}: use one of {MODES}")
    if frames.dim() != 4 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty (n, 3, H, W) tensor, got {tuple(frames.shape)}")
    if mode == "whole":
        return model(frames[None])[0]
    if mode == "evenly":
        return model(frames[evenly_spaced(len(frames), seq_len)][None])[0]
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    total = None
    for chunk in frames.split(chunk_len):
        emb = model(chunk[None])[0] * len(chunk)
        total = emb if total is None else total + emb
    return total / len(frames)
