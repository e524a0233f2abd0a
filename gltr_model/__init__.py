"""GLTR for video person re-ID in pure PyTorch: the model, its losses and the evaluation protocol."""

from gltr_model.backbone import BACKBONES, ResNetBackbone
from gltr_model.dilated_pyramid import DilatedTemporalPyramid
from gltr_model.gltr import GLTR
from gltr_model.inference import embed_tracklet, evenly_spaced
from gltr_model.losses import BatchHardTripletLoss, ReIDLoss
from gltr_model.temporal_attention import TemporalSelfAttention

__all__ = [
    "BACKBONES",
    "GLTR",
    "BatchHardTripletLoss",
    "DilatedTemporalPyramid",
    "ReIDLoss",
    "ResNetBackbone",
    "TemporalSelfAttention",
    "embed_tracklet",
    "evenly_spaced",
]
