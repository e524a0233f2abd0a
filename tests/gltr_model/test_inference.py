"""Test-time embeddings of whole tracklets, chunks and evenly sampled frames."""

import pytest
import torch
from torch import nn

from gltr_model import GLTR, embed_tracklet, evenly_spaced


class FrameMean(nn.Module):
    """A model whose clip embedding is the mean of per-frame features: chunking must not change it."""

    def forward(self, clips):
        return clips.mean(dim=(1, 3, 4))


def test_chunks_average_to_the_whole_tracklet_for_a_frame_mean_model():
    frames = torch.randn(23, 3, 4, 2)
    whole = embed_tracklet(FrameMean(), frames, "whole")
    assert torch.allclose(embed_tracklet(FrameMean(), frames, "chunks", chunk_len=5), whole, atol=1e-6)


def test_one_chunk_is_the_whole_tracklet_for_gltr():
    model = GLTR(3, backbone="resnet18", frame_dim=8).eval()
    frames = torch.randn(6, 3, 64, 32)
    whole = embed_tracklet(model, frames, "whole")
    assert whole.shape == (32,)
    assert torch.allclose(embed_tracklet(model, frames, "chunks", chunk_len=6), whole)


def test_evenly_spaced_covers_the_tracklet_and_repeats_short_ones():
    assert evenly_spaced(9, 3).tolist() == [0, 4, 8]
    assert evenly_spaced(2, 4).tolist() == [0, 0, 1, 1]
    assert evenly_spaced(1, 3).tolist() == [0, 0, 0]


def test_evenly_mode_feeds_seq_len_frames():
    seen = []

    class Spy(FrameMean):
        def forward(self, clips):
            seen.append(clips.shape[1])
            return super().forward(clips)

    embed_tracklet(Spy(), torch.randn(50, 3, 4, 2), "evenly", seq_len=8)
    assert seen == [8]


@pytest.mark.parametrize("mode", ["all", ""])
def test_unknown_mode_is_rejected(mode):
    with pytest.raises(ValueError, match="unknown test mode"):
        embed_tracklet(FrameMean(), torch.randn(2, 3, 4, 2), mode)
