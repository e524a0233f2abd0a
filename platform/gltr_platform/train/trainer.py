"""Driver side of a training run: check inputs, open the MLflow run, fit a TorchTrainer, log the results.

`run_training` is what `experiments/train_gltr.py` and every Tune trial call. The order matters for the
"nothing half-written" promise: the dataset and the tracking store are checked before an MLflow run is
created, and once it exists the run always ends FINISHED or FAILED.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from mlflow.tracking import MlflowClient
from ray.train.torch import TorchTrainer

import gltr_model
from gltr_platform.data import s3
from gltr_platform.data.manifest import build_index
from gltr_platform.data.shard_cache import fetch_manifest
from gltr_platform.errors import TrainingFailed
from gltr_platform.train.checkpoint import CheckpointError, load_state
from gltr_platform.train.collectives import NodeBoundTorchConfig
from gltr_platform.train.config import TrainConfig
from gltr_platform.train.datasets import open_training_data
from gltr_platform.train.loop import CHECKPOINT_SCORE, build_model, train_loop_per_worker
from gltr_platform.train.tracking import (
    EpochMetricsLogger,
    check_tracking_store,
    end_run,
    git_commit,
    log_cmc_plot,
    log_json,
    resolve_tracking_uri,
    start_run,
)

RUN_NAME_TAG = "gltr.run_name"
MODEL_URI_TAG = "gltr.model_uri"


@dataclass
class TrainingOutcome:
    run_name: str
    mlflow_run_id: str
    metrics: dict[str, Any]
    checkpoint_path: str
    storage_path: str
    model_uri: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def storage_path(cfg: TrainConfig) -> str:
    """`run.storage_path` with ~ expanded and local paths made absolute (Ray needs absolute paths)."""
    path = cfg.run.storage_path
    if "://" in path:
        return path
    return str(Path(os.path.expanduser(path)).absolute())


def new_run_name() -> str:
    """A readable, unique run name."""
    return f"gltr-{uuid.uuid4().hex[:8]}"


def dataset_tags(cfg: TrainConfig) -> dict[str, str]:
    """Check the dataset on the driver before anything starts, and name its version.

    For s3:// only the manifest is read: the driver (on a cluster, the CPU head) never downloads the
    shards, each training node syncs them once. A local source is opened (and packed into the cache).
    """
    if s3.is_s3_uri(cfg.data.source):
        manifest = fetch_manifest(cfg.data.source, cfg.data.protocol)
        index = build_index(manifest, cfg.data.protocol, cfg.data.split)
        info = {"uri": cfg.data.source, "version": manifest.version_hash}
    else:
        index, _, info = open_training_data(cfg, progress=True)
    if not index.train or not index.query or not index.gallery:
        raise ValueError(f"dataset {cfg.data.source} has an empty train, query or gallery split")
    return {
        "dataset.uri": str(info["uri"]),
        "dataset.version": str(info["version"]),
        "dataset.name": index.name,
        "dataset.train_ids": str(index.num_train_pids),
    }


def run_training(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    callbacks: list | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    log_model: bool = True,
    connect: Callable[[], None] | None = None,
) -> TrainingOutcome:
    """Train `cfg` with Ray Train and record it in MLflow; raises on failure (the run ends FAILED).

    `connect` (e.g. joining the Ray cluster) runs after the inputs are checked and before anything is
    created, so bad input fails in seconds and leaves nothing behind.
    """
    uri = resolve_tracking_uri(cfg.run.tracking_uri)
    check_tracking_store(uri)
    name = cfg.run.name or new_run_name()
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": name})})
    storage = storage_path(cfg)
    tags = {
        RUN_NAME_TAG: name,
        "git.commit": git_commit(),
        "torch.version": torch.__version__,
        "ray.version": ray.__version__,
        "protocol": cfg.data.protocol,
        "preset": cfg.preset,
        "storage_path": storage,
        **dataset_tags(cfg),
        **(extra_tags or {}),
    }
    run_id = existing_run(uri, cfg.run.experiment, name)
    if resume and run_id is None:
        raise ValueError(f"--resume: no MLflow run named {name!r} in experiment {cfg.run.experiment!r} to resume")
    if not resume and run_id is not None:
        raise ValueError(
            f"a run named {name!r} already exists in experiment {cfg.run.experiment!r}: "
            "pass --resume to continue it, or choose another --name"
        )
    if connect is not None:
        connect()
    if run_id is None:
        # The settings, and what they amount to on this many workers (global batch, learning rate used).
        run_id = start_run(uri, cfg.run.experiment, name, {**cfg.flat(), **cfg.derived()}, tags, parent_run_id)
    else:
        MlflowClient(uri).update_run(run_id, status="RUNNING")
    failed = True
    try:
        trainer = build_trainer(cfg, storage, [EpochMetricsLogger(uri, run_id), *(callbacks or [])])
        try:
            result = trainer.fit()
        except ray.train.WorkerGroupError as e:
            damaged = _checkpoint_error(e)
            if damaged is None:
                raise
            raise damaged from e
        except ray.train.ControllerError as e:
            raise TrainingFailed(controller_failure_message(e.controller_failure)) from e
        if result.error:
            raise result.error
        outcome = TrainingOutcome(
            run_name=name,
            mlflow_run_id=run_id,
            metrics=dict(result.metrics or {}),
            checkpoint_path=checkpoint_uri(result.checkpoint) if result.checkpoint else "",
            storage_path=storage,
            tags=tags,
        )
        _log_results(uri, run_id, cfg, outcome, result, log_model)
        failed = False
        return outcome
    finally:
        end_run(uri, run_id, failed)


def build_trainer(cfg: TrainConfig, storage: str, callbacks: list) -> TorchTrainer:
    """The TorchTrainer for `cfg`: gloo on CPU, NCCL on GPU, best-k checkpoints by `loop.checkpoint_score`
    (validation mAP; the newest k when the run has no validation split)."""
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.model_dump(mode="json"),
        torch_config=NodeBoundTorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints,
                checkpoint_score_attribute=CHECKPOINT_SCORE,
                checkpoint_score_order="max",
            ),
            callbacks=callbacks,
        ),
    )


def checkpoint_uri(checkpoint: ray.train.Checkpoint) -> str:
    """Where a checkpoint lives, as a URI `ray.train.Checkpoint(uri)` opens again (s3://... or a path)."""
    fs = checkpoint.filesystem
    if fs is not None and fs.type_name == "s3":
        return f"s3://{checkpoint.path}"
    return checkpoint.path


def existing_run(uri: str, experiment: str, name: str) -> str | None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or not re.fullmatch(r"[\w.\-]+", name):
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    return runs[0].info.run_id if runs else None


def load_trained_model(checkpoint: ray.train.Checkpoint) -> tuple[torch.nn.Module, TrainConfig]:
    """The GLTR model (eval mode, CPU) and its config from a Ray Train checkpoint."""
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
    cfg = TrainConfig.model_validate(state["config"])
    model = build_model(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": None})}),
        state["num_classes"],
    )
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def controller_failure_message(failure: BaseException) -> str:
    """One line for a failed Ray Train controller: what failed (its innermost message) and what to do.

    Ray's own message starts "Training failed due to controller error:" and puts the cause on later
    lines, after a traceback; a one-line error would end at the colon.
    """
    text = str(failure)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t", "Traceback"))]
    cause = lines[-1] if lines else type(failure).__name__
    message = f"Ray Train could not run the worker group: {cause}"
    if "gloo" in text.lower() or "connectfullmesh" in text.lower() or "nccl" in text.lower():
        message += (
            " -- the ranks could not connect to each other: every worker host must reach the others on all TCP "
            "ports (one security group), and GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, if set, must name the "
            "interface holding the node's Ray address"
        )
    return message


def _checkpoint_error(error: ray.train.WorkerGroupError) -> CheckpointError | None:
    """The CheckpointError behind a failed worker group, if that is why it failed.

    Ray's own message keeps a truncated traceback snippet, which can cut off the storage path and
    the advice; a run that cannot resume should say those in full.
    """
    return next((e for e in error.worker_failures.values() if isinstance(e, CheckpointError)), None)


def _log_results(uri: str, run_id: str, cfg: TrainConfig, outcome: TrainingOutcome, result, log_model: bool) -> None:
    metrics = outcome.metrics
    log_json(uri, run_id, cfg.model_dump(mode="json"), "config.json")
    final = {k: v for k, v in metrics.items() if k.startswith(("test_", "val_", "best_"))}
    final.update(epoch=metrics.get("epoch"), protocol=cfg.data.protocol, run_name=outcome.run_name)
    log_json(uri, run_id, final, "final_metrics.json")
    if metrics.get("test_cmc"):
        title = f"CMC, {cfg.data.protocol} protocol (mAP {100 * metrics['test_mAP']:.1f}%)"
        log_cmc_plot(uri, run_id, metrics["test_cmc"], title)
    if log_model and result.checkpoint is not None:
        model, _ = load_trained_model(result.checkpoint)
        outcome.model_uri = log_gltr_model(uri, run_id, model, cfg)
        MlflowClient(uri).set_tag(run_id, MODEL_URI_TAG, outcome.model_uri)


def log_gltr_model(uri: str, run_id: str, model: torch.nn.Module, cfg: TrainConfig) -> str:
    """Log `model` with MLflow's pytorch flavour; returns its models:/ URI."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    example = np.random.default_rng(0).standard_normal((1, cfg.data.seq_len, 3, cfg.data.height, cfg.data.width))
    example = example.astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            signature=infer_signature(example, output),
            # Pickled, not torch.export'ed: an exported program fixes the clip length T at export time,
            # and test tracklets come in every length.
            serialization_format="pickle",
            # Wherever gltr_model lives (a checkout, site-packages, or Ray's py_modules directory).
            code_paths=[str(Path(gltr_model.__file__).resolve().parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )
    mlflow.set_tracking_uri(None)
    return info.model_uri
