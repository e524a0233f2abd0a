"""Temporal Self-Attention starts as the identity and is equivariant to the order of frames."""

import torch

from gltr_model import TemporalSelfAttention


def test_identity_at_initialisation():
    tsa = TemporalSelfAttention(16, width=8)
    x = torch.randn(3, 16, 7)
    assert torch.equal(tsa.train()(x), x)
    assert torch.equal(tsa.eval()(x), x)


def test_width_defaults_to_half_the_channels():
    assert TemporalSelfAttention(512).width == 256


def test_permuting_frames_permutes_the_output():
    torch.manual_seed(0)
    tsa = TemporalSelfAttention(16, width=8).eval()
    torch.nn.init.normal_(tsa.out[1].weight)  # leave the identity so the test means something
    x = torch.randn(2, 16, 6)
    perm = torch.randperm(6)
    out = tsa(x)
    assert not torch.allclose(out, x)
    assert torch.allclose(tsa(x[:, :, perm]), out[:, :, perm], atol=1e-6)


def test_every_frame_attends_to_every_other_frame():
    torch.manual_seed(0)
    tsa = TemporalSelfAttention(8, width=4).eval()
    torch.nn.init.normal_(tsa.out[1].weight)
    x = torch.randn(1, 8, 5, requires_grad=True)
    tsa(x)[0, :, 0].sum().backward()
    assert (x.grad[0].abs().sum(dim=0) > 0).all()  # global, unlike the pyramid's local branches
