"""The training loop's decisions that need no Ray: splits, when to validate, what a checkpoint scores."""

from __future__ import annotations

import pytest

from gltr_platform.data.index import DatasetIndex, Tracklet
from gltr_platform.train import loop
from gltr_platform.train.config import build_config


def two_camera_index(num_ids: int = 12) -> DatasetIndex:
    train = [Tracklet((f"{pid}_{cam}.jpg",), pid, cam, "train") for pid in range(num_ids) for cam in (0, 1)]
    return DatasetIndex("two-camera", train, [], [])


@pytest.fixture
def index(monkeypatch):
    index = two_camera_index()
    monkeypatch.setattr(loop, "open_training_data", lambda cfg: (index, "source", {}))
    return index


def test_without_validation_ids_every_training_identity_is_trained_on(index):
    splits = loop.prepare_splits(build_config("paper"))

    assert splits.train == index.train and not splits.val_query and not splits.val_gallery
    assert sorted(splits.label_map) == list(range(12))


def test_validation_ids_are_held_out_of_training(index):
    splits = loop.prepare_splits(build_config("cpu-demo", {"data.val_ids": 3}))

    held = {t.pid for t in splits.val_query}
    assert len(held) == 3 and not held & {t.pid for t in splits.train}
    assert sorted(splits.label_map) == sorted({t.pid for t in splits.train})


def test_validation_runs_every_eval_every_epochs_and_after_the_last():
    cfg = build_config("cpu-demo", {"train.epochs": 25, "train.eval_every": 10})

    assert [e for e in range(1, 26) if loop.validates(cfg, e)] == [10, 20, 25]


def test_without_a_validation_split_no_epoch_validates():
    cfg = build_config("paper", {"train.epochs": 25, "train.eval_every": 10})

    assert not any(loop.validates(cfg, e) for e in range(1, 26))


def test_checkpoints_score_their_validation_map_and_unvalidated_epochs_go_first():
    cfg = build_config("cpu-demo")

    assert loop.checkpoint_score(cfg, 10, 0.42) == 0.42
    assert loop.checkpoint_score(cfg, 11, None) == -1.0
    assert loop.checkpoint_score(cfg, 11, None) < loop.checkpoint_score(cfg, 10, 0.0)


def test_without_validation_checkpoints_score_their_epoch_so_the_newest_are_kept():
    cfg = build_config("paper")
    scores = [loop.checkpoint_score(cfg, epoch, None) for epoch in range(1, 501)]

    assert scores == sorted(scores) and len(set(scores)) == 500
    kept = sorted(range(1, 501), key=lambda e: scores[e - 1])[-cfg.run.keep_checkpoints :]
    assert kept == [499, 500]
