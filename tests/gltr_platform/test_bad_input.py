"""Every entry point on bad input: one `error: ...` line, the documented exit code, nothing left behind.

The entry points are the real scripts: experiments/train_gltr.py, tune_dilations.py, evaluate.py and
`python -m gltr_platform.data`. Exit codes are gltr_platform/cli.py's (2 bad input, 3 unreachable
service) for the experiments; the data command line documents its own (2 usage, 1 unreadable dataset).
train_gltr.py's --help and --print-config share the sandbox, so they are specified here too.

Every case runs in a fresh interpreter with its own working directory, HOME, MLflow sqlite store, Ray
temp directory and AWS configuration (no real credentials reachable; S3 is moto's server on
127.0.0.1), so whatever a case writes is visible. A case that starts Ray when it should not is stopped
at once, with everything it spawned, and fails; the one case that must start Ray (more workers than the
cluster has) must still exit cleanly, with its Ray processes gone. Cases run two at a time (one per
core); each test reads its case's outcome.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import scipy.io
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from gltr_platform.cli import BAD_INPUT, UNREACHABLE
from gltr_platform.data.pack import pack, read_raw
from gltr_platform.data.synthetic import SyntheticConfig, generate_synthetic_mars

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {
    "train": [str(REPO / "experiments" / "train_gltr.py")],
    "tune": [str(REPO / "experiments" / "tune_dilations.py")],
    "evaluate": [str(REPO / "experiments" / "evaluate.py")],
    "data": ["-m", "gltr_platform.data"],
}
LIMIT_S = 120  # stop a case that hangs; far above the ~1-40 s a case takes on 2 busy cores
BUCKET = "gltr-bad-input"
# Ray's own log lines while it starts (e.g. "... INFO worker.py:2029 -- Started a local Ray instance.")
RAY_LOG = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING) \w+\.py:\d+ -- ")
S3_ENV = {
    "AWS_ENDPOINT_URL": "{s3}",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
TINY = SyntheticConfig(
    num_ids=6, num_test_ids=4, num_cameras=2, tracklets_per_id=2, min_frames=3, max_frames=5, height=32, width=16
)


@dataclass(frozen=True)
class Case:
    cli: str  # a key of COMMANDS
    args: tuple[str, ...]
    code: int = BAD_INPUT
    says: str = ""  # text the error line must contain
    files: dict[str, str] = field(default_factory=dict)  # written below {inputs}/ before the run
    setup: Callable[[Path, str], None] | None = None  # (inputs, tracking URI): builds richer inputs
    env: dict[str, str] = field(default_factory=dict)  # added to the sandbox's environment
    starts_ray: bool = False  # the check needs a Ray cluster to compare against


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    ray_started: bool  # Ray started where the case must not start it
    ray_left_running: bool  # processes the case spawned outlived it
    home: Path
    cwd: Path
    inputs: Path
    inputs_before: list[str]
    tracking_uri: str


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_mars(inputs: Path) -> Path:
    return generate_synthetic_mars(inputs / "mars", TINY)


def corrupt_mat(inputs: Path, _: str) -> None:
    """A MARS directory whose track info is not a .mat file (a truncated download)."""
    (tiny_mars(inputs) / "info" / "tracks_test_info.mat").write_bytes(b"MATLAB 5.0 MAT-file\x00\x01garbage")


def mat_without_rows(inputs: Path, _: str) -> None:
    """A MARS directory whose training track info lists no tracklet."""
    scipy.io.savemat(tiny_mars(inputs) / "info" / "tracks_train_info.mat", {"track_train_info": [[1, 2, 3]]})


def dukev_without_identities(inputs: Path, _: str) -> None:
    for split in ("train", "query", "gallery"):
        (inputs / "dukev" / split).mkdir(parents=True)


def packed(inputs: Path, _: str) -> None:
    """A valid packed dataset at {inputs}/packed."""
    pack(tiny_mars(inputs), inputs / "packed", progress=False)


def packed_queries_absent_from_gallery(inputs: Path, _: str) -> None:
    """A packed dataset whose gallery holds none of the query identities."""
    index = read_raw(tiny_mars(inputs))
    queried = {t.pid for t in index.query}
    index.gallery = [t for t in index.gallery if t.pid not in queried]
    pack(index, inputs / "packed", progress=False)


def empty_store(_: Path, tracking_uri: str) -> None:
    MlflowClient(tracking_uri).search_experiments()  # creates the store's tables


def registered_model_without_alias(_: Path, tracking_uri: str) -> None:
    MlflowClient(tracking_uri).create_registered_model("gltr")


MANIFEST_V2 = json.dumps({"format": "gltr-packed", "version": 2, "dataset": "mars", "shards": []})
SPACE = {"dilations": [[1, 2, 3]], "seq_len": [2], "attention_width": [16]}


def space(**changes) -> dict[str, str]:
    """A search space file {inputs}/space.yaml: SPACE with `changes` (None removes a key)."""
    content = {k: v for k, v in {**SPACE, **changes}.items() if v is not None}
    return {"space.yaml": yaml.safe_dump(content)}


BAD_INPUT_CASES = {
    # train_gltr.py: the command line and the configuration
    "set-without-equals": Case("train", ("--set", "train.epochs"), says="--set 'train.epochs'"),
    "set-key-without-section": Case("train", ("--set", "epochs=3"), says="'epochs'"),
    "unknown-key": Case("train", ("--set", "train.epoch=3"), says="'train.epoch'"),
    "wrong-type": Case("train", ("--set", "train.epochs=ten"), says="train.epochs"),
    "unknown-preset": Case("train", ("--preset", "gpu-demo"), says="'gpu-demo'"),
    "zero-dilation": Case("train", ("--set", "model.dilations=[0,1,2]"), says="model.dilations"),
    "negative-dilation": Case("train", ("--set", "model.dilations=[-1,2]"), says="positive integers"),
    "duplicated-dilations": Case("train", ("--set", "model.dilations=[1,2,2]"), says="distinct"),
    "fractional-dilations": Case("train", ("--set", "model.dilations=[1,2.5]"), says="[1, 2.5]"),
    "seq-len-zero": Case("train", ("--set", "data.seq_len=0"), says="data.seq_len"),
    "attention-width-zero": Case("train", ("--set", "model.attention_width=0"), says="attention width must be >= 1"),
    "unknown-backbone": Case("train", ("--set", "model.backbone=vgg16"), says="'vgg16'"),
    "batch-not-divisible-by-k": Case("train", ("--set", "train.batch_size=9"), says="num_instances"),
    "resume-without-name": Case("train", ("--resume",), says="--name"),
    "missing-config-file": Case("train", ("--config", "{inputs}/missing.yaml"), says="missing.yaml"),
    "config-not-yaml": Case(
        "train", ("--config", "{inputs}/bad.yaml"), says="bad.yaml", files={"bad.yaml": "train: {epochs: 3\n"}
    ),
    "config-unknown-section": Case(
        "train", ("--config", "{inputs}/c.yaml"), says="'trainer'", files={"c.yaml": "trainer: {epochs: 3}\n"}
    ),
    "unreachable-tracking-server": Case(
        "train", ("--tracking-uri", "http://127.0.0.1:{port}"), UNREACHABLE, "http://127.0.0.1:"
    ),
    "more-workers-than-the-cluster": Case(
        "train", ("--data", "{inputs}/packed", "--workers", "64"), says="need 64 CPUs", setup=packed, starts_ray=True
    ),
    # train_gltr.py: the dataset
    "missing-data-directory": Case("train", ("--data", "{inputs}/no-such-dataset"), says="no-such-dataset"),
    "malformed-s3-uri": Case("train", ("--data", "s3:/bucket/mars"), says="s3:/bucket/mars"),
    "s3-bucket-missing": Case("train", ("--data", "s3://no-such-bucket/mars"), says="'no-such-bucket'", env=S3_ENV),
    "s3-prefix-missing": Case("train", ("--data", f"s3://{BUCKET}/no/such/prefix"), says="no/such/prefix", env=S3_ENV),
    "s3-endpoint-unreachable": Case(
        "train",
        ("--data", f"s3://{BUCKET}/mars"),
        UNREACHABLE,
        "cannot reach the S3 endpoint",
        env={**S3_ENV, "AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"},
    ),  # fmt: skip
    "s3-no-credentials": Case(
        "train", ("--data", f"s3://{BUCKET}/mars"), says="no AWS credentials", env={"AWS_ENDPOINT_URL": "{s3}"}
    ),
    "manifest-of-another-version": Case(
        "train", ("--data", "{inputs}/packed"), says="manifest version 2", files={"packed/manifest.json": MANIFEST_V2}
    ),
    "queries-absent-from-gallery": Case(
        "train", ("--data", "{inputs}/packed"), says="query identities", setup=packed_queries_absent_from_gallery
    ),
    # tune_dilations.py
    "tune-zero-trials": Case("tune", ("--trials", "0"), says="--trials: must be at least 1"),
    "tune-unknown-preset": Case("tune", ("--preset", "huge"), says="'huge'"),
    "tune-bad-override": Case("tune", ("--set", "model.dilations=[0]"), says="model.dilations"),
    "tune-space-unknown-key": Case(
        "tune", ("--space", "{inputs}/space.yaml"), says="'dilation'", files=space(dilations=None, dilation=[[1, 2]])
    ),
    "tune-space-empty-dilations": Case(
        "tune", ("--space", "{inputs}/space.yaml"), says="dilations", files=space(dilations=[])
    ),
    "tune-space-invalid-combination": Case(
        "tune", ("--space", "{inputs}/space.yaml"), says="is invalid", files=space(dilations=[[1, 2], [2, 2]])
    ),
    "tune-space-not-a-mapping": Case(
        "tune", ("--space", "{inputs}/space.yaml"), says="expected a mapping", files={"space.yaml": "- [1, 2]\n"}
    ),
    "tune-resume-unknown-sweep": Case("tune", ("--resume", "--name", "nope"), says="no sweep named 'nope'"),
    # evaluate.py
    "evaluate-unknown-model": Case(
        "evaluate", ("--model", "models:/nope@champion", "--data", "synthetic"), says="name=nope", setup=empty_store
    ),
    "evaluate-unknown-alias": Case(
        "evaluate",
        ("--model", "models:/gltr@nope", "--data", "synthetic"),
        says="alias nope",
        setup=registered_model_without_alias,
    ),
    "evaluate-malformed-model-uri": Case(
        "evaluate", ("--model", "gltr", "--data", "synthetic"), says="models:/NAME@ALIAS", setup=empty_store
    ),
    "evaluate-missing-store": Case("evaluate", ("--data", "synthetic"), says="no MLflow store"),
    "evaluate-unreachable-tracking-server": Case(
        "evaluate", ("--tracking-uri", "http://127.0.0.1:{port}", "--data", "synthetic"), UNREACHABLE, "127.0.0.1"
    ),
    "evaluate-without-data": Case("evaluate", (), says="--data"),
    # python -m gltr_platform.data
    "data-corrupt-mat": Case(
        "data", ("pack", "{inputs}/mars", "{inputs}/out"), BAD_INPUT, "tracks_test_info.mat", setup=corrupt_mat
    ),
    "data-mat-of-wrong-shape": Case(
        "data", ("pack", "{inputs}/mars", "{inputs}/out"), BAD_INPUT, "N x 4", setup=mat_without_rows
    ),
    "data-no-identities": Case(
        "data",
        ("pack", "{inputs}/dukev", "{inputs}/out"),
        BAD_INPUT,
        "holds no tracklets",
        setup=dukev_without_identities,
    ),  # fmt: skip
    "data-manifest-of-another-version": Case(
        "data",
        ("info", "{inputs}/packed"),
        BAD_INPUT,
        "manifest version 2",
        files={"packed/manifest.json": MANIFEST_V2},
    ),  # fmt: skip
    "data-malformed-s3-uri": Case("data", ("sync", "s3://Bad_Bucket/mars"), BAD_INPUT, "invalid bucket name"),
    "data-s3-bucket-missing": Case(
        "data", ("sync", "s3://no-such-bucket/mars"), BAD_INPUT, "'no-such-bucket' does not exist", env=S3_ENV
    ),
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
    "help": Case("train", ("--help",), code=0),
    "print-config": Case("train", PRINT_CONFIG, code=0),
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


def group_alive(pid: int, grace_s: float) -> bool:
    """Whether process group `pid` still has members after `grace_s` seconds."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def sandbox_env(base: Path, home: Path, ray_tmp: Path, tracking_uri: str) -> dict[str, str]:
    """The inherited environment minus anything that reaches a real service or real credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "MLFLOW_"))}
    nowhere = str(base / "no-aws-config")  # does not exist: no profile, no credentials file
    return {
        **env,
        "HOME": str(home),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_USAGE_STATS_ENABLED": "0",
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "AWS_CONFIG_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def run_case(case: Case, base: Path, s3_endpoint: str) -> Outcome:
    """Run `case` in a sandbox under `base`; stop it as soon as it starts Ray, unless it must."""
    inputs, home, cwd = base / "inputs", base / "home", base / "cwd"
    for directory in (inputs, home, cwd):
        directory.mkdir(parents=True)
    tracking_uri = f"sqlite:///{base / 'mlflow.db'}"
    for name, text in case.files.items():
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        (inputs / name).write_text(text)
    if case.setup is not None:
        case.setup(inputs, tracking_uri)
    inputs_before = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="gltr-cli-ray-"))  # short: Ray's socket paths must fit
    values = {"inputs": inputs, "port": closed_port(), "s3": s3_endpoint}
    env = sandbox_env(base, home, ray_tmp, tracking_uri)
    env.update({k: v.format(**values) for k, v in case.env.items()})
    args = [a.format(**values) for a in case.args]
    start = time.monotonic()
    ray_started = ray_left_running = False
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, *COMMANDS[case.cli], *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            while proc.poll() is None and time.monotonic() - start < LIMIT_S:
                if not case.starts_ray and any(ray_tmp.iterdir()):
                    ray_started = True
                    break
                time.sleep(0.1)
            seconds = time.monotonic() - start
            if case.starts_ray and proc.poll() is not None:
                ray_left_running = group_alive(proc.pid, grace_s=15)
        finally:
            if proc.poll() is None or ray_left_running:
                stop_group(proc)
            shutil.rmtree(ray_tmp, ignore_errors=True)
        out.seek(0)
        err.seek(0)
        return Outcome(
            proc.returncode, out.read(), err.read(), seconds, ray_started, ray_left_running,
            home, cwd, inputs, inputs_before, tracking_uri,
        )  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(s3_server, tmp_path_factory) -> dict[str, Outcome]:
    """Every case's outcome, the cases run two at a time (one per core)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_case, case, tmp_path_factory.mktemp(name), s3_server.endpoint_url)
            for name, case in CASES.items()
        }
        return {name: future.result() for name, future in futures.items()}


