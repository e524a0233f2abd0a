"""The headline workflow end to end, through the real CLI: tune_dilations.py runs a small sweep (Ray Tune
+ Optuna + ASHA, each trial a Ray Train run), its driver is killed with SIGKILL mid-sweep, `--resume`
finishes it, and Optuna, Tune and MLflow agree on what ran. The champion is registered and loads.

One sweep serves every test in the module (trials cost ~30-60 s each on 2 cores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
TRIALS = 4
EPOCHS = 2


def sweep_command(base: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "experiments" / "tune_dilations.py"),
        "--name", "e2e-sweep",
        "--trials", str(TRIALS),
        "--max-concurrent", "2",
        "--epochs", str(EPOCHS),
        "--grace-period", "1",
        "--reduction-factor", "4",
        "--seed", "3",
        "--storage-path", str(base / "sweeps"),
        "--set", "train.eval_every=1",
        "--set", f"data.cache_dir={base / 'cache'}",
        "--set", "data.synthetic_ids=20",
        "--set", "data.synthetic_test_ids=6",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("sweep")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
        "RAY_TMPDIR": str(base / "ray"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    (base / "ray").mkdir()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    log = open(base / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(
        sweep_command(base), cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None:
            if finished_children(client) >= 1:
                break
            time.sleep(2)
        assert first.poll() is None, (
            f"the sweep ended before it could be interrupted:\n{(base / 'first.log').read_text()[-3000:]}"
        )
        assert finished_children(client) >= 1, "no trial finished within 10 minutes"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
        first.wait()
        log.close()
    resumed = subprocess.run(
        sweep_command(base, "--resume"), cwd=base, env=env, capture_output=True, text=True, timeout=900,
        start_new_session=True,
    )  # fmt: skip
    (base / "resumed.log").write_text(resumed.stdout + resumed.stderr)  # kept for a failing test's reader
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    return base, client, resumed.stdout


def finished_children(client: MlflowClient) -> int:
    exp = client.get_experiment_by_name("gltr-sweeps")
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], "tags.`gltr.sweep_name` = 'e2e-sweep'")
    return sum(1 for r in runs if r.info.status == "FINISHED" and r.data.tags.get("gltr.role") != "sweep")


def sweep_runs(client):
    exp = client.get_experiment_by_name("gltr-sweeps")
    runs = client.search_runs([exp.experiment_id], "tags.`gltr.sweep_name` = 'e2e-sweep'")
    parents = [r for r in runs if r.data.tags.get("gltr.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("gltr.role") != "sweep"]
    return parents, children


def test_optuna_tune_and_mlflow_agree_on_the_trials_after_resume(sweep):
    base, client, _ = sweep
    parents, children = sweep_runs(client)
    assert len(parents) == 1
    assert len(children) == TRIALS, f"{[r.info.run_name for r in children]}, see {base}/*.log"  # none duplicated
    assert len({r.info.run_name for r in children}) == TRIALS
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in [*parents, *children])  # none left RUNNING
    study = optuna.load_study(
        study_name="e2e-sweep", storage=f"sqlite:///{base / 'sweeps' / 'e2e-sweep' / 'optuna.db'}"
    )
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS
    assert optuna.trial.TrialState.RUNNING not in states  # asked for by the killed driver: closed as FAIL
    trials = ExperimentAnalysis(str(base / "sweeps" / "e2e-sweep")).trials
    assert len(trials) == TRIALS and all(t.status == "TERMINATED" for t in trials)


def test_asha_stopped_at_least_one_trial_early(sweep):
    _, client, stdout = sweep
    _, children = sweep_runs(client)
    stopped = [r for r in children if r.data.tags.get("tune.stopped_early") == "true"]
    assert stopped, stdout[-2000:]
    for run in stopped:  # metrics stop at the rung where ASHA cut the trial
        assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss")) < EPOCHS


def test_parent_run_holds_the_table_plots_and_best_configuration(sweep):
    _, client, stdout = sweep
    parents, _ = sweep_runs(client)
    parent = parents[0]
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"trials.csv", "best_config.json"} <= top
    assert {"plots/optimization_history.html", "plots/optimization_history.png"} <= plots
    assert "search_space" in parent.data.params and parent.data.tags.get("git.commit")
    assert "Best configuration" in stdout and "mlflow ui --backend-store-uri" in stdout


def test_champion_is_registered_with_metrics_and_produces_embeddings(sweep):
    _, client, _ = sweep
    version = client.get_model_version_by_alias("gltr", "champion")
    assert {"best_val_mAP", "test_mAP", "dilations", "seq_len", "attention_width"} <= set(version.tags)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pytorch.load_model("models:/gltr@champion").eval()
    with torch.no_grad():
        emb = model(torch.randn(2, 3, 3, 64, 32))
    assert emb.shape[0] == 2 and torch.isfinite(emb).all()
