"""A sweep across hosts, and a host lost mid-sweep as a spot preemption loses it.

`tune_dilations.py` is submitted as a job. Its trials run on both worker hosts (each trial's MLflow run
records its hosts); every child run and the champion are on the one team server; Tune, Optuna and MLflow
agree on the trials. While the trials run, worker2 is lost: every process in its namespace is killed and
its link and disk are deleted. Its trial resumes from its last checkpoint in S3 on another host, no epoch
is lost or repeated in MLflow, and the sweep finishes and registers a champion. A fresh host, added right
after the loss, is used: it syncs the dataset it never had and runs a trial.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass

import optuna
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster

SWEEP = "lost-host"
TRIALS = 3
EPOCHS = 5
SWEEP_TIMEOUT_S = 1500


@dataclass
class LostHostSweep:
    code: int
    output: str
    hosts_before_loss: dict[str, str]  # trial run id -> its hosts when worker2 was lost
    victim_run: str  # the run of the trial that was on worker2
    epochs_before_loss: int  # the victim's epochs in MLflow when worker2 was lost
    recovery_s: float  # from the loss to the victim's next epoch in MLflow
    worker1_ip: str
    worker2_ip: str
    worker3_ip: str


def _children(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("gltr-sweeps")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], f"tags.`gltr.sweep_name` = '{SWEEP}'")
    return [r for r in runs if r.data.tags.get("gltr.role") != "sweep"]


def _epochs(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


@pytest.fixture(scope="module")
def lost_host_sweep(platform_cluster) -> LostHostSweep:
    cluster = platform_cluster
    worker1, worker2 = cluster.sim.hosts["worker1"], cluster.sim.hosts["worker2"]
    log = cluster.logs / "sweep-client.log"
    client_proc = cluster.submit_in_background(
        ["python", "tune_dilations.py", "--data", "s3://gltr-cluster/datasets/synthetic", "--name", SWEEP,
         "--trials", str(TRIALS), "--max-concurrent", "2", "--epochs", str(EPOCHS), "--no-early-stopping",
         "--seed", "3", "--storage-path", "s3://gltr-cluster/sweeps", "--set", "train.eval_every=1",
         "--set", "data.val_ids=4"],
        log,
    )  # fmt: skip
    client = MlflowClient(cluster.tracking_uri)
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    victim = None
    while victim is None:
        assert time.monotonic() < deadline and client_proc.poll() is None, log.read_text()[-6000:]
        for run in _children(client):
            if run.data.tags.get("gltr.hosts") == worker2.ip and _epochs(client, run.info.run_id):
                victim = run
        time.sleep(1)
    hosts_before = {r.info.run_id: r.data.tags.get("gltr.hosts", "") for r in _children(client)}
    epochs_before = len(_epochs(client, victim.info.run_id))
    lost_at = time.monotonic()
    cluster.sim.remove_host(worker2)
    worker3 = cluster.add_worker("worker3", cpus=1)
    recovery = None
    while recovery is None and client_proc.poll() is None and time.monotonic() < deadline:
        if len(_epochs(client, victim.info.run_id)) > epochs_before:
            recovery = time.monotonic() - lost_at
        time.sleep(1)
    client_proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    cluster.record(
        f"host lost: worker2 removed after epoch {epochs_before} of its trial; the trial's next epoch was logged "
        f"{recovery:.0f} s later (a fresh host joined meanwhile)"
        if recovery is not None
        else "host lost: no recovery"
    )
    return LostHostSweep(
        client_proc.returncode, log.read_text(), hosts_before, victim.info.run_id, epochs_before,
        recovery if recovery is not None else float("nan"), worker1.ip, worker2.ip, worker3.ip,
    )  # fmt: skip


def test_trials_ran_on_both_worker_hosts_and_record_their_host(lost_host_sweep):
    hosts = set(lost_host_sweep.hosts_before_loss.values())
    assert {lost_host_sweep.worker1_ip, lost_host_sweep.worker2_ip} <= hosts, hosts


def test_the_sweep_finishes_and_registers_a_champion_on_the_team_server(platform_cluster, lost_host_sweep):
    assert lost_host_sweep.code == 0 and "succeeded" in lost_host_sweep.output, lost_host_sweep.output[-6000:]
    client = MlflowClient(platform_cluster.tracking_uri)
    children = _children(client)
    assert len(children) == TRIALS and all(r.info.status == "FINISHED" for r in children)
    champion = client.get_model_version_by_alias("gltr", "champion")
    assert champion.run_id in {r.info.run_id for r in children}


def test_tune_optuna_and_mlflow_agree_on_the_trials(platform_cluster, lost_host_sweep):
    assert lost_host_sweep.code == 0, lost_host_sweep.output[-3000:]
    client = MlflowClient(platform_cluster.tracking_uri)
    experiment = client.get_experiment_by_name("gltr-sweeps")
    parent = client.search_runs(
        [experiment.experiment_id], f"tags.`gltr.sweep_name` = '{SWEEP}' and tags.`gltr.role` = 'sweep'"
    )
    assert len(parent) == 1
    table = client.download_artifacts(parent[0].info.run_id, "trials.csv")
    with open(table) as f:
        tune_rows = list(csv.DictReader(io.StringIO(f.read())))
    study_db = platform_cluster.head.home / ".cache" / "gltr-platform" / "optuna" / "optuna.db"
    study = optuna.load_study(study_name=SWEEP, storage=f"sqlite:///{study_db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    mlflow_trials = {r.info.run_id for r in _children(client)}
    assert len(tune_rows) == len(complete) == len(mlflow_trials) == TRIALS
    assert {row["mlflow_run_id"] for row in tune_rows} == mlflow_trials
    assert not [row for row in tune_rows if row["error"] == "True"]


def test_the_lost_hosts_trial_resumed_from_its_checkpoint_with_no_epoch_lost_or_repeated(
    platform_cluster, lost_host_sweep
):
    assert lost_host_sweep.code == 0, lost_host_sweep.output[-3000:]
    client = MlflowClient(platform_cluster.tracking_uri)
    run = client.get_run(lost_host_sweep.victim_run)
    assert _epochs(client, run.info.run_id) == list(range(1, EPOCHS + 1))
    resumed = client.get_metric_history(run.info.run_id, "resumed_from_epoch")
    assert resumed and min(m.value for m in resumed) >= lost_host_sweep.epochs_before_loss, resumed
    assert run.data.tags["gltr.hosts"] != lost_host_sweep.worker2_ip


def test_the_fresh_host_synced_the_dataset_once_and_ran_a_trial(platform_cluster, lost_host_sweep):
    assert lost_host_sweep.code == 0, lost_host_sweep.output[-3000:]
    client = MlflowClient(platform_cluster.tracking_uri)
    assert lost_host_sweep.worker3_ip in {r.data.tags.get("gltr.hosts") for r in _children(client)}
    downloads = platform_cluster.shard_downloads()
    fetched = [count for (host, _), count in downloads.items() if host == "worker3"]
    assert fetched and set(fetched) == {1}, downloads
