"""What other hosts cannot reach is refused up front on a multi-host cluster, before anything is created.

A file-based tracking URI, a local storage path, or an endpoint on 127.0.0.1 works on one machine and
silently splits a run over the hosts' private disks on a cluster (or fails after an epoch of work). Each
is refused with one `error:` line saying what to use instead, exit code 2, no MLflow run, no checkpoint.
"""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster

DATA = "s3://gltr-cluster/datasets/synthetic"
CASES = {
    "sqlite tracking URI": (["--tracking-uri", "sqlite:///mlflow.db"], {}, "is a file on this host"),
    "file tracking URI": (["--tracking-uri", "file:///tmp/mlruns"], {}, "is a file on this host"),
    "plain path tracking URI": (["--tracking-uri", "/tmp/mlruns"], {}, "is a file on this host"),
    "loopback tracking server": (["--tracking-uri", "http://127.0.0.1:5000"], {}, "use the head's address"),
    "local storage path": (["--storage-path", "/tmp/checkpoints"], {}, "use shared storage"),
    "loopback S3 endpoint": ([], {"AWS_ENDPOINT_URL": "http://localhost:9000"}, "$AWS_ENDPOINT_URL=http://localhost"),
}


@pytest.mark.parametrize("case", CASES)
def test_refused_with_one_error_line_exit_2_and_nothing_created(platform_cluster, case):
    args, job_env, expected = CASES[case]
    name = f"refused-{case.replace(' ', '-')}"
    entrypoint = ["python", "train_gltr.py", "--preset", "cpu-demo", "--data", DATA, "--name", name,
                  "--storage-path", "s3://gltr-cluster/refused", *args]  # fmt: skip
    start = time.monotonic()
    code, output = platform_cluster.submit(entrypoint, timeout=300, job_env=job_env)
    platform_cluster.record(f"refused ({case}): {time.monotonic() - start:.1f} s from `ray job submit` to the error")
    assert code != 0 and "failed with exit code 2" in output, output[-4000:]
    # `ray job submit` prints the job's log, then repeats its tail in the status message.
    errors = sorted({line for line in output.splitlines() if line.startswith("error:")})
    assert len(errors) == 1 and expected in errors[0], output[-4000:]
    assert "Traceback" not in output
    client = MlflowClient(platform_cluster.tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`gltr.run_name` = '{name}'"
    )
    assert not runs
    assert not platform_cluster.s3().list_objects_v2(Bucket="gltr-cluster", Prefix="refused/").get("Contents")
    team_store = platform_cluster.head.home / "mlflow"  # the team server's own store
    for host in platform_cluster.sim.hosts.values():
        stray = [*host.disk.rglob("mlflow.db"), *host.disk.rglob("mlruns"), *host.disk.rglob("checkpoints")]
        assert not [p for p in stray if not p.is_relative_to(team_store)], stray


def test_a_gloo_transport_on_loopback_fails_with_a_message_that_says_what_to_do(platform_cluster):
    """Where gloo binds to 127.0.0.1 (what a hostname resolving to loopback does), the ranks cannot connect."""
    entrypoint = ["python", "train_gltr.py", "--preset", "cpu-demo", "--data", DATA, "--name", "gloo-loopback",
                  "--workers", "2", "--storage-path", "s3://gltr-cluster/gloo",
                  "--set", "run.max_failures=0"]  # fmt: skip
    code, output = platform_cluster.submit(entrypoint, timeout=600, job_env={"GLOO_SOCKET_IFNAME": "lo"})
    assert code != 0, output[-4000:]
    errors = sorted({line for line in output.splitlines() if line.startswith("error:")})
    assert len(errors) == 1, output[-6000:]
    assert "could not connect to each other" in errors[0] and "GLOO_SOCKET_IFNAME" in errors[0], errors[0]
    assert not errors[0].rstrip().endswith(":")
