"""The platform on a simulated multi-host cluster, as `cluster.yaml` lays it out on AWS.

- head: moto's S3 server, the team MLflow server (`python -m gltr_platform.tracking_server`) and
  `ray start --head --num-cpus=0` with token authentication; it trains nothing.
- worker hosts: `ray start --address=HEAD:6379`, each with its own CPU count (stand-ins for GPU nodes),
  holding the cluster's token and the node environment cluster.yaml gives them (MLFLOW_TRACKING_URI, AWS
  region and credentials).
- the laptop (the root namespace): packs the dataset into S3, reads MLflow and S3 back to check results.

Jobs are submitted with `ray job submit` from inside the head's namespace to 127.0.0.1:8265, which is
where docs/cluster.md's `ray dashboard cluster.yaml` forwards the laptop's port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness module beside this file (importlib mode)
from harness import (  # noqa: E402
    HOST_HOME,
    VENV_BIN,
    HarnessUnavailable,
    Host,
    SimulatedCluster,
    wait_for_http,
)

RAY = str(VENV_BIN / "ray")
PY = sys.executable
S3_PORT, MLFLOW_PORT, RAY_PORT, DASHBOARD_PORT = 9000, 5000, 6379, 8265
BUCKET = "gltr-cluster"
DATASET = f"s3://{BUCKET}/datasets/synthetic"
JOB_TIMEOUT_S = 1500
FIGURES = "figures.txt"
START_ATTEMPTS = 3
# Credentials as every node holds them (on AWS: instance profiles). Fake, and distinctive enough to scan for.
NODE_AWS = {
    "AWS_ACCESS_KEY_ID": "gltr-cluster-key-id",
    "AWS_SECRET_ACCESS_KEY": "gltrClusterCanarySecret4f1e9a",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# moto's request log: `10.x.y.z - - [date] "GET /bucket/key?x HTTP/1.1" 200 -`
REQUEST_LINE = re.compile(r'^(\d+\.\d+\.\d+\.\d+) - - \[[^\]]*\] "(\w+) (\S+) HTTP/[\d.]+" (\d+)')


@dataclass
class PlatformCluster:
    """A running cluster: its hosts, its services' addresses and the token to submit jobs with."""

    sim: SimulatedCluster
    head: Host
    logs: Path

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.head.ip}:{S3_PORT}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.head.ip}:{MLFLOW_PORT}"

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.sim.hosts.values() if h is not self.head]

    def node_env(self, host: Host, **extra: str) -> dict[str, str]:
        """The environment cluster.yaml's setup commands give every Ray process on a node."""
        return self.sim.env(
            host,
            RAY_AUTH_MODE="token",
            MLFLOW_TRACKING_URI=self.tracking_uri,
            AWS_ENDPOINT_URL=self.s3_endpoint,
            **NODE_AWS,
            **extra,
        )

    def s3(self):
        """A boto3 S3 client on the laptop."""
        return boto3.client("s3", endpoint_url=self.s3_endpoint, **{
            "aws_access_key_id": NODE_AWS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": NODE_AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": NODE_AWS["AWS_DEFAULT_REGION"],
        })  # fmt: skip

    def s3_requests(self) -> list[tuple[str, str, str]]:
        """Every request the S3 server has answered so far, as (client address, method, path)."""
        found = []
        for line in (self.logs / "s3.log").read_text(errors="replace").splitlines():
            m = REQUEST_LINE.match(line)
            if m:
                found.append((m.group(1), m.group(2), m.group(3).split("?")[0]))
        return found

    def shard_downloads(self) -> Counter:
        """How many times each host fetched each shard of the dataset: (host name, key) -> count."""
        by_ip = {h.ip: h.name for h in self.sim.hosts.values()}
        by_ip[self.sim.laptop_ip] = "laptop"
        prefix = f"/{BUCKET}/datasets/synthetic/"
        return Counter(
            (by_ip.get(ip, ip), path.removeprefix(prefix))
            for ip, method, path in self.s3_requests()
            if method == "GET" and path.startswith(prefix) and "manifest" not in path
        )

    def record(self, line: str) -> None:
        """A figure for the closing summary of the run (recovery times, sync counts)."""
        with open(self.logs / FIGURES, "a") as out:
            out.write(line + "\n")

    def add_worker(self, name: str, cpus: int) -> Host:
        """A new worker host joined to the cluster (`ray start --address`), holding the cluster's token."""
        host = self.sim.add_host(name)
        token_dir = host.home / ".ray"
        token_dir.mkdir(mode=0o700)
        shutil.copy2(self.head.home / ".ray" / "auth_token", token_dir / "auth_token")
        self.start_ray(host, cpus)
        return host

    def start_ray(self, host: Host, cpus: int) -> None:
        """`ray start --address=HEAD` on `host`, as cluster.yaml's worker_start_ray_commands; until it is alive."""
        log = self.logs / f"ray-{host.name}.log"
        for attempt in range(1, START_ATTEMPTS + 1):
            proc = self.sim.start(
                host,
                [RAY, "start", "--block", "--disable-usage-stats", f"--address={self.head.ip}:{RAY_PORT}",
                 f"--node-ip-address={host.ip}", f"--num-cpus={cpus}", "--num-gpus=0"],
                log, self.node_env(host),
            )  # fmt: skip
            try:
                self.wait_for_nodes(lambda alive: host.ip in alive, proc, log)
                return
            except AssertionError:
                # On 2 loaded cores the GCS can miss `ray start`'s 30 s registration deadline; a node's
                # supervisor (cluster.yaml's start commands, the autoscaler) starts it again.
                self.sim.kill_processes(host, grace=5.0)
                if attempt == START_ATTEMPTS:
                    raise

    def alive_nodes(self) -> set[str]:
        """Node addresses the head's GCS reports alive (through the state API, from the head's namespace)."""
        done = self.sim.run(
            self.head, [RAY, "list", "nodes", "--format", "json", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}"],
            self.node_env(self.head), timeout=60,
        )  # fmt: skip
        try:  # while the head starts, the state API may answer with a message instead of JSON
            nodes = json.loads(done.stdout) if done.returncode == 0 else []
        except json.JSONDecodeError:
            nodes = []
        return {n["node_ip"] for n in nodes if n["state"] == "ALIVE"}

    def wait_for_nodes(self, ready, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> set[str]:
        """Until `ready(alive node addresses)` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            alive = self.alive_nodes()
            if ready(alive):
                return alive
            time.sleep(2)
        raise AssertionError(f"nodes not ready within {timeout:.0f} s (alive: {self.alive_nodes()})")

    def submit_command(self, entrypoint: list[str], job_env: dict[str, str] | None = None) -> list[str]:
        """`ray job submit` as docs/cluster.md writes it, to the head's 127.0.0.1:8265."""
        runtime_env = {"py_modules": ["gltr_model", "platform/gltr_platform"], "env_vars": job_env or {}}
        return [RAY, "job", "submit", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}", "--working-dir",
                "experiments", "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]  # fmt: skip

    def client_env(self) -> dict[str, str]:
        """The job client's environment: the token as docs/cluster.md sets it up, nothing else of the node's."""
        return self.sim.env(self.head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=f"{HOST_HOME}/.ray/auth_token")

    def submit(
        self, entrypoint: list[str], timeout: float = JOB_TIMEOUT_S, job_env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Submit a job from the head's namespace and wait for it; the client's exit code and output."""
        done = self.sim.run(self.head, self.submit_command(entrypoint, job_env), self.client_env(), timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    def submit_in_background(self, entrypoint: list[str], log: Path) -> subprocess.Popen:
        """Submit a job whose client keeps running (and printing into `log`) while the test acts."""
        return self.sim.start(self.head, self.submit_command(entrypoint), log, self.client_env())


def start_head(sim: SimulatedCluster, logs: Path) -> PlatformCluster:
    """The head host with S3, MLflow and the Ray head on it, token generated as cluster.yaml does."""
    head = sim.add_host("head")
    cluster = PlatformCluster(sim, head, logs)
    env = cluster.node_env(head)
    s3 = sim.start(head, [PY, "-m", "moto.server", "-H", head.ip, "-p", str(S3_PORT)], logs / "s3.log", env)
    mlflow = sim.start(
        head,
        [PY, "-m", "gltr_platform.tracking_server", "--home", f"{env['HOME']}/mlflow", "--host", head.ip,
         "--port", str(MLFLOW_PORT)],
        logs / "mlflow.log", env,
    )  # fmt: skip
    generated = sim.run(head, [RAY, "get-auth-token", "--generate"], env, timeout=60)
    assert generated.returncode == 0, generated.stderr
    (head.home / ".ray" / "auth_token").chmod(0o600)
    ray_head = sim.start(
        head,
        [RAY, "start", "--head", "--block", "--disable-usage-stats", f"--port={RAY_PORT}",
         f"--node-ip-address={head.ip}", "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}",
         "--num-cpus=0", "--num-gpus=0"],
        logs / "ray-head.log", env,
    )  # fmt: skip
    wait_for_http(f"{cluster.s3_endpoint}/", s3, logs / "s3.log")
    wait_for_http(f"{cluster.tracking_uri}/health", mlflow, logs / "mlflow.log")
    cluster.wait_for_nodes(lambda alive: head.ip in alive, ray_head, logs / "ray-head.log")
    return cluster


def pack_dataset(cluster: PlatformCluster, work: Path) -> None:
    """The laptop packs a small synthetic MARS-format dataset into the cluster's S3 bucket."""
    cluster.s3().create_bucket(Bucket=BUCKET)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ENDPOINT_URL": cluster.s3_endpoint,
        **NODE_AWS,
    }
    done = subprocess.run(
        [PY, "-c", PACK_SCRIPT, str(work / "synthetic"), DATASET], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr


PACK_SCRIPT = """
import sys
from gltr_platform.data.pack import pack
from gltr_platform.data.synthetic import ensure_synthetic_mars
from gltr_platform.train.config import build_config
from gltr_platform.train.datasets import synthetic_config
cfg = build_config("cpu-demo", {"data.synthetic_ids": 16, "data.synthetic_test_ids": 8})
pack(ensure_synthetic_mars(sys.argv[1], synthetic_config(cfg)), sys.argv[2], progress=False)
"""


_figures: list[Path] = []


def pytest_terminal_summary(terminalreporter) -> None:
    """The figures the scenarios measured, printed after the results."""
    for path in _figures:
        if path.exists():
            terminalreporter.section("simulated cluster: figures")
            terminalreporter.write(path.read_text())


@pytest.fixture(scope="session")
def platform_cluster(tmp_path_factory) -> Iterator[PlatformCluster]:
    """Head + two 1-CPU worker hosts, the dataset packed into S3; torn down (by PID) however tests end."""
    try:
        sim = SimulatedCluster.create()
    except HarnessUnavailable as e:
        # CI runs as root: there this is a failure, never a silent skip.
        pytest.fail(f"cannot build the simulated cluster: {e}", pytrace=False)
    logs = Path(os.environ.get("ARTIFACTS_DIR") or tmp_path_factory.mktemp("cluster-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    (logs / FIGURES).unlink(missing_ok=True)
    _figures.append(logs / FIGURES)
    try:
        cluster = start_head(sim, logs)
        for name in ("worker1", "worker2"):
            cluster.add_worker(name, cpus=1)
        pack_dataset(cluster, tmp_path_factory.mktemp("dataset"))
        yield cluster
    finally:
        sim.teardown()
        left = sim.leftovers()
        assert not left, f"teardown left {left}"
