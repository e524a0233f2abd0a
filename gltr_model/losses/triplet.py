"""Batch-hard triplet loss (Hermans et al. 2017): hardest positive and negative per anchor in a PK batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchHardTripletLoss(nn.Module):
    """Margin ranking on the hardest positive/negative pair of each anchor; `margin=None` is soft-margin."""

    def __init__(self, margin: float | None = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = torch.cdist(embeddings, embeddings).clamp_min(1e-12)  # (N, N)
        same = labels[:, None] == labels[None, :]
        # hardest positive: farthest same-identity sample; hardest negative: closest other identity
        hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)
        valid = torch.isfinite(hardest_neg) & (same.sum(dim=1) > 1)
        if not valid.any():
            return embeddings.sum() * 0.0  # no positive/negative pairs in this batch: a zero with a graph
        gap = hardest_pos[valid] - hardest_neg[valid]
        if self.margin is None:
            return F.softplus(gap).mean()
        return F.relu(gap + self.margin).mean()
