"""Distances on L2-normalised features."""

import pytest
import torch

from gltr_model.evaluation import compute_distance_matrix


def test_euclidean_distance_of_normalised_features():
    q, g = torch.randn(4, 8), torch.randn(6, 8)
    expected = torch.cdist(torch.nn.functional.normalize(q), torch.nn.functional.normalize(g))
    assert torch.allclose(compute_distance_matrix(q, g), expected, atol=1e-5)


def test_cosine_distance_ignores_scale():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[5.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    assert torch.allclose(compute_distance_matrix(q, g, "cosine"), torch.tensor([[0.0, 1.0, 2.0]]))


def test_mismatched_feature_sizes_are_rejected():
    with pytest.raises(ValueError, match="same D"):
        compute_distance_matrix(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="unknown metric"):
        compute_distance_matrix(torch.randn(2, 3), torch.randn(2, 3), "manhattan")
