"""Re-ID evaluation: distance matrices and CMC/mAP under the torchreid and official MARS protocols."""

from gltr_model.evaluation.distance import METRICS, compute_distance_matrix
from gltr_model.evaluation.rank import PROTOCOLS, evaluate_rank, evaluate_rank_reference

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "compute_distance_matrix",
    "evaluate_rank",
    "evaluate_rank_reference",
]
