"""The dataset a training run reads: `data.source` resolved through the node-local cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gltr_platform.data.cache_root import datasets_cache
from gltr_platform.data.index import DatasetIndex, FrameSource
from gltr_platform.data.resolve import check_spec, open_dataset
from gltr_platform.data.synthetic import SyntheticConfig, ensure_synthetic_mars
from gltr_platform.train.config import TrainConfig

SYNTHETIC = "synthetic"


def synthetic_config(cfg: TrainConfig) -> SyntheticConfig:
    """The synthetic MARS a run on `source = "synthetic"` uses (frames at twice the model's input size)."""
    return SyntheticConfig(
        num_ids=cfg.data.synthetic_ids,
        num_test_ids=cfg.data.synthetic_test_ids,
        num_cameras=3,
        tracklets_per_id=2,
        min_frames=6,
        max_frames=24,
        height=max(32, min(256, cfg.data.height)),
        width=max(16, min(128, cfg.data.width)),
        seed=cfg.train.seed,
    )


def resolve_source(cfg: TrainConfig) -> str:
    """`data.source` as open_dataset takes it: "synthetic" becomes the generated directory in the cache."""
    if cfg.data.source == SYNTHETIC:
        cache = Path(os.path.expanduser(cfg.data.cache_dir))
        return str(ensure_synthetic_mars(cache / "synthetic", synthetic_config(cfg)))
    return cfg.data.source


def check_source(cfg: TrainConfig) -> None:
    """DatasetError now, before Ray or torch start, when `data.source` cannot name a dataset."""
    if cfg.data.source != SYNTHETIC:
        check_spec(cfg.data.source)


def open_training_data(cfg: TrainConfig, progress: bool = False) -> tuple[DatasetIndex, FrameSource, dict[str, Any]]:
    """Index, frame source and info (uri, version hash) of the run's dataset, synced once per node."""
    return open_dataset(
        resolve_source(cfg),
        datasets_cache(cfg.data.cache_dir),
        protocol=cfg.data.protocol,
        split=cfg.data.split,
        progress=progress,
    )
