"""The Dilated Temporal Pyramid sees exactly frames t - r, t and t + r in branch r."""

import pytest
import torch

from gltr_model import DilatedTemporalPyramid


def input_frames_reaching(pyramid, branch: int, t: int, length: int) -> set[int]:
    x = torch.randn(1, 4, length, requires_grad=True)
    out = pyramid.branches[branch](x)
    out[0, :, t].sum().backward()
    return set(torch.nonzero(x.grad[0].abs().sum(dim=0)).flatten().tolist())


@pytest.mark.parametrize("dilations", [(1, 2, 3), (1, 2, 4, 8), (2, 5)])
def test_receptive_field_of_each_branch_is_exactly_its_dilation(dilations):
    pyramid = DilatedTemporalPyramid(4, dilations)
    for conv in pyramid.branches:
        torch.nn.init.uniform_(conv.weight, 0.5, 1.0)  # no accidental zeros hiding a dependency
    length = 20
    for b, r in enumerate(dilations):
        for t in (0, 3, 10, length - 1):
            expected = {s for s in (t - r, t, t + r) if 0 <= s < length}
            assert input_frames_reaching(pyramid, b, t, length) == expected


def test_length_is_kept_and_channels_concatenate_with_the_input():
    x = torch.randn(2, 8, 5)
    with_input = DilatedTemporalPyramid(8, (1, 2, 3))
    assert with_input(x).shape == (2, 32, 5)
    assert torch.equal(with_input(x)[:, :8], x)  # the un-convolved frame features come first
    assert DilatedTemporalPyramid(8, (1, 2, 3), include_input=False)(x).shape == (2, 24, 5)


@pytest.mark.parametrize("t", [1, 2, 3])
def test_clips_shorter_than_the_dilation_keep_their_length(t):
    assert DilatedTemporalPyramid(4, (4, 8))(torch.randn(1, 4, t)).shape == (1, 12, t)
