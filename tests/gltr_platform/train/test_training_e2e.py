"""End to end on a real local Ray cluster: two gloo workers train GLTR on synthetic data read from the
loopback S3 endpoint, checkpoint to S3, survive a worker process killed with SIGKILL mid-epoch, and
record it all in MLflow.

One training run is shared by every test in this module (a Ray Train worker group costs ~20-30 s to
start here); a second, short run resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import mlflow
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.train import UserCallback
from ray.util.state import list_actors

from gltr_platform.data.pack import pack
from gltr_platform.data.synthetic import SyntheticConfig, generate_synthetic_mars
from gltr_platform.train.config import build_config
from gltr_platform.train.trainer import load_trained_model, run_training

SECRET = "sEcReT-never-log-me-8c1f"  # the AWS secret key of this test: must appear nowhere
EPOCHS = 24
WORKER_CLASS = "RayTrainWorker"  # the actor Ray Train runs train_loop_per_worker in
STEP_TIMEOUT_S = 600  # generous bound on each wait below; a healthy run needs a fraction of it


class RecordAllRanks(UserCallback):
    """Writes every rank's reported metrics, and when they arrived, to a JSON-lines file.

    The controller calls it after the epoch's metrics are in MLflow and its checkpoint is persisted.
    """

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"at": time.time(), "ranks": metrics}) + "\n")


@dataclass
class Kill:
    """The SIGKILL the shared run survived: which worker process, when, and how far training had got."""

    pid: int
    at: float
    epochs_reported: int


def read_reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_and_kill_a_worker_mid_epoch(cfg, record: Path):
    """Run `cfg`; once epoch 1 is logged and checkpointed, SIGKILL one Ray Train worker process."""
    done: dict = {}

    def train() -> None:
        try:
            done["outcome"] = run_training(cfg, callbacks=[RecordAllRanks(str(record))])
        except BaseException as e:  # handed to the test thread below
            done["error"] = e

    thread = threading.Thread(target=train, name="run_training", daemon=True)
    thread.start()
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not read_reports(record):
        assert thread.is_alive(), f"training ended before epoch 1 was reported: {done}"
        assert time.monotonic() < deadline, f"epoch 1 was not reported within {STEP_TIMEOUT_S} s"
        thread.join(timeout=0.5)
    # Epoch 2 is running now: every worker has reported epoch 1, and EPOCHS is far off.
    workers = list_actors(filters=[("class_name", "=", WORKER_CLASS), ("state", "=", "ALIVE")], detail=True)
    assert len(workers) == cfg.scaling.num_workers, workers
    pid = workers[-1].pid
    kill = Kill(pid=pid, at=time.time(), epochs_reported=len(read_reports(record)))
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=STEP_TIMEOUT_S * 2)
    assert not thread.is_alive(), f"training did not finish within {STEP_TIMEOUT_S * 2} s of the SIGKILL"
    if "error" in done:
        raise done["error"]
    return done["outcome"], kill


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    """AWS env pointing at the loopback endpoint *before* Ray starts (workers inherit it), then Ray."""
    base = tmp_path_factory.mktemp("e2e")
    empty = base / "empty-aws-config"
    empty.write_text("")
    env = {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "AKIATESTEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_CONFIG_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ray.init(address="local", num_cpus=2, _temp_dir=str(base / "ray"), include_dashboard=True)
        try:
            yield base
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def trained(cluster):
    base = cluster
    s3 = boto3.session.Session().client("s3")
    s3.create_bucket(Bucket="e2e")
    raw = generate_synthetic_mars(
        base / "raw", SyntheticConfig(num_ids=32, num_test_ids=8, num_cameras=3, max_frames=16, seed=1)
    )
    pack(raw, "s3://e2e/datasets/synth", progress=False)
    record = base / "ranks.jsonl"
    cfg = build_config(
        "cpu-demo",
        {
            "data.source": "s3://e2e/datasets/synth",
            "data.cache_dir": str(base / "cache"),
            "data.rerank": True,
            "run.storage_path": "s3://e2e/checkpoints",
            "run.tracking_uri": f"sqlite:///{base / 'mlflow.db'}",
            "run.name": "e2e-run",
            "run.max_failures": 1,
            "run.keep_checkpoints": 2,
            "scaling.num_workers": 2,
            "train.epochs": EPOCHS,
            "train.eval_every": 6,
        },
    )
    outcome, kill = train_and_kill_a_worker_mid_epoch(cfg, record)
    return cfg, outcome, read_reports(record), kill


def history(outcome, cfg, key):
    client = MlflowClient(cfg.run.tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(outcome.mlflow_run_id, key))


def test_both_ranks_end_with_identical_parameters(trained):
    _, _, reports, _ = trained
    last = reports[-1]["ranks"]
    assert len(last) == 2 and last[0]["epoch"] == last[1]["epoch"] == EPOCHS
    assert last[0]["param_checksum"] == last[1]["param_checksum"]


def test_loss_decreases_and_validation_beats_chance(trained):
    cfg, outcome, *_ = trained
    losses = [v for _, v in history(outcome, cfg, "loss")]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    chance = 1 / cfg.data.val_ids  # one query per held-out identity, all of them in the gallery
    assert outcome.metrics["val_rank1"] >= 3 * chance
    assert 0.0 <= outcome.metrics["test_mAP"] <= 1.0 and "test_rank20" in outcome.metrics
    assert 0.0 <= outcome.metrics["test_mAP_rerank"] <= 1.0 and "test_rank1_rerank" in outcome.metrics


def test_a_worker_killed_mid_epoch_is_replaced_and_the_run_resumes_from_its_last_checkpoint(trained):
    cfg, outcome, reports, kill = trained
    workers = list_actors(filters=[("class_name", "=", WORKER_CLASS)], detail=True, limit=1000)
    killed = [w for w in workers if w.pid == kill.pid]
    assert len(killed) == 1 and killed[0].state == "DEAD"
    assert len(workers) >= 2 * cfg.scaling.num_workers  # a second worker group took over
    # Each epoch reported once, in order: the group that took over started from the last checkpoint,
    # not from scratch, and the epoch the kill interrupted was trained again exactly once.
    assert [r["ranks"][0]["epoch"] for r in reports] == list(range(1, EPOCHS + 1))
    assert 1 <= kill.epochs_reported < EPOCHS - 1  # killed while a later epoch was training, not between runs
    assert reports[kill.epochs_reported]["at"] > kill.at  # the epoch it interrupted was reported after it
    assert MlflowClient(cfg.run.tracking_uri).get_run(outcome.mlflow_run_id).info.status == "FINISHED"
    assert outcome.model_uri  # and the final model was logged


def test_every_epoch_is_logged_to_mlflow_exactly_once_despite_the_kill(trained):
    cfg, outcome, *_ = trained
    assert [step for step, _ in history(outcome, cfg, "loss")] == list(range(1, EPOCHS + 1))
    assert [step for step, _ in history(outcome, cfg, "val_mAP")] == list(range(6, EPOCHS + 1, 6))


def test_checkpoints_live_in_s3_and_only_the_best_are_kept(trained):
    cfg, outcome, *_ = trained
    keys = [o["Key"] for o in boto3.session.Session().client("s3").list_objects_v2(Bucket="e2e")["Contents"]]
    states = sorted(k for k in keys if k.startswith("checkpoints/e2e-run/") and k.endswith("/state.pt"))
    assert f"checkpoints/e2e-run/epoch-{EPOCHS:04d}/state.pt" in states  # the latest is always kept
    assert len(states) <= cfg.run.keep_checkpoints + 1
    assert outcome.checkpoint_path.endswith(f"epoch-{EPOCHS:04d}")


def test_mlflow_run_holds_config_tags_artifacts_and_ends_finished(trained):
    cfg, outcome, *_ = trained
    client = MlflowClient(cfg.run.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "e2e-run"
    assert run.data.params["model.dilations"] == "1,2,3"
    assert run.data.params["data.source"] == "s3://e2e/datasets/synth"
    # What the settings amount to on 2 workers: the global batch and the learning rate the optimizer used.
    assert run.data.params["train.global_batch_size"] == str(2 * cfg.train.batch_size)
    assert run.data.params["optim.effective_lr"] == str(cfg.effective_lr)
    tags = run.data.tags
    for key in ("git.commit", "dataset.version", "dataset.uri", "torch.version", "ray.version", "protocol"):
        assert tags.get(key), key
    assert tags["protocol"] == "official" and tags["dataset.uri"] == "s3://e2e/datasets/synth"
    artifacts = {a.path for a in client.list_artifacts(outcome.mlflow_run_id)}
    assert {"config.json", "final_metrics.json", "cmc.png"} <= artifacts
    final = json.loads(Path(client.download_artifacts(outcome.mlflow_run_id, "final_metrics.json")).read_text())
    assert final["protocol"] == "official" and final["test_mAP"] == pytest.approx(outcome.metrics["test_mAP"])


def test_logged_model_gives_the_same_embeddings_as_the_checkpoint(trained):
    cfg, outcome, *_ = trained
    mlflow.set_tracking_uri(cfg.run.tracking_uri)
    logged = mlflow.pytorch.load_model(outcome.model_uri).eval()
    trained_model, _ = load_trained_model(ray.train.Checkpoint(outcome.checkpoint_path))
    clips = torch.randn(2, 5, 3, cfg.data.height, cfg.data.width)  # any clip length works
    with torch.no_grad():
        assert torch.allclose(logged(clips), trained_model(clips), atol=1e-6)


def test_no_secret_in_params_tags_or_artifacts(trained):
    cfg, outcome, *_ = trained
    client = MlflowClient(cfg.run.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    texts = [json.dumps(run.data.params), json.dumps(run.data.tags)]
    local = Path(client.download_artifacts(outcome.mlflow_run_id, ""))
    texts += [p.read_bytes().decode("latin-1") for p in local.rglob("*") if p.is_file()]
    assert not any(SECRET in t for t in texts)
    assert SECRET in os.environ["AWS_SECRET_ACCESS_KEY"]  # it really was in the environment


def test_resume_continues_the_same_run_from_its_last_checkpoint(trained):
    cfg, outcome, *_ = trained
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": EPOCHS + 2})})
    resumed = run_training(more, resume=True, log_model=False)
    assert resumed.mlflow_run_id == outcome.mlflow_run_id
    assert [step for step, _ in history(resumed, cfg, "loss")] == list(range(1, EPOCHS + 3))
    assert MlflowClient(cfg.run.tracking_uri).get_run(resumed.mlflow_run_id).info.status == "FINISHED"


def test_evaluate_cli_scores_a_registered_model_like_the_run_did(trained):
    cfg, outcome, *_ = trained
    mlflow.set_tracking_uri(cfg.run.tracking_uri)
    version = mlflow.register_model(outcome.model_uri, "e2e-gltr").version
    mlflow.MlflowClient().set_registered_model_alias("e2e-gltr", "champion", version)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[3] / "experiments" / "evaluate.py"),
         "--model", "models:/e2e-gltr@champion", "--data", "s3://e2e/datasets/synth",
         "--tracking-uri", cfg.run.tracking_uri, "--cache-dir", cfg.data.cache_dir, "--device", "cpu",
         "--rerank", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["protocol"] == "official"
    assert scores["mAP"] == pytest.approx(outcome.metrics["test_mAP"], abs=1e-4)  # same model, data, protocol
    assert scores["mAP_rerank"] == pytest.approx(outcome.metrics["test_mAP_rerank"], abs=1e-4)
    assert "re-ranked (k-reciprocal)" in result.stdout
