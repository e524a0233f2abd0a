"""DDP across hosts: `train_gltr.py --workers 2` submitted as a job runs one rank on each worker host.

gloo talks over the bridge between two network namespaces; the MLflow run lands on the team server on
the head; each worker host syncs the dataset from S3 into its own disk once, and the head (whose driver
reads only the manifest) downloads no shard.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster

EPOCHS = 2
RUN = "ddp-across-hosts"


@pytest.fixture(scope="module")
def ddp_job(platform_cluster):
    code, output = platform_cluster.submit(
        ["python", "train_gltr.py", "--preset", "cpu-demo", "--data", "s3://gltr-cluster/datasets/synthetic",
         "--workers", "2", "--name", RUN, "--storage-path", "s3://gltr-cluster/checkpoints",
         "--set", f"train.epochs={EPOCHS}", "--set", "train.eval_every=1", "--set", "data.val_ids=4"],
    )  # fmt: skip
    return code, output


def test_the_job_succeeds_with_one_rank_on_each_worker_host(platform_cluster, ddp_job):
    code, output = ddp_job
    assert code == 0 and "succeeded" in output, output[-6000:]
    run = _run(platform_cluster)
    hosts = run.data.tags["gltr.hosts"].split(",")
    assert sorted(hosts) == sorted(h.ip for h in platform_cluster.workers), hosts


def test_ranks_end_with_identical_parameters_and_mlflow_has_every_epoch_and_the_model(platform_cluster, ddp_job):
    assert ddp_job[0] == 0, ddp_job[1][-3000:]
    run = _run(platform_cluster)
    client = MlflowClient(platform_cluster.tracking_uri)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, EPOCHS + 1))
    spread = client.get_metric_history(run.info.run_id, "replica_param_spread")
    assert [m.step for m in spread] and all(m.value == 0.0 for m in spread), spread
    assert run.data.tags["gltr.model_uri"].startswith("models:/")
    assert "test_mAP" in run.data.metrics


def test_each_worker_host_synced_the_dataset_once_and_the_head_downloaded_no_shard(platform_cluster, ddp_job):
    assert ddp_job[0] == 0, ddp_job[1][-3000:]
    downloads = platform_cluster.shard_downloads()
    shards = {key for (_, key) in downloads}
    assert shards, "no shard was downloaded at all"
    for worker in platform_cluster.workers:
        per_shard = {key: downloads[(worker.name, key)] for key in shards}
        assert set(per_shard.values()) == {1}, (worker.name, per_shard)
        caches = list((worker.home / ".cache" / "gltr-platform" / "datasets").glob("*/manifest.json"))
        assert len(caches) == 1, caches
    assert not [key for (host, key) in downloads if host == "head"]
    platform_cluster.record(
        "ddp: shard downloads per host "
        + ", ".join(
            f"{h.name} {sum(c for (n, _), c in downloads.items() if n == h.name)}"
            for h in platform_cluster.sim.hosts.values()
        )
        + f" (dataset: {len(shards)} shards)"
    )
    assert not list(platform_cluster.head.home.glob(".cache/gltr-platform/datasets/*/shards/*"))


def _run(cluster):
    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name("gltr")
    runs = client.search_runs([experiment.experiment_id], f"tags.`gltr.run_name` = '{RUN}'")
    assert len(runs) == 1, runs
    return runs[0]
