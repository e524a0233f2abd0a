"""Re-ID evaluation: distance matrices, k-reciprocal re-ranking, and CMC/mAP under the torchreid and official
MARS protocols."""

from gltr_model.evaluation.distance import METRICS, compute_distance_matrix
from gltr_model.evaluation.rank import PROTOCOLS, evaluate_rank, evaluate_rank_reference
from gltr_model.evaluation.rerank import rerank_distances

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "compute_distance_matrix",
    "evaluate_rank",
    "evaluate_rank_reference",
    "rerank_distances",
]
