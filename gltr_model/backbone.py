"""Per-frame CNN backbone: a torchvision ResNet cut before its classifier, `layer4` stride 1 by default."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

# name -> (constructor, torchvision weights enum, output channels)
BACKBONES = {
    "resnet18": (models.resnet18, models.ResNet18_Weights, 512),
    "resnet34": (models.resnet34, models.ResNet34_Weights, 512),
    "resnet50": (models.resnet50, models.ResNet50_Weights, 2048),
}


class ResNetBackbone(nn.Module):
    """ResNet trunk (stem + layer1..4) producing a (N, C, h, w) feature map; 256x128 in -> 16x8 out."""

    def __init__(self, name: str = "resnet50", weights: str | Path | None = None, last_stride: int = 1):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}: choose one of {sorted(BACKBONES)}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        build, weights_enum, self.out_channels = BACKBONES[name]
        net = build(weights=_torchvision_weights(weights, weights_enum))
        if weights is not None and _is_file_weights(weights):
            load_imagenet_weights(net, weights)
        if last_stride == 1:
            # Re-ID keeps spatial detail: the first block of layer4 stops downsampling (official GLTR too).
            block = net.layer4[0]
            first_conv = block.conv2 if hasattr(block, "conv3") else block.conv1
            first_conv.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) -> (N, C, H/16, W/16) with last_stride 1
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _is_file_weights(weights: str | Path) -> bool:
    return isinstance(weights, Path) or "/" in str(weights) or str(weights).endswith((".pth", ".pt"))


def _torchvision_weights(weights: str | Path | None, weights_enum):
    """Resolve a torchvision weights name ("DEFAULT", "IMAGENET1K_V2"); file paths load separately."""
    if weights is None or _is_file_weights(weights):
        return None
    try:
        return weights_enum[str(weights)]
    except KeyError:
        names = ", ".join(["DEFAULT", *weights_enum.__members__])
        raise ValueError(f"unknown weights {weights!r}: give a file path to a state dict or one of {names}") from None


def load_imagenet_weights(net: nn.Module, path: str | Path) -> None:
    """Load an ImageNet state dict (e.g. torchvision's resnet50-*.pth) into `net`, ignoring the classifier."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {path} does not exist: download the torchvision ResNet checkpoint "
            "to that path, or train from scratch with weights=None"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: weights of another architecture
        raise ValueError(f"backbone weights {path} do not match the architecture: {e}") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {path} do not match the architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
