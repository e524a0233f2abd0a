"""What a person opening the team MLflow server in a browser sees: the sweep as a parent run with its
trials, their metrics, and the champion in the Model Registry; with --basic-auth, nothing without a login.

The server is the real `python -m gltr_platform.tracking_server`; the runs are written through its HTTP API
the way a sweep writes them (`gltr_platform.train.tracking`), and the model is a real logged and
registered pytorch model. The browser is Debian's headless Chromium (`apt-get install chromium`; CI's
.ci/run installs it), driven through its own command line: `--dump-dom` after a virtual-time budget
lets the single-page app fetch and render, `--screenshot` keeps a picture of each page under
tmp_path (and $ARTIFACTS_DIR/mlflow-ui when set).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from gltr_platform.train.tracking import end_run, start_run

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches beyond 127.0.0.1 or needs a sandbox (CI runs as root in a container).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--window-size=1600,1000",
]  # fmt: skip
SWEEP = "ui-sweep"
EXPERIMENT = "gltr-sweeps"
TRIAL_MAPS = {f"{SWEEP}-trial-a": [0.2113, 0.3517], f"{SWEEP}-trial-b": [0.1892, 0.2764]}
START_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running tracking server: its URL and the admin credentials it was started with, if any."""

    url: str
    admin: tuple[str, str] | None = None


def start_server(home: Path, log: Path, basic_auth: bool) -> tuple[subprocess.Popen, Server]:
    """`python -m gltr_platform.tracking_server` on a free port, once /health answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    admin = None
    if basic_auth:
        admin = ("admin", secrets.token_urlsafe(16))
        env.update(MLFLOW_AUTH_ADMIN_PASSWORD=admin[1], MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(32))
    command = [sys.executable, "-m", "gltr_platform.tracking_server", "--home", str(home), "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, *(["--basic-auth"] if basic_auth else [])],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", admin)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tracking server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5):
                return proc, server
        except urllib.error.HTTPError:
            return proc, server  # up, and asking for a login
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    stop_server(proc)
    raise AssertionError(f"tracking server not up within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow server and its uvicorn workers), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=10)


def record_sweep(uri: str) -> tuple[str, str, dict[str, str]]:
    """A sweep as tune/sweep.py records one: parent run, trial child runs with metrics, champion alias.

    Returns the experiment id, the parent run id and the trial runs' ids by name.
    """
    parent = start_run(uri, EXPERIMENT, SWEEP, {"search_space": "{}"}, {"gltr.sweep_name": SWEEP, "gltr.role": "sweep"})
    client = MlflowClient(uri)
    children = {}
    for name, maps in TRIAL_MAPS.items():
        run_id = start_run(uri, EXPERIMENT, name, {"model.dilations": "[1,2,4]"}, {"gltr.sweep_name": SWEEP}, parent)
        now = int(time.time() * 1000)
        history = [Metric("val_mAP", value, now + epoch, epoch) for epoch, value in enumerate(maps, start=1)]
        client.log_batch(run_id, metrics=[*history, Metric("best_val_mAP", max(maps), now, len(maps))])
        children[name] = run_id
    best = max(TRIAL_MAPS, key=lambda name: max(TRIAL_MAPS[name]))
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=children[best]):
            info = mlflow.pytorch.log_model(
                torch.nn.Linear(4, 2), name="model", serialization_format="pickle", pip_requirements=["torch"]
            )
        version = mlflow.register_model(info.model_uri, "gltr").version
    finally:
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias("gltr", "champion", version)
    for run_id in [*children.values(), parent]:
        end_run(uri, run_id, failed=False)
    return client.get_experiment_by_name(EXPERIMENT).experiment_id, parent, children


def browse(url: str, screenshot: Path, profile: Path, budget_ms: int = 20000, may_refuse_auth: bool = False) -> str:
    """Open `url` in headless Chromium: its DOM once the page has had `budget_ms` of virtual time, and a screenshot.

    `may_refuse_auth`: the page answers 401 with a Basic challenge; newer headless Chromium (156.0.8078.114)
    then fails the load (net::ERR_INVALID_AUTH_CREDENTIALS) and writes no screenshot, which is the refusal.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium (apt-get install chromium); .ci/run does")
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180)
    if may_refuse_auth and "ERR_INVALID_AUTH_CREDENTIALS" in shot.stderr and not screenshot.exists():
        return dom.stdout
    assert shot.returncode == 0 and screenshot.stat().st_size > 0, shot.stderr[-2000:]
    if os.environ.get("ARTIFACTS_DIR"):
        keep = Path(os.environ["ARTIFACTS_DIR"]) / "mlflow-ui"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, keep / screenshot.name)
    return dom.stdout


