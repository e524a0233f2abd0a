"""docs/cluster.md's sweep workflow against a real token-authenticated Ray cluster on this machine.

A head started with `ray start --head` and RAY_AUTH_MODE=token refuses job submissions without its token
or with a wrong one, and runs the documented `ray job submit --working-dir experiments --runtime-env-json
'{"py_modules": [...]}' -- python tune_dilations.py ...` from a client that holds it (through
RAY_AUTH_TOKEN_PATH, as the docs set it up). The sweep records to a team MLflow server
(`python -m gltr_platform.tracking_server`) whose runs and registry the test reads back over HTTP, and keeps
Tune's state and every checkpoint in S3 (moto's server on 127.0.0.1).

The head and the submitting client hold credentials in their environment (fake, distinctive AWS secret key
and session token, an MLflow password) besides the Ray token. After the sweep, none of them may appear in
any log (the job's output, Ray's session logs), the job's and the actors' metadata (`ray job list`, `ray list
actors --detail`), MLflow (params, tags, artifacts, the store itself) or the checkpoints (every S3 object,
every file the run left on disk). Ray Tune on its own copies the driver's AWS keys into every trial's
runtime_env, which Ray logs in runtime_env_agent.log: tune/sweep.py turns that off.

The cluster, the tracking server and everything they spawn are stopped by the test alone: never `ray
stop`, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import base64
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

import boto3
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
LEAKY_ENV = (
    "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI",
    "AWS_PROFILE", "AWS_ENDPOINT_URL_S3",
)  # fmt: skip
# Credentials as a node or a developer's shell holds them: each value must never be written anywhere.
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "gltrCanaryAwsSecretKey0d9e1f6b",
    "AWS_SESSION_TOKEN": "gltrCanaryAwsSessionToken7c2b4a93",
    "MLFLOW_TRACKING_PASSWORD": "gltrCanaryMlflowPassword5e8f21",
}
MLFLOW_USER = "gltr-test"
BUCKET = "job-sweep"


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


def s3_client(credentials: dict[str, str]):
    """A boto3 S3 client for the test's endpoint with `credentials`."""
    return boto3.client(
        "s3",
        endpoint_url=credentials["AWS_ENDPOINT_URL"],
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials["AWS_SESSION_TOKEN"],
        region_name=credentials["AWS_DEFAULT_REGION"],
    )


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
    ray_tmp: Path
    credentials: dict[str, str]  # the environment both the head and the client hold


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("job-submit")
    empty = base / "empty-aws-config"
    empty.write_text("")
    credentials = {
        **SECRETS,
        "AWS_ACCESS_KEY_ID": "gltr-test-key-id",
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_CONFIG_FILE": str(empty),
        "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
    }
    s3_client(credentials).create_bucket(Bucket=BUCKET)
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
            env=clean_env(
                HOME=str(head_home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), **credentials
            ),
            cwd=base, stdout=ray_out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            tracking_uri = f"http://127.0.0.1:{tracking_port}"
            wait_for_http(f"{tracking_uri}/health", server, mlflow_log)
            wait_for_http(f"http://127.0.0.1:{dashboard_port}/api/version", head, ray_log)
            yield Cluster(f"http://127.0.0.1:{dashboard_port}", token_path, tracking_uri, base, ray_tmp, credentials)
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
        "--storage-path", f"s3://{BUCKET}/ray-results",
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


@dataclass
class SweepJob:
    """The documented sweep submission, done once: its exit code and everything the client printed."""

    code: int
    output: str
    client_env: dict[str, str]


@pytest.fixture(scope="module")
def sweep_job(cluster: Cluster) -> SweepJob:
    # The client's shell holds the same credentials as the head: none of them may travel with the job.
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(cluster.token_path), **cluster.credentials}
    code, output = submit(cluster, client_env, sweep_entrypoint(cluster.base), JOB_TIMEOUT_S)
    return SweepJob(code, output, client_env)


def test_documented_sweep_submission_runs_and_records_trials_and_champion(cluster, sweep_job):
    assert sweep_job.code == 0 and "succeeded" in sweep_job.output, sweep_job.output[-6000:]

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
    checkpoints = s3_client(cluster.credentials).list_objects_v2(Bucket=BUCKET, Prefix="ray-results/")
    assert any("/checkpoint" in o["Key"] or "/epoch-" in o["Key"] for o in checkpoints.get("Contents", []))


def test_no_credential_is_written_to_logs_job_metadata_mlflow_or_checkpoints(cluster, sweep_job):
    assert sweep_job.code == 0, sweep_job.output[-3000:]
    token = cluster.token_path.read_text().strip()
    basic_auth = base64.b64encode(f"{MLFLOW_USER}:{SECRETS['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    secrets = {**SECRETS, "Ray auth token": token, "MLflow basic auth header": basic_auth}

    def leaks(what: str, data: str | bytes) -> list[str]:
        data = data if isinstance(data, bytes) else data.encode()
        return [f"{name} in {what}" for name, value in secrets.items() if value.encode() in data]

    found = leaks("the job's output", sweep_job.output)
    # Job metadata (entrypoint, runtime_env, metadata of every job) and every actor's runtime_env (Tune's
    # trials included), as the job and state APIs serve them to anyone holding the token.
    for command, expected in ((["job", "list"], "tune_dilations.py"), (["list", "actors", "--detail"], "runtime_env")):
        listed = subprocess.run(
            [RAY, *command, "--address", cluster.job_api],
            env=clean_env(HOME=str(cluster.base), **sweep_job.client_env),
            capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
        )  # fmt: skip
        assert listed.returncode == 0 and expected in listed.stdout, listed.stderr[-2000:]
        found += leaks(f"`ray {' '.join(command)}`", listed.stdout + listed.stderr)
    # MLflow as its API shows it: every run's params and tags, every model version's tags.
    client = MlflowClient(cluster.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(experiments, max_results=1000):
        found += leaks(f"run {run.info.run_name} params/tags", json.dumps([run.data.params, run.data.tags]))
    for version in client.search_model_versions():
        found += leaks(f"model version {version.version} tags", json.dumps(version.tags))
    # Checkpoints and Tune's state: every object in the bucket.
    s3 = s3_client(cluster.credentials)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys
    for key in keys:
        found += leaks(f"s3://{BUCKET}/{key}", s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    # Every file the run left on disk: Ray's session (logs, uploaded packages), the MLflow store and its
    # artifacts, the server and head logs, the driver's home (Optuna study, dataset cache).
    scanned = 0
    for root in (cluster.ray_tmp, cluster.base):
        for path in root.rglob("*"):
            if path == cluster.token_path or path.is_symlink() or not path.is_file():
                continue  # the token's own file is where it belongs
            scanned += 1
            found += leaks(str(path), path.read_bytes())
    print(f"\nscanned for {len(secrets)} secrets: {scanned} files, {len(keys)} S3 objects, the job and actor listings")
    assert scanned > 100, scanned
    assert not found, "\n".join(found)
