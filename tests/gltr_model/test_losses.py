"""Re-ID losses: batch-hard triplet mining and the combined objective."""

import pytest
import torch

from gltr_model import BatchHardTripletLoss, ReIDLoss


def test_triplet_is_zero_when_identities_are_separated_by_more_than_the_margin():
    emb = torch.tensor([[0.0, 0], [0.1, 0], [5.0, 0], [5.1, 0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert BatchHardTripletLoss(margin=0.3)(emb, labels) == 0


def test_triplet_uses_the_hardest_pairs():
    emb = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # (hardest pos, hardest neg) per anchor: (1, 1.5), (1, 0.5), (1.5, 0.5), (1.5, 2)
    # relu(pos - neg + 0.3) = 0, 0.8, 1.3, 0 -> mean 0.525
    assert BatchHardTripletLoss(margin=0.3)(emb, labels).item() == pytest.approx(0.525, abs=1e-5)


def test_soft_margin_triplet_is_positive_and_differentiable():
    emb = torch.randn(8, 4, requires_grad=True)
    loss = BatchHardTripletLoss(margin=None)(emb, torch.arange(4).repeat(2))
    loss.backward()
    assert loss > 0 and emb.grad is not None


def test_batch_without_positives_gives_zero_loss_with_a_gradient_path():
    emb = torch.randn(3, 4, requires_grad=True)
    loss = BatchHardTripletLoss()(emb, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss == 0


def test_reid_loss_adds_the_weighted_triplet_term():
    torch.manual_seed(0)
    logits, emb, labels = torch.randn(4, 3), torch.randn(4, 8), torch.tensor([0, 0, 1, 1])
    ce = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    tri = BatchHardTripletLoss(0.3)(emb, labels)
    loss = ReIDLoss(label_smoothing=0.1, triplet_weight=0.5)(logits, emb, labels)
    assert loss.item() == pytest.approx((ce + 0.5 * tri).item())
    assert ReIDLoss()(logits, emb, labels).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item()
    )