def runs_in(tracking_uri: str) -> list:
    """Every run, deleted or not, in a sqlite store; an absent store holds none."""
    if not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        return []
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(experiments, run_view_type=ViewType.ALL) if experiments else []


def assert_left_nothing_behind(outcome: Outcome, ray: bool = False) -> None:
    """No Ray, nothing in HOME (no cache, no checkpoints) or the working directory, no run, no new input.

    A case that must start Ray may leave only Ray's own auth token in HOME (~/.ray/auth_token, written
    on a first start).
    """
    assert not outcome.ray_started, f"started Ray: {outcome.stderr[-400:]}"
    assert not outcome.ray_left_running, "Ray processes outlived the command"
    assert sorted(p.name for p in outcome.home.iterdir()) == (
        [".ray"] if ray and (outcome.home / ".ray").exists() else []
    )
    assert sorted(p.name for p in outcome.cwd.iterdir()) == []
    assert sorted(str(p.relative_to(outcome.inputs)) for p in outcome.inputs.rglob("*")) == outcome.inputs_before
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


@pytest.mark.parametrize("name", list(BAD_INPUT_CASES))
def test_bad_input_exits_with_one_error_line_and_leaves_nothing(outcomes, name):
    case, outcome = BAD_INPUT_CASES[name], outcomes[name]

    assert outcome.code == case.code, outcome.stderr
    lines = [line for line in outcome.stderr.strip().splitlines() if not (case.starts_ray and RAY_LOG.match(line))]
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    assert case.says in lines[0]
    assert "Traceback" not in outcome.stderr and outcome.stdout == ""
    assert_left_nothing_behind(outcome, ray=case.starts_ray)
