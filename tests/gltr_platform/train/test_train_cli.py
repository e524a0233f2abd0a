"""`experiments/train_gltr.py`: --help, --print-config, and bad input that fails before Ray starts.

Bad input exits 2 (3 for an unreachable service, see gltr_platform/cli.py) with exactly one `error: ...`
line and leaves nothing behind: no MLflow run, no checkpoint, no dataset cache, no Ray session.

Every case runs the real script in a fresh interpreter, with its own working directory, HOME, MLflow
store and Ray temp directory, so whatever a case writes is visible. The interpreter spends ~13 CPU-s
importing torch, Ray and MLflow before it parses a single argument, so the module runs all cases once,
two at a time, and each test reads its case's outcome. A case that starts Ray (its Ray temp directory
fills) is stopped at once, with everything it spawned, and fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from gltr_platform.cli import BAD_INPUT, UNREACHABLE

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "experiments" / "train_gltr.py"
LIMIT_S = 90  # stop a case that hangs; far above the ~10-25 s a case takes on 2 busy cores


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int = 0
    says: str = ""  # text the error line must contain
    files: dict[str, str] = field(default_factory=dict)  # written to {inputs}/ before the run


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    ray_started: bool
    home: Path
    cwd: Path
    tracking_uri: str


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BAD_INPUT_CASES = {
    "set-without-equals": Case(("--set", "train.epochs"), BAD_INPUT, "--set 'train.epochs'"),
    "set-key-without-section": Case(("--set", "epochs=3"), BAD_INPUT, "'epochs'"),
    "zero-dilation": Case(("--set", "model.dilations=[0,1,2]"), BAD_INPUT, "model.dilations"),
    "batch-not-divisible-by-k": Case(("--set", "train.batch_size=9"), BAD_INPUT, "num_instances"),
    "unknown-preset": Case(("--preset", "gpu-demo"), BAD_INPUT, "'gpu-demo'"),
    "unknown-key": Case(("--set", "train.epoch=3"), BAD_INPUT, "'train.epoch'"),
    "wrong-type": Case(("--set", "train.epochs=ten"), BAD_INPUT, "train.epochs"),
    "resume-without-name": Case(("--resume",), BAD_INPUT, "--name"),
    "missing-config-file": Case(("--config", "{inputs}/missing.yaml"), BAD_INPUT, "missing.yaml"),
    "config-not-yaml": Case(
        ("--config", "{inputs}/bad.yaml"), BAD_INPUT, "bad.yaml", {"bad.yaml": "train: {epochs: 3\n"}
    ),
    "unreachable-tracking-server": Case(
        ("--tracking-uri", "http://127.0.0.1:{port}"), UNREACHABLE, "http://127.0.0.1:"
    ),
    "missing-data-directory": Case(("--data", "{inputs}/no-such-dataset"), BAD_INPUT, "no-such-dataset"),
    "malformed-s3-uri": Case(("--data", "s3:/bucket/mars"), BAD_INPUT, "s3:/bucket/mars"),
}
PRINT_CONFIG = (
    "--print-config",
    "--data", "s3://bucket/mars",
    "--name", "demo",
    "--set", "train.epochs=3",
    "--set", "model.dilations=[1,2,4]",
    "--set", "optim.lr=1e-3",
)  # fmt: skip
CASES = {
    "help": Case(("--help",)),
    "print-config": Case(PRINT_CONFIG),
    **BAD_INPUT_CASES,
}


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the script and everything it spawned (its own process group: Ray's processes included)."""
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so the group can empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run_script(case: Case, base: Path) -> Outcome:
    """Run train_gltr.py for `case` in a sandbox under `base`; stop it as soon as it starts Ray."""
    inputs, home, cwd = base / "inputs", base / "home", base / "cwd"
    for directory in (inputs, home, cwd):
        directory.mkdir(parents=True)
    for name, text in case.files.items():
        (inputs / name).write_text(text)
    ray_tmp = Path(tempfile.mkdtemp(prefix="gltr-cli-ray-"))  # short: Ray's socket paths must fit
    tracking_uri = f"sqlite:///{base / 'mlflow.db'}"
    env = {
        **os.environ,
        "HOME": str(home),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_TMPDIR": str(ray_tmp),
    }
    env.pop("RAY_ADDRESS", None)
    port = closed_port()
    args = [a.format(inputs=inputs, port=port) for a in case.args]
    start = time.monotonic()
    ray_started = False
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            while proc.poll() is None and time.monotonic() - start < LIMIT_S:
                if any(ray_tmp.iterdir()):
                    ray_started = True
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                stop_group(proc)
            shutil.rmtree(ray_tmp, ignore_errors=True)
        out.seek(0)
        err.seek(0)
        return Outcome(proc.returncode, out.read(), err.read(), ray_started, home, cwd, tracking_uri)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every case's outcome, the cases run two at a time (one per core)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_script, case, tmp_path_factory.mktemp(name)) for name, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


def runs_in(tracking_uri: str) -> list:
    """Every run, deleted or not, in a sqlite store; an absent store holds none."""
    if not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        return []
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(experiments, run_view_type=ViewType.ALL) if experiments else []


def assert_left_nothing_behind(outcome: Outcome) -> None:
    assert not outcome.ray_started, "started Ray"
    assert list(outcome.cwd.iterdir()) == []
    assert not (outcome.home / "ray_results").exists(), "checkpoint storage created"
    assert not (outcome.home / ".cache" / "gltr-platform").exists(), "dataset cache created"
    assert runs_in(outcome.tracking_uri) == []


def test_help_documents_the_main_options(outcomes):
    outcome = outcomes["help"]

    assert outcome.code == 0, outcome.stderr
    for option in ("--preset", "--data", "--set", "KEY=VALUE", "--resume", "--name", "--print-config"):
        assert option in outcome.stdout
    assert "cpu-demo" in outcome.stdout and "model.dilations=[1,2,4]" in outcome.stdout
    assert_left_nothing_behind(outcome)


def test_print_config_shows_the_resolved_yaml_with_overrides_and_exits(outcomes):
    outcome = outcomes["print-config"]

    assert outcome.code == 0, outcome.stderr
    printed = yaml.safe_load(outcome.stdout)
    assert printed["preset"] == "cpu-demo"
    assert printed["train"]["epochs"] == 3 and printed["model"]["dilations"] == [1, 2, 4]
    assert printed["optim"]["lr"] == pytest.approx(1e-3)
    assert printed["data"]["source"] == "s3://bucket/mars" and printed["run"]["name"] == "demo"
    assert printed["model"]["backbone"] == "resnet18"  # the rest comes from the preset
    assert_left_nothing_behind(outcome)


@pytest.mark.parametrize(
    "name",
    [name for name in BAD_INPUT_CASES],
)
def test_bad_input_fails_before_ray_with_one_error_line_and_leaves_nothing(outcomes, name):
    case, outcome = BAD_INPUT_CASES[name], outcomes[name]

    assert not outcome.ray_started, f"started Ray: {outcome.stderr[-400:]}"
    assert outcome.code == case.code, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    assert case.says in lines[0]
    assert "Traceback" not in outcome.stderr and outcome.stdout == ""
    assert_left_nothing_behind(outcome)
