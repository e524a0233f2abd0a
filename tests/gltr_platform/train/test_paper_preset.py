"""The `paper` preset is the official GLTR code's recipe, item by item (docs/paper-recipe.md cites each source).

Every item of the table in docs/paper-recipe.md is pinned here, on the configuration and, where the
config alone could hide a difference, on what the training loop builds from it (loader, transform,
optimizer, learning-rate schedule, precision).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gltr_platform.data.index import DatasetIndex, Tracklet
from gltr_platform.data.tracklet_sampler import DistributedTrackletSampler
from gltr_platform.train.config import PRESETS, build_config
from gltr_platform.train.loop import Splits, amp_dtype, build_loader, build_optimizer, build_scheduler

MARS_TRAIN_TRACKLETS, MARS_TRAIN_IDS = 8298, 625


@pytest.fixture(scope="module")
def paper():
    return build_config("paper")


def mars_shaped_splits() -> Splits:
    """Splits with MARS's training-set shape (8,298 tracklets of 625 identities); no frame is ever read."""
    train = [Tracklet((f"{i}.jpg",), i % MARS_TRAIN_IDS, i % 6, "train") for i in range(MARS_TRAIN_TRACKLETS)]
    index = DatasetIndex("mars-shaped", train, [], [])
    return Splits(train, [], [], index, {pid: pid for pid in range(MARS_TRAIN_IDS)}, source=None)


def test_backbone_is_resnet50_from_imagenet_weights(paper):
    assert paper.model.backbone == "resnet50" and paper.model.pretrained == "IMAGENET1K_V1"


def test_frames_are_256x128_clips_of_16_consecutive_frames(paper):
    assert (paper.data.height, paper.data.width) == (256, 128)
    assert paper.data.seq_len == 16 and paper.data.sampling == "consecutive"


def test_an_epoch_is_every_training_tracklet_once_shuffled_in_batches_of_10(paper):
    assert paper.data.sampler == "tracklets"
    assert paper.train.batch_size == 10 and paper.train.num_instances == 1

    loader = build_loader(paper, mars_shaped_splits())

    assert isinstance(loader.sampler.sampler, DistributedTrackletSampler)
    assert loader.batch_size == 10 and not loader.drop_last
    assert len(loader) == 830  # ceil(8298 / 10), the official epoch on MARS


def test_training_lasts_500_epochs(paper):
    assert paper.train.epochs == 500


def test_sgd_lr_001_momentum_09_weight_decay_5e4_times_01_every_120_epochs(paper):
    assert paper.optim.optimizer == "sgd" and paper.optim.warmup_epochs == 0
    optimizer = build_optimizer(paper, nn.Linear(2, 2))
    scheduler = build_scheduler(paper, optimizer)
    [group] = optimizer.param_groups

    assert group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    lrs = {}
    for epoch in range(1, paper.train.epochs + 1):  # as the loop does: the lr of an epoch, then step
        lrs[epoch] = scheduler.get_last_lr()[0]
        optimizer.step()  # no gradients: changes nothing, but orders the calls as training does
        scheduler.step()
    for epoch, lr in lrs.items():  # official: base_lr * gamma ** (epoch // step_size), epoch from 0
        assert lr == pytest.approx(0.01 * 0.1 ** ((epoch - 1) // 120))
    assert (lrs[120], lrs[121], lrs[481], lrs[500]) == pytest.approx((0.01, 0.001, 1e-6, 1e-6))


def test_loss_is_plain_cross_entropy(paper):
    assert paper.optim.label_smoothing == 0 and paper.optim.triplet_weight == 0
    assert paper.model.bnneck is False


def test_augmentation_is_resize_and_imagenet_normalisation_only(paper):
    assert (paper.data.flip_p, paper.data.pad, paper.data.erase_p) == (0, 0, 0)

    transform = build_loader(paper, mars_shaped_splits()).dataset.transform

    assert transform.augment is None  # no flip, no pad-crop, no erasing: resize, then normalize_clip


def test_every_training_identity_is_trained_on_and_there_is_no_validation_split(paper):
    assert paper.data.val_ids == 0


def test_test_tracklets_are_embedded_whole_in_one_pass(paper):
    assert paper.data.test_mode == "whole"


def test_training_runs_in_fp32(paper):
    assert paper.train.amp == "off"
    assert amp_dtype(paper, torch.device("cuda")) is None and amp_dtype(paper, torch.device("cpu")) is None


def test_the_learning_rate_is_not_scaled_by_default_and_the_global_batch_is_workers_x_10(paper):
    assert paper.optim.scale_lr == "none"
    four = build_config("paper", {"scaling.num_workers": 4})

    assert four.derived() == {"train.global_batch_size": 40, "optim.effective_lr": 0.01}


def test_linear_scaling_multiplies_the_learning_rate_by_the_workers():
    cfg = build_config("paper", {"scaling.num_workers": 4, "optim.scale_lr": "linear"})
    [group] = build_optimizer(cfg, nn.Linear(2, 2)).param_groups

    assert group["lr"] == pytest.approx(0.04)
    assert cfg.derived() == {"train.global_batch_size": 40, "optim.effective_lr": pytest.approx(0.04)}


def test_modern_keeps_pk_sampling_validation_and_mixed_precision():
    modern = build_config("modern")

    assert modern.data.sampler == "pk" and modern.train.num_instances == 4
    assert modern.data.val_ids == 8 and modern.train.amp == "auto"  # auto: bf16 on GPUs that have it
    assert "amp" not in PRESETS["modern"]["train"]
