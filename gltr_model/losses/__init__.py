"""Re-ID losses: cross-entropy (official GLTR, optional label smoothing) plus an optional triplet term."""

from __future__ import annotations

import torch
from torch import nn

from gltr_model.losses.triplet import BatchHardTripletLoss


class ReIDLoss(nn.Module):
    """`ce_weight * CE(logits, labels) + triplet_weight * batch-hard triplet(embeddings, labels)`."""

    def __init__(
        self,
        label_smoothing: float = 0.0,
        triplet_weight: float = 0.0,
        triplet_margin: float | None = 0.3,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.triplet = BatchHardTripletLoss(triplet_margin) if triplet_weight > 0 else None

    def forward(self, logits: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.ce_weight * self.ce(logits, labels)
        if self.triplet is not None:
            loss = loss + self.triplet_weight * self.triplet(embeddings, labels)
        return loss


__all__ = ["BatchHardTripletLoss", "ReIDLoss"]
