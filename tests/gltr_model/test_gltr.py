"""GLTR end to end: shapes for any clip length, train/eval outputs, gradients to the backbone."""

import pytest
import torch

from gltr_model import GLTR

H, W = 64, 32


def tiny(num_classes=5, **kw):
    return GLTR(num_classes, backbone="resnet18", frame_dim=16, **kw)


@pytest.mark.parametrize(
    ("t", "dilations", "width"),
    [
        (1, (1, 2, 3), 8),
        (2, (1, 2, 3), 32),
        (4, (2, 4, 8), 16),
        (8, (1, 2, 4, 8), 1),
        (5, (3,), 64),
    ],
)
def test_embedding_shape_follows_branches_for_any_clip_length(t, dilations, width):
    model = tiny(dilations=dilations, attention_width=width).eval()
    with torch.no_grad():
        emb = model(torch.randn(3, t, 3, H, W))
    assert emb.shape == (3, 16 * (len(dilations) + 1))
    assert torch.isfinite(emb).all()


def test_official_configuration_gives_a_512_d_embedding_and_16x8_maps():
    model = GLTR(625, backbone="resnet50")
    assert model.embed_dim == 4 * 128
    assert model.attention.width == 256
    with torch.no_grad():
        assert model.backbone(torch.randn(1, 3, 256, 128)).shape == (1, 2048, 16, 8)


def test_clip_shorter_than_the_largest_dilation_is_fine():
    model = tiny(dilations=(2, 4, 8)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 3, H, W)).shape == (2, 64)


def test_training_returns_logits_and_embedding_eval_returns_embedding():
    model = tiny(num_classes=7)
    logits, emb = model.train()(torch.randn(2, 3, 3, H, W))
    assert logits.shape == (2, 7) and emb.shape == (2, 64)
    out = model.eval()(torch.randn(2, 3, 3, H, W))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 64)


def test_bnneck_retrieves_with_the_normalised_feature():
    model = tiny(bnneck=True).eval()
    x = torch.randn(2, 3, 3, H, W)
    with torch.no_grad():
        raw = model.temporal(model.frame_features(x))
        assert torch.allclose(model(x), model.head_bn(raw))
    assert model.classifier.bias is None and not model.head_bn.bias.requires_grad


def test_gradients_reach_the_backbone():
    model = tiny()
    logits, _ = model(torch.randn(2, 4, 3, H, W))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    first_conv = model.backbone.stem[0].weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0


def test_wrong_input_rank_is_explained():
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        tiny()(torch.randn(2, 3, H, W))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dilations": (0, 1)}, "positive integers"),
        ({"dilations": (1, -2)}, "positive integers"),
        ({"dilations": (1.5, 2)}, "positive integers"),
        ({"dilations": (1, 1)}, "distinct"),
        ({"attention_width": 0}, "width"),
        ({"backbone": "vgg"}, "unknown backbone"),
    ],
)
def test_invalid_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GLTR(3, **{"backbone": "resnet18", **kwargs})
