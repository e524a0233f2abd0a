"""A damaged checkpoint in a run's storage, on a real local Ray cluster with one gloo worker.

`--resume` skips a damaged latest checkpoint and continues from the newest earlier one that loads,
training the lost epochs again; when none loads it fails with one error that says where and what to do.
Both tests share one short training run (a Ray Train worker group costs ~20 s to start here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from gltr_platform.train.checkpoint import STATE_FILE, CheckpointError, load_state
from gltr_platform.train.config import TrainConfig, build_config
from gltr_platform.train.trainer import run_training

EPOCHS = 3


class RecordReports(UserCallback):
    """Writes every report's rank-0 metrics to a JSON-lines file (the controller runs elsewhere)."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"metrics": metrics[0], "checkpoint": checkpoint.path if checkpoint else None}) + "\n")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[TrainConfig, Path, Path]:
    """A finished 3-epoch run; its config, checkpoint storage and the file its reports went to."""
    base = tmp_path_factory.mktemp("faults")
    cfg = build_config(
        "cpu-demo",
        {
            "data.source": "synthetic",
            "data.synthetic_ids": 16,
            "data.synthetic_test_ids": 4,
            "data.cache_dir": str(base / "cache"),
            "run.storage_path": str(base / "checkpoints"),
            "run.tracking_uri": f"sqlite:///{base / 'mlflow.db'}",
            "run.name": "faulty",
            "run.keep_checkpoints": 2,  # only the last epoch is validated: Ray keeps epochs 2 and 3
            "run.max_failures": 0,
            "train.epochs": EPOCHS,
            "train.eval_every": 10,
        },
    )
    reports = base / "reports.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ray.init(address="local", num_cpus=2, _temp_dir=str(base / "ray"), include_dashboard=False)
        try:
            run_training(cfg, callbacks=[RecordReports(str(reports))], log_model=False)
            yield cfg, base / "checkpoints" / "faulty", reports
        finally:
            ray.shutdown()


def with_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})


def truncate(state_file: Path) -> None:
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 2])


def loss_history(cfg: TrainConfig, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(cfg.run.tracking_uri).get_metric_history(run_id, "loss"))


def worker_log_lines(storage: Path, text: str) -> list[str]:
    """Lines containing `text` in the stderr of every Ray worker of this module's cluster."""
    logs = (storage.parents[1] / "ray").glob("session_*/logs/worker-*.err")
    return [line for log in logs for line in log.read_text(errors="replace").splitlines() if text in line]


def test_a_truncated_latest_checkpoint_is_skipped_and_its_epoch_trained_again(first_run):
    cfg, storage, reports = first_run
    before = len(reports.read_text().splitlines())
    damaged = storage / f"epoch-{EPOCHS:04d}"
    truncate(damaged / STATE_FILE)

    outcome = run_training(with_epochs(cfg, EPOCHS + 2), resume=True, log_model=False,
                           callbacks=[RecordReports(str(reports))])  # fmt: skip

    resumed = [json.loads(line) for line in reports.read_text().splitlines()[before:]]
    # Fell back to epoch 2 (the newest that loads), so epoch 3 was trained again, then 4 and 5.
    assert [r["metrics"]["epoch"] for r in resumed] == [EPOCHS, EPOCHS + 1, EPOCHS + 2]
    warnings = worker_log_lines(storage, "is damaged")
    assert warnings and all(str(damaged) in w and "resuming from epoch-0002 instead" in w for w in warnings)
    # The re-trained epoch is checkpointed beside the damaged one, never over it: Ray Train deletes an
    # evicted checkpoint by path, and the damaged one is still in its books.
    assert Path(resumed[0]["checkpoint"]).name == f"epoch-{EPOCHS:04d}-1"
    assert load_state(outcome.checkpoint_path)["epoch"] == EPOCHS + 2
    # One value per epoch in MLflow: the re-trained epoch is not logged a second time. Its first value
    # stands, and it is the same number, because a resume restores every RNG and the sampler exactly.
    history = loss_history(cfg, outcome.mlflow_run_id)
    assert [step for step, _ in history] == list(range(1, EPOCHS + 3))
    assert dict(history)[EPOCHS] == pytest.approx(resumed[0]["metrics"]["loss"], rel=1e-6)
    assert MlflowClient(cfg.run.tracking_uri).get_run(outcome.mlflow_run_id).info.status == "FINISHED"


def test_resume_fails_with_one_clear_error_when_no_checkpoint_loads(first_run):
    cfg, storage, _ = first_run
    for state_file in storage.glob(f"epoch-*/{STATE_FILE}"):
        truncate(state_file)

    with pytest.raises(CheckpointError, match="no checkpoint in the run's storage") as caught:
        run_training(with_epochs(cfg, EPOCHS + 4), resume=True, log_model=False)

    assert str(storage) in str(caught.value) and "new name" in str(caught.value)
    client = MlflowClient(cfg.run.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.run.experiment).experiment_id])[0]
    assert run.info.status == "FAILED"