def visible_text(dom: str) -> str:
    """The page's text, without markup, scripts or styles, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL | re.IGNORECASE)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture(scope="module")
def open_server(tmp_path_factory) -> Iterator[tuple[Server, str, str, dict[str, str]]]:
    base = tmp_path_factory.mktemp("mlflow-open")
    proc, server = start_server(base / "home", base / "server.log", basic_auth=False)
    try:
        yield server, *record_sweep(server.url)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("mlflow-auth")
    proc, server = start_server(base / "home", base / "server.log", basic_auth=True)
    try:
        yield server
    finally:
        stop_server(proc)


def search_experiments(server: Server, credentials: tuple[str, str] | None) -> tuple[int, dict]:
    """POST /api/2.0/mlflow/experiments/search, optionally with HTTP basic credentials."""
    request = urllib.request.Request(
        f"{server.url}/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 10}).encode(),
        headers={"Content-Type": "application/json"},
    )
    if credentials:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, {}


def test_runs_page_lists_the_sweep_parent_and_its_trials_by_best_val_map(open_server, tmp_path):
    server, experiment_id, _, children = open_server
    # Sorted by a metric, the table lists child runs beside their parent instead of folded under it.
    query = urllib.parse.urlencode(
        {
            "searchFilter": f"tags.`gltr.sweep_name` = '{SWEEP}'",
            "orderByKey": "metrics.`best_val_mAP`",
            "orderByAsc": "false",
        },
        quote_via=urllib.parse.quote,
    )
    url = f"{server.url}/#/experiments/{experiment_id}/runs?{query}"
    text = visible_text(browse(url, tmp_path / "experiment-runs.png", tmp_path / "profile"))
    assert "Sort: best_val_mAP" in text and f"{len(children) + 1} matching runs" in text, text[:3000]
    order = [text.find(f" {name} ") for name in (f"{SWEEP}-trial-a", f"{SWEEP}-trial-b", SWEEP)]
    assert -1 not in order and order == sorted(order), text[:3000]  # best trial first, the parent (no metric) last


def test_compare_page_shows_the_trials_metrics(open_server, tmp_path):
    server, experiment_id, parent, children = open_server
    runs = urllib.parse.quote(json.dumps([parent, *children.values()]))
    url = f"{server.url}/#/compare-runs?runs={runs}&experiments={urllib.parse.quote(json.dumps([experiment_id]))}"
    text = visible_text(browse(url, tmp_path / "compare-runs.png", tmp_path / "profile"))
    assert f"Run Name: {SWEEP} {SWEEP}-trial-a {SWEEP}-trial-b" in text, text[:3000]
    # One row per metric, one column per run; the parent logged none (NaN); values shown to 3 decimals.
    assert "best_val_mAP" in text and "val_mAP" in text, text[:3000]
    assert text.count("NaN 0.352 0.276") == 2, text[:3000]


def test_registered_model_page_shows_the_champion_alias(open_server, tmp_path):
    server = open_server[0]
    text = visible_text(browse(f"{server.url}/#/models/gltr", tmp_path / "model-gltr.png", tmp_path / "profile"))
    assert "gltr" in text and "champion" in text, text[-3000:]
    assert "Version 1" in text or "v1" in text.replace(" ", ""), text[-3000:]


def test_basic_auth_api_refuses_anonymous_clients_and_accepts_the_admin(auth_server):
    status, _ = search_experiments(auth_server, None)
    assert status == 401
    status, _ = search_experiments(auth_server, ("admin", "not-the-password"))
    assert status == 401
    status, body = search_experiments(auth_server, auth_server.admin)
    assert status == 200 and any(e["name"] == "Default" for e in body["experiments"])


def test_basic_auth_ui_shows_no_runs_without_a_login(auth_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.admin[1])
    run_id = start_run(auth_server.url, EXPERIMENT, "private-trial", {}, {"gltr.sweep_name": SWEEP})
    end_run(auth_server.url, run_id, failed=False)
    experiment_id = MlflowClient(auth_server.url).get_experiment_by_name(EXPERIMENT).experiment_id
    url = f"{auth_server.url}/#/experiments/{experiment_id}/runs"
    dom = browse(url, tmp_path / "basic-auth-anonymous.png", tmp_path / "profile", may_refuse_auth=True)
    # The server answers 401 to the page itself: not even the app, let alone the experiment or its runs.
    assert "private-trial" not in dom and run_id not in dom and EXPERIMENT not in dom
    assert "Training runs" not in visible_text(dom)
