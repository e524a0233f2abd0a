"""Temporal Self-Attention (TSA): global relations between all frames of a clip (GLTR, Sec. 3.3)."""

from __future__ import annotations

import torch
from torch import nn


class TemporalSelfAttention(nn.Module):
    """Non-local self-attention across time with a residual connection.

    Query, key and value are 1x1 temporal convolutions to `width` channels; the attention map is a
    softmax over frames. The output projection ends in a BatchNorm initialised to zero, so the block is
    the identity at initialisation and learns how much global context to add.
    """

    def __init__(self, channels: int, width: int | None = None):
        super().__init__()
        width = channels // 2 if width is None else width
        if width < 1:
            raise ValueError(f"attention width must be >= 1, got {width}")
        self.width = width
        self.query = nn.Conv1d(channels, width, kernel_size=1)
        self.key = nn.Conv1d(channels, width, kernel_size=1)
        self.value = nn.Conv1d(channels, width, kernel_size=1)
        self.out = nn.Sequential(nn.Conv1d(width, channels, kernel_size=1), nn.BatchNorm1d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T)
        q = self.query(x).transpose(1, 2)  # (B, T, width)
        k = self.key(x)  # (B, width, T)
        v = self.value(x).transpose(1, 2)  # (B, T, width)
        attn = torch.softmax(q @ k, dim=-1)  # (B, T, T): row t = how much frame t attends to each frame
        y = (attn @ v).transpose(1, 2)  # (B, width, T)
        return x + self.out(y)
