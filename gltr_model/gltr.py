"""GLTR: Global-Local Temporal Representations for video person re-ID (Li et al., ICCV 2019)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gltr_model.backbone import ResNetBackbone
from gltr_model.dilated_pyramid import DilatedTemporalPyramid
from gltr_model.temporal_attention import TemporalSelfAttention


class GLTR(nn.Module):
    """Backbone per frame -> frame features -> DTP -> TSA -> temporal average pooling -> embedding.

    Input clips are (B, T, 3, H, W) for any T >= 1. In training mode `forward` returns
    `(logits, embedding)`; in eval mode it returns the tracklet embedding only (the one to rank with).
    The head follows the official code (BatchNorm, ReLU, dropout, linear classifier); with `bnneck=True`
    it is a BNNeck (Luo et al. 2019): BatchNorm without bias shift, then a bias-free classifier, and the
    retrieval embedding is the post-BN feature.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: str | Path | None = None,
        last_stride: int = 1,
        frame_dim: int = 128,
        dilations: tuple[int, ...] = (1, 2, 3),
        include_input: bool = True,
        attention_width: int | None = None,
        dropout: float = 0.5,
        bnneck: bool = False,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if frame_dim < 1:
            raise ValueError(f"frame_dim must be >= 1, got {frame_dim}")
        self.backbone = ResNetBackbone(backbone, weights=pretrained, last_stride=last_stride)
        self.frame_proj = nn.Linear(self.backbone.out_channels, frame_dim)
        nn.init.kaiming_normal_(self.frame_proj.weight, mode="fan_out")
        nn.init.zeros_(self.frame_proj.bias)
        self.pyramid = DilatedTemporalPyramid(frame_dim, dilations, include_input)
        self.embed_dim = self.pyramid.out_channels
        self.attention = TemporalSelfAttention(self.embed_dim, attention_width)
        self.bnneck = bnneck
        self.head_bn = nn.BatchNorm1d(self.embed_dim)
        if bnneck:
            self.head_bn.bias.requires_grad_(False)
            self.head = nn.Identity()
        else:
            self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(self.embed_dim, num_classes, bias=not bnneck)
        nn.init.normal_(self.classifier.weight, std=0.001)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)

    def frame_features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) clips -> (B, frame_dim, T) per-frame features."""
        b, t = clips.shape[:2]
        x = clips.flatten(0, 1)  # frames folded into the batch: (B*T, 3, H, W)
        x = self.backbone(x).mean(dim=(2, 3))  # global average pooling: (B*T, C)
        x = self.frame_proj(x)  # (B*T, frame_dim)
        return x.view(b, t, -1).transpose(1, 2)

    def temporal(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, frame_dim, T) frame features -> (B, embed_dim) tracklet embedding (before the head)."""
        x = self.pyramid(frames)  # (B, embed_dim, T): local short/long-term context
        x = self.attention(x)  # (B, embed_dim, T): global relations between frames
        return x.mean(dim=2)  # temporal average pooling

    def forward(self, clips: torch.Tensor):
        if clips.dim() != 5:
            raise ValueError(f"GLTR expects clips of shape (B, T, 3, H, W), got {tuple(clips.shape)}")
        embedding = self.temporal(self.frame_features(clips))
        bn = self.head_bn(embedding)
        if not self.training:
            return bn if self.bnneck else embedding
        logits = self.classifier(self.head(bn))
        return logits, embedding
