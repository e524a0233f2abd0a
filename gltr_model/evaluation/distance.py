"""Distances between query and gallery embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")


def compute_distance_matrix(query: torch.Tensor, gallery: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """(Q, D) x (G, D) -> (Q, G) distances of L2-normalised features (official GLTR: Euclidean)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {METRICS}")
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"features must be (N, D) with the same D, got {tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    q = F.normalize(query.float(), dim=1)
    g = F.normalize(gallery.float(), dim=1)
    cosine = q @ g.T
    if metric == "cosine":
        return 1.0 - cosine
    return (2.0 - 2.0 * cosine).clamp_min(0.0).sqrt()  # |q - g| for unit vectors
