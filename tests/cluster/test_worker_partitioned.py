"""A worker host cut off for longer than Ray's health check, then reconnected, during a DDP run.

Ray's GCS declares a node dead after its health checks fail (about 5 x 3 s plus timeouts); the host's
raylet, once it can reach the GCS again, learns it was declared dead and exits. A cluster node's Ray is
restarted by whoever runs it (the autoscaler replaces the node; here the test runs cluster.yaml's
`ray start` again, as it would on a replaced node). Ray Train restarts the worker group from the last
checkpoint in S3. What must never happen: a run left RUNNING forever, or a duplicated run or epoch.
"""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster

RUN = "partitioned"
EPOCHS = 4
PARTITION_S = 60  # well past Ray's node health check (5 failures x 3 s period, 10 s timeout)
JOB_TIMEOUT_S = 1200


def _runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("gltr")
    return client.search_runs([experiment.experiment_id], f"tags.`gltr.run_name` = '{RUN}'") if experiment else []


@pytest.fixture(scope="module")
def partitioned_job(platform_cluster):
    cluster = platform_cluster
    victim = cluster.workers[-1]
    log = cluster.logs / "partition-client.log"
    client_proc = cluster.submit_in_background(
        ["python", "train_gltr.py", "--preset", "cpu-demo", "--data", "s3://gltr-cluster/datasets/synthetic",
         "--workers", "2", "--name", RUN, "--storage-path", "s3://gltr-cluster/checkpoints",
         "--set", f"train.epochs={EPOCHS}", "--set", "train.eval_every=1", "--set", "data.val_ids=4",
         "--set", "run.max_failures=3"],
        log,
    )  # fmt: skip
    client = MlflowClient(cluster.tracking_uri)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not [r for r in _runs(client) if client.get_metric_history(r.info.run_id, "loss")]:
        assert time.monotonic() < deadline and client_proc.poll() is None, log.read_text()[-6000:]
        time.sleep(1)
    cluster.sim.unplug(victim)
    time.sleep(PARTITION_S)
    declared_dead = victim.ip not in cluster.alive_nodes()
    cluster.sim.plug(victim)
    time.sleep(20)  # the raylet reconnects, learns it was declared dead, and exits
    restarted = victim.ip not in cluster.alive_nodes()
    if restarted:
        cluster.start_ray(victim, cpus=1)
    client_proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    cluster.record(
        f"partition: {victim.name} cut off {PARTITION_S} s after epoch 1 (declared dead: {declared_dead}; "
        f"Ray restarted on it afterwards: {restarted}); job exit code {client_proc.returncode}"
    )
    return client_proc.returncode, log.read_text(), declared_dead


def test_the_partitioned_host_was_declared_dead(partitioned_job):
    assert partitioned_job[2], "the partition did not outlast Ray's health check"


def test_the_run_ends_finished_with_contiguous_epochs_or_failed_with_one_message(platform_cluster, partitioned_job):
    code, output, _ = partitioned_job
    client = MlflowClient(platform_cluster.tracking_uri)
    runs = _runs(client)
    assert len(runs) == 1, runs  # never duplicated
    run = runs[0]
    assert run.info.status in ("FINISHED", "FAILED"), run.info.status  # never RUNNING forever
    epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert epochs == list(range(1, len(epochs) + 1)), epochs  # none lost, none repeated
    if run.info.status == "FINISHED":
        assert code == 0 and epochs == list(range(1, EPOCHS + 1)), output[-4000:]
    else:
        errors = sorted({line for line in output.splitlines() if line.startswith("error:")})
        assert code != 0 and len(errors) == 1 and not errors[0].rstrip().endswith(":"), output[-6000:]
