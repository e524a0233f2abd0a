"""Dilated Temporal Pyramid (DTP): short- and long-term local temporal context (GLTR, Sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn


class DilatedTemporalPyramid(nn.Module):
    """Parallel temporal convolutions (kernel 3) with growing dilation rates, outputs concatenated.

    Branch r sees frames t - r, t and t + r; zero padding of r keeps the length T, so clips shorter than
    the largest rate (even T = 1) work. As in the official code, the un-convolved frame features are
    concatenated too (`include_input`), giving (len(dilations) + 1) * channels output channels.
    """

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 3), include_input: bool = True):
        super().__init__()
        dilations = tuple(dilations)
        if not dilations or any(not isinstance(r, int) or r < 1 for r in dilations):
            raise ValueError(f"dilations must be positive integers, got {dilations}")
        if len(set(dilations)) != len(dilations):
            raise ValueError(f"dilations must be distinct, got {dilations}")
        self.dilations = dilations
        self.include_input = include_input
        self.branches = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size=3, dilation=r, padding=r, bias=False) for r in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.001)  # official init: starts close to zero
        self.out_channels = channels * (len(dilations) + int(include_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, out_channels, T)
        outs = [conv(x) for conv in self.branches]
        if self.include_input:
            outs.insert(0, x)
        return torch.cat(outs, dim=1)
