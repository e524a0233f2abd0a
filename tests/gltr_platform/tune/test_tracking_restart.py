"""The team MLflow server restarts in the middle of a sweep: logging retries, the sweep finishes, and MLflow
holds every epoch of every trial, no run left RUNNING, and the champion.

The server is the real `python -m gltr_platform.tracking_server` (sqlite store, proxied artifacts) and the
sweep the real `experiments/tune_dilations.py` with its own local Ray. Once both trials have their MLflow
runs and one has logged its first epoch, the server's process group is SIGKILLed. While it is down a
stand-in socket holds its port and drops every connection unanswered, counting them: the outage lasts until
clients have come back (the dropped request and at least one retry; MLflow's HTTP client retries 7 times
with exponential backoff from 4 s, about 4 minutes in all, in every process that logs, the Ray Train
controllers included) and at least MIN_OUTAGE_S. Then the server starts again on the same port and store.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
SWEEP = "restart-sweep"
TRIALS = 2
EPOCHS = 2
MIN_OUTAGE_S = 5
START_TIMEOUT_S = 120
SWEEP_TIMEOUT_S = 600


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen:
    """The tracking server on 127.0.0.1:`port` with its state in `home`, once /health answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gltr_platform.tracking_server", "--home", str(home),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"tracking server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    kill_group(proc)
    raise AssertionError(f"tracking server not up within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


class DroppingPort:
    """Holds 127.0.0.1:`port` while the server is down: accepts every connection and closes it unanswered."""

    def __init__(self, port: int):
        self.attempts = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 30
        while True:  # until the killed server's processes are gone and their listening socket with them
            try:
                self.sock.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline, f"port {port} still held after the server was killed"
                time.sleep(0.1)
        self.sock.listen(64)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the real server takes the port back
            self.attempts += 1
            conn.close()

    def close(self) -> None:
        """Release the port."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=10)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s process group (it was started in a session of its own) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def sweep_runs(client: MlflowClient) -> tuple[list, list]:
    """The sweep's parent runs and trial runs."""
    exp = client.get_experiment_by_name("gltr-sweeps")
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], f"tags.`gltr.sweep_name` = '{SWEEP}'")
    parents = [r for r in runs if r.data.tags.get("gltr.role") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("gltr.role") != "sweep"]


def trials_are_training(client: MlflowClient) -> bool:
    """Both trials have their runs (params logged) and one of them has logged its first epoch."""
    _, children = sweep_runs(client)
    return (
        len(children) == TRIALS
        and all(r.data.params for r in children)
        and any(client.get_metric_history(r.info.run_id, "loss") for r in children)
    )


def test_sweep_survives_a_tracking_server_restart(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    home, server_log, sweep_log = tmp_path / "mlflow", tmp_path / "server.log", tmp_path / "sweep.log"
    ray_tmp = Path(tempfile.mkdtemp(prefix="gltr-tr-"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true")
    command = [
        sys.executable, str(ROOT / "experiments" / "tune_dilations.py"),
        "--name", SWEEP,
        "--trials", str(TRIALS),
        "--max-concurrent", str(TRIALS),
        "--epochs", str(EPOCHS),
        "--no-early-stopping",  # every trial runs every epoch: each must have all of them in MLflow
        "--seed", "1",
        "--storage-path", str(tmp_path / "sweeps"),
        "--tracking-uri", uri,
        "--set", "train.eval_every=1",
        "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", "data.synthetic_ids=20",
        "--set", "data.synthetic_test_ids=6",
    ]  # fmt: skip
    server = start_server(home, port, server_log)
    client = MlflowClient(uri)
    log = open(sweep_log, "w")  # noqa: SIM115
    sweep = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while not trials_are_training(client):
            assert sweep.poll() is None, f"the sweep ended before the outage:\n{sweep_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "the trials did not start training in time"
            time.sleep(1)

        kill_group(server)
        down_at = time.monotonic()
        dropping = DroppingPort(port)
        try:
            while dropping.attempts < 2 or time.monotonic() - down_at < MIN_OUTAGE_S:
                assert sweep.poll() is None, f"the sweep died during the outage:\n{sweep_log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "no client came back to the stopped server"
                time.sleep(0.5)
        finally:
            dropping.close()
        server_log_offset = len(server_log.read_text())
        server = start_server(home, port, server_log)
        up_at, up_wall = time.monotonic(), datetime.now()
        code = sweep.wait(timeout=max(1.0, deadline - time.monotonic()))
        finished_at = time.monotonic()

        output = sweep_log.read_text()
        # The first API request the restarted server answered came from a client that was retrying.
        first = re.search(r"^(\S+ \S+) .*/api/", server_log.read_text()[server_log_offset:], re.MULTILINE)
        answered = datetime.strptime(first.group(1), "%Y/%m/%d %H:%M:%S") if first else up_wall
        recovered_s = (answered - up_wall).total_seconds()
        print(
            f"\noutage {up_at - down_at:.1f} s, {dropping.attempts} requests dropped (first tries and retries), "
            f"first retried request answered ~{max(recovered_s, 0):.0f} s after the restart, "
            f"sweep done {finished_at - up_at:.1f} s after the restart"
        )
        assert code == 0, output[-6000:]

        parents, children = sweep_runs(client)
        assert len(parents) == 1 and len(children) == TRIALS, output[-4000:]
        assert all(r.info.status == "FINISHED" for r in [*parents, *children])  # none left RUNNING
        for run in children:
            for key in ("loss", "val_mAP"):  # every epoch once, none lost or duplicated by the retries
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, key, steps)
        champion = client.get_model_version_by_alias("gltr", "champion")
        assert champion.tags["mlflow_run_id"] in {r.info.run_id for r in children}
        assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"trials.csv", "best_config.json"}
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)  # the driver and the local Ray it started
            sweep.wait()
        log.close()
        kill_group(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)
