"""docs/cluster.md's sweep workflow against a real token-authenticated Ray cluster on this machine.

A head started with `ray start --head` and RAY_AUTH_MODE=token refuses job submissions without its token
or with a wrong one, and runs the documented `ray job submit --working-dir experiments --runtime-env-json
'{"py_modules": [...]}' -- python tune_dilations.py ...` from a client that holds it (through
RAY_AUTH_TOKEN_PATH, as the docs set it up). The sweep records to a team MLflow server
(`python -m gltr_platform.tracking_server`) whose runs and registry the test reads back over HTTP.

The cluster, the tracking server and everything they spawn are stopped by the test alone: never `ray
stop`, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
SWEEP = "job-sweep"
TRIALS = 2
START_TIMEOUT_S = 180
CLIENT_TIMEOUT_S = 120
JOB_TIMEOUT_S = 900
# Variables from the developer's shell that would point the cluster, the job or a client elsewhere.
LEAKY_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray/MLflow pointers, the venv first on PATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _processes() -> dict[int, tuple[int, bytes, str]]:
    """Every live process as pid -> (parent pid, command line, state), read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(entry.name)] = (int(fields[1]), (entry / "cmdline").read_bytes(), fields[0])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return found


def stop_everything_from(proc: subprocess.Popen, marker: str) -> None:
    """SIGTERM, then SIGKILL, `proc`, its descendants, and any process whose command line names `marker`.

    Ray's job drivers run in sessions of their own and its workers may outlive their parents for a
    moment, so a process group alone is not enough; `marker` (a temporary path only this test uses)
    catches what left the tree.
    """

    def ours() -> set[int]:
        table = _processes()
        pids = {pid for pid, (_, cmdline, _) in table.items() if marker.encode() in cmdline}
        pids.add(proc.pid)
        grew = True
        while grew:
            children = {pid for pid, (ppid, _, _) in table.items() if ppid in pids}
            grew = not children <= pids
            pids |= children
        return {pid for pid in pids if pid in table and table[pid][2] != "Z" and pid != os.getpid()}

    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        for pid in ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while ours() and time.monotonic() < deadline:
            proc.poll()  # reap our own child, so it stops counting as alive
            time.sleep(0.2)
    proc.wait(timeout=10)


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Until `url` answers at all (any HTTP status), failing early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args[:4]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # an auth-protected endpoint answering 401 is up
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@dataclass
class Cluster:
    """A token-authenticated Ray head and an MLflow server, both on 127.0.0.1."""

    job_api: str
    token_path: Path
    tracking_uri: str
    base: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("job-submit")
    head_home = base / "head-home"
    head_home.mkdir()
    # Ray's unix socket paths must stay short; the path also marks every process of this cluster.
    ray_tmp = Path(tempfile.mkdtemp(prefix="gltr-rj-"))
    generated = subprocess.run(
        [RAY, "get-auth-token", "--generate"],
        env=clean_env(HOME=str(head_home)),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert generated.returncode == 0, generated.stderr
    token_path = head_home / ".ray" / "auth_token"
    assert token_path.read_text().strip() == generated.stdout.strip() != ""
    if stat.S_IMODE(token_path.stat().st_mode) & 0o077:
        token_path.chmod(0o600)  # Ray writes it with the default umask; docs/cluster.md chmods it too
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600

    tracking_port, dashboard_port = free_port(), free_port()
    mlflow_log, ray_log = base / "mlflow-server.log", base / "ray-head.log"
    mlflow_home = base / "mlflow"
    with open(mlflow_log, "w") as mlflow_out, open(ray_log, "w") as ray_out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gltr_platform.tracking_server", "--home", str(mlflow_home),
             "--host", "127.0.0.1", "--port", str(tracking_port)],
            env=clean_env(), stdout=mlflow_out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--disable-usage-stats",
             "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
             "--ray-client-server-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()),
             "--num-cpus", "2", "--temp-dir", str(ray_tmp)],
            env=clean_env(HOME=str(head_home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path)),
            cwd=base, stdout=ray_out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            tracking_uri = f"http://127.0.0.1:{tracking_port}"
            wait_for_http(f"{tracking_uri}/health", server, mlflow_log)
            wait_for_http(f"http://127.0.0.1:{dashboard_port}/api/version", head, ray_log)
            yield Cluster(f"http://127.0.0.1:{dashboard_port}", token_path, tracking_uri, base)
        finally:
            stop_everything_from(head, str(ray_tmp))
            stop_everything_from(server, str(mlflow_home))
            shutil.rmtree(ray_tmp, ignore_errors=True)


def submit(cluster: Cluster, client_env: dict[str, str], entrypoint: list[str], timeout: float) -> tuple[int, str]:
    """`ray job submit` as docs/cluster.md writes it, from the repository root; exit code and output."""
    runtime_env = {
        "py_modules": ["gltr_model", "platform/gltr_platform"],
        "env_vars": {"MLFLOW_TRACKING_URI": cluster.tracking_uri},
    }
    client_home = cluster.base / f"client-home-{time.monotonic_ns()}"  # nothing in ~/.ray to fall back on
    client_home.mkdir()
    done = subprocess.run(
        [RAY, "job", "submit", "--address", cluster.job_api, "--working-dir", "experiments",
         "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
        cwd=ROOT, env=clean_env(HOME=str(client_home), **client_env),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def sweep_entrypoint(base: Path) -> list[str]:
    return [
        "python", "tune_dilations.py",
        "--name", SWEEP,
        "--trials", str(TRIALS),
        "--max-concurrent", "2",
        "--epochs", "1",
        "--no-early-stopping",  # both trials finish and log a model: the champion is one of them
        "--seed", "5",
        "--storage-path", str(base / "ray-results"),
        "--set", "train.eval_every=1",
        "--set", f"data.cache_dir={base / 'cache'}",
        "--set", "data.synthetic_ids=20",
        "--set", "data.synthetic_test_ids=6",
    ]  # fmt: skip


def test_job_submission_without_the_token_is_refused(cluster):
    code, output = submit(cluster, {}, ["python", "-c", "print('should never run')"], CLIENT_TIMEOUT_S)
    assert code != 0
    assert "Missing authentication token" in output, output[-2000:]
    assert "should never run" not in output


def test_job_submission_with_a_wrong_token_is_refused(cluster):
    wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}
    code, output = submit(cluster, wrong, ["python", "-c", "print('should never run')"], CLIENT_TIMEOUT_S)
    assert code != 0
    assert "Invalid authentication token" in output, output[-2000:]
    assert "should never run" not in output


def test_documented_sweep_submission_runs_and_records_trials_and_champion(cluster):
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(cluster.token_path)}
    code, output = submit(cluster, client_env, sweep_entrypoint(cluster.base), JOB_TIMEOUT_S)
    assert code == 0 and "succeeded" in output, output[-6000:]

    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name("gltr-sweeps")
    runs = client.search_runs([experiment.experiment_id], f"tags.`gltr.sweep_name` = '{SWEEP}'")
    parents = [r for r in runs if r.data.tags.get("gltr.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("gltr.role") != "sweep"]
    assert len(parents) == 1 and len(children) == TRIALS
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in [*parents, *children])
    assert all("val_mAP" in r.data.metrics for r in children)
    champion = client.get_model_version_by_alias("gltr", "champion")
    assert champion.tags["mlflow_run_id"] in {r.info.run_id for r in children}
