"""MLflow for a training run: one run per training run, opened and closed by the driver.

Per-epoch metrics reach MLflow through `EpochMetricsLogger`, a Ray Train callback on the controller that
sees rank 0's metrics after Ray has registered the epoch's checkpoint. After a worker failure Ray resumes
from a registered checkpoint, so an epoch is logged once even when it is trained twice; a guard on the
last logged step keeps the series contiguous even if Ray resumes from an older checkpoint.

A tracking server that restarts mid-run loses nothing: every call here goes through MLflow's HTTP client,
which retries refused, dropped and 5xx requests of every method 7 times with exponential backoff (0, 4, 8,
... 120 s: about 4 minutes; MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR / _TIMEOUT change it). The
defaults hold in every process that logs (the driver, Tune trials, Ray Train controllers), so nothing needs
to travel to the Ray workers; a setting in the driver's environment reaches them when it starts a local
Ray, and on a cluster belongs in the nodes' environment. tests/gltr_platform/tune/test_tracking_restart.py
restarts the server during a sweep.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from gltr_platform.errors import TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SECRET_PATTERN = re.compile(
    r"(secret|password|passwd|token|access_?key|session_?key|api_?key|private_?key|credential)", re.IGNORECASE
)
NOT_LOGGED_PER_EPOCH = {"epoch", "test_cmc", "param_checksum", "host"}
HOSTS_TAG = "gltr.hosts"  # the node address of every rank, rank 0 first


def resolve_tracking_uri(flag: str | None = None) -> str:
    """The flag, else $MLFLOW_TRACKING_URI, else MLflow's own default (sqlite:///mlflow.db in the cwd)."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Relative sqlite paths would point somewhere else on every Ray worker: make it absolute.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).absolute())
    return uri


def redact_uri(uri: str) -> str:
    """The URI with any user:password@ removed, for messages and tags."""
    return re.sub(r"//[^/@]*@", "//", uri)


def check_tracking_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training starts, when the tracking store is unreachable."""
    if uri.startswith(("http://", "https://")):
        try:
            # Without user:password@ (urllib would read it as part of the host); /health needs no login.
            with urllib.request.urlopen(redact_uri(uri).rstrip("/") + "/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow server {redact_uri(uri)} answered {response.status} on /health")
        except urllib.error.HTTPError as e:
            if e.code not in (401, 403):  # an auth-enabled server still proves it is up
                raise TrackingError(f"MLflow server {redact_uri(uri)} answered HTTP {e.code} on /health") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"cannot reach the MLflow tracking server {redact_uri(uri)} ({reason}): start it, or set "
                "MLFLOW_TRACKING_URI / --tracking-uri to a reachable server"
            ) from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise TrackingError(f"MLflow sqlite store {uri}: directory {parent} is missing or not writable")


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow strings, refusing anything that looks like a secret."""
    out = {}
    for key, value in params.items():
        if SECRET_PATTERN.search(key):
            continue
        text = "" if value is None else str(value)
        if isinstance(value, str) and "://" in text:
            text = redact_uri(text)
        out[key] = text[:6000]
    return out


def git_commit() -> str:
    """The commit of the code being run, or "unknown" outside a git checkout."""
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Create the run (status RUNNING) with params and tags; return its id."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp else client.create_experiment(experiment)
    all_tags = {"mlflow.runName": run_name, **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    items = list(safe_params(params).items())
    for i in range(0, len(items), 100):
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, v) for k, v in items[i : i + 100]],
            synchronous=True,
        )
    return run.info.run_id


def end_run(uri: str, run_id: str, failed: bool) -> None:
    """Mark the run FINISHED or FAILED: never leave it RUNNING."""
    MlflowClient(uri).set_terminated(run_id, "FAILED" if failed else "FINISHED")


class EpochMetricsLogger(UserCallback):
    """Ray Train controller callback: log rank 0's per-epoch metrics with the epoch as the step."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.last_step: int | None = None
        self.hosts: str | None = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        """Called once per `ray.train.report` round, after the checkpoint is persisted."""
        values = metrics[0]
        epoch = int(values["epoch"])
        client = MlflowClient(self.tracking_uri)
        hosts = ",".join(str(m.get("host", "?")) for m in metrics)
        if hosts != self.hosts:  # set once, and again when a restarted worker group lands elsewhere
            client.set_tag(self.run_id, HOSTS_TAG, hosts)
            self.hosts = hosts
        if self.last_step is None:
            history = client.get_metric_history(self.run_id, "loss")
            self.last_step = max((m.step for m in history), default=0)
        if epoch <= self.last_step:
            return  # already logged before a restart: keep the series free of duplicates
        scalars = [
            mlflow.entities.Metric(key, float(value), int(time.time() * 1000), epoch)
            for key, value in values.items()
            if key not in NOT_LOGGED_PER_EPOCH and isinstance(value, int | float) and not isinstance(value, bool)
        ]
        # DDP keeps replicas identical; 0 here is the evidence, per epoch, readable in the UI.
        checksums = [m["param_checksum"] for m in metrics if "param_checksum" in m]
        if len(checksums) > 1:
            spread = max(checksums) - min(checksums)
            scalars.append(mlflow.entities.Metric("replica_param_spread", spread, int(time.time() * 1000), epoch))
        client.log_batch(self.run_id, metrics=scalars, synchronous=True)
        self.last_step = epoch


def log_json(uri: str, run_id: str, data: Any, artifact_file: str) -> None:
    """Write `data` as a JSON artifact of the run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        parent = str(Path(artifact_file).parent)
        MlflowClient(uri).log_artifact(run_id, str(path), artifact_path=None if parent == "." else parent)


def log_cmc_plot(uri: str, run_id: str, cmc: list[float], title: str, artifact_file: str = "cmc.png") -> None:
    """A CMC curve (rank 1..20) as a PNG artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = list(range(1, len(cmc) + 1))
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(ranks, [100 * c for c in cmc], marker="o", markersize=3)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xticks([1, 5, 10, 15, 20][: 1 + len(ranks) // 5])
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / artifact_file
        fig.savefig(path)
        plt.close(fig)
        MlflowClient(uri).log_artifact(run_id, str(path))
