"""ImageNet weights load from a local file; nothing is downloaded unless asked by name."""

import pytest
import torch
from torchvision import models

from gltr_model import ResNetBackbone


def test_weights_load_from_a_state_dict_file(tmp_path):
    reference = models.resnet18()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone("resnet18", weights=path)
    assert torch.equal(backbone.stem[0].weight, reference.conv1.weight)
    assert torch.equal(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_missing_weights_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResNetBackbone("resnet18", weights=tmp_path / "nope.pth")


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(models.resnet50().state_dict(), path)
    with pytest.raises(ValueError, match="do not match"):
        ResNetBackbone("resnet18", weights=path)


def test_unknown_weights_name_lists_the_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        ResNetBackbone("resnet18", weights="IMAGENET_PLEASE")


@pytest.mark.parametrize(("last_stride", "size"), [(1, (16, 8)), (2, (8, 4))])
def test_last_stride_sets_the_feature_map_size(last_stride, size):
    backbone = ResNetBackbone("resnet18", last_stride=last_stride)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 256, 128)).shape[2:] == size
