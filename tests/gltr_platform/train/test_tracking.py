"""MLflow tracking: where the store is, failing fast when it is unreachable, what is logged, and when.

The runs and metrics go to a real sqlite store in a temporary directory (one per module: creating its
tables takes seconds); the reachability checks talk to real sockets on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

from gltr_platform.train.tracking import (
    DEFAULT_TRACKING_URI,
    EpochMetricsLogger,
    TrackingError,
    check_tracking_store,
    end_run,
    resolve_tracking_uri,
    safe_params,
    start_run,
)

FAIL_FAST_S = 10  # a bound, not a benchmark: the check must not hang on a dead store


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A fresh sqlite tracking store; its URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def http_status(request) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering every GET with status `request.param`; its URL."""
    status = request.param

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- resolve_tracking_uri -------------------------------------------------------------------------


def test_the_flag_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")

    assert resolve_tracking_uri("http://from-flag:5000") == "http://from-flag:5000"


def test_the_environment_wins_over_the_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")

    assert resolve_tracking_uri(None) == "http://from-env:5000"


def test_the_default_is_an_absolute_sqlite_file_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    assert DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_relative_sqlite_uri_is_made_absolute_so_every_worker_finds_the_same_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path / 'runs' / 'm.db'}"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


# --- check_tracking_store -------------------------------------------------------------------------


def test_an_http_store_on_a_closed_port_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        check_tracking_store(uri)

    assert time.monotonic() - start < FAIL_FAST_S
    assert uri in str(caught.value) and "MLFLOW_TRACKING_URI" in str(caught.value)


def test_a_sqlite_store_in_a_missing_directory_fails_fast_naming_the_uri(tmp_path):
    uri = f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        check_tracking_store(uri)

    assert time.monotonic() - start < FAIL_FAST_S
    assert uri in str(caught.value) and "missing" in str(caught.value)
    assert not (tmp_path / "missing").exists()


def test_a_sqlite_store_in_an_existing_directory_passes_without_creating_it(tmp_path):
    check_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")

    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("http_status", [200, 401, 403], indirect=True)
def test_a_server_that_answers_health_is_up_even_when_it_wants_credentials(http_status):
    check_tracking_store(http_status)


@pytest.mark.parametrize("http_status", [404, 500], indirect=True)
def test_a_server_whose_health_endpoint_fails_is_reported_with_its_status(http_status):
    with pytest.raises(TrackingError) as caught:
        check_tracking_store(http_status)

    assert http_status in str(caught.value) and "HTTP" in str(caught.value)


@pytest.mark.parametrize("http_status", [200], indirect=True)
def test_a_uri_with_credentials_reaches_its_server(http_status):
    check_tracking_store(http_status.replace("http://", "http://alice:s3cret@"))


def test_the_credentials_of_an_unreachable_uri_are_not_shown():
    with pytest.raises(TrackingError) as caught:
        check_tracking_store(f"http://alice:s3cret@127.0.0.1:{closed_port()}")

    assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)


# --- safe_params ----------------------------------------------------------------------------------


def test_safe_params_drops_secret_looking_keys():
    params = {
        "aws_secret_access_key": "a",
        "db.password": "b",
        "hub.token": "c",
        "s3.session_key": "d",
        "gcp.credentials": "e",
        "train.epochs": 3,
    }

    assert safe_params(params) == {"train.epochs": "3"}


def test_safe_params_strips_user_and_password_from_uris():
    params = {
        "run.tracking_uri": "https://alice:s3cret@mlflow.example.com/",
        "data.source": "s3://bucket/mars",
    }

    assert safe_params(params) == {
        "run.tracking_uri": "https://mlflow.example.com/",
        "data.source": "s3://bucket/mars",
    }


def test_safe_params_writes_every_value_as_a_string_and_none_as_empty():
    assert safe_params({"a": None, "b": 0.5, "c": True, "d": "x" * 7000}) == {
        "a": "",
        "b": "0.5",
        "c": "True",
        "d": "x" * 6000,  # MLflow's limit for a param value
    }


@pytest.mark.parametrize("key", ["service.api_key", "hub.apikey", "ssh.private_key"])
def test_safe_params_drops_api_and_private_keys(key):
    assert safe_params({key: "x"}) == {}


# --- start_run / end_run --------------------------------------------------------------------------


def test_start_run_records_params_tags_and_parent_and_leaves_the_run_running(store):
    parent = start_run(store, "tracking-tests", "parent", {}, {})
    params = {
        "model.dilations": "1,2,3",
        "run.tracking_uri": "http://alice:s3cret@mlflow:5000",
        "aws_secret_access_key": "never",
        **{f"many.p{i:03d}": i for i in range(150)},  # more than one MLflow batch (100)
    }
    run_id = start_run(store, "tracking-tests", "child", params, {"git.commit": "abc123"}, parent)

    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "child"
    assert run.data.params["model.dilations"] == "1,2,3"
    assert run.data.params["run.tracking_uri"] == "http://mlflow:5000"
    assert "aws_secret_access_key" not in run.data.params
    assert sum(k.startswith("many.") for k in run.data.params) == 150
    assert run.data.tags["git.commit"] == "abc123"
    assert run.data.tags["mlflow.parentRunId"] == parent


def test_start_run_reuses_an_existing_experiment(store):
    first = start_run(store, "tracking-reuse", "a", {}, {})
    second = start_run(store, "tracking-reuse", "b", {}, {})

    client = MlflowClient(store)
    assert client.get_run(first).info.experiment_id == client.get_run(second).info.experiment_id


@pytest.mark.parametrize(("failed", "status"), [(False, "FINISHED"), (True, "FAILED")])
def test_end_run_marks_the_run_finished_or_failed(store, failed, status):
    run_id = start_run(store, "tracking-tests", f"ends-{status}", {}, {})
    end_run(store, run_id, failed=failed)

    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == status and run.info.end_time is not None


# --- EpochMetricsLogger ---------------------------------------------------------------------------


def report(logger: EpochMetricsLogger, epoch: int, loss: float, **extra) -> None:
    """One `ray.train.report` round as the controller sees it: rank 0 first, then rank 1."""
    rank0 = {"epoch": epoch, "loss": loss, "param_checksum": 12.5, **extra}
    rank1 = {"epoch": epoch, "loss": loss + 100.0, "param_checksum": 12.5}
    logger.after_report(None, [rank0, rank1], None)


def series(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_rank_zeros_scalars_are_logged_with_the_epoch_as_step(store):
    run_id = start_run(store, "tracking-tests", "epochs", {}, {})
    logger = EpochMetricsLogger(store, run_id)

    report(logger, 1, 2.5, train_acc=0.25, lr=0.01, clips_per_s=40)
    report(logger, 2, 2.0, train_acc=0.5, lr=0.01, clips_per_s=41)

    assert series(store, run_id, "loss") == [(1, 2.5), (2, 2.0)]  # rank 0's, not rank 1's
    assert series(store, run_id, "train_acc") == [(1, 0.25), (2, 0.5)]
    assert series(store, run_id, "clips_per_s") == [(1, 40.0), (2, 41.0)]


def test_epoch_checksum_and_non_scalars_are_not_metrics(store):
    run_id = start_run(store, "tracking-tests", "non-scalars", {}, {})

    report(
        EpochMetricsLogger(store, run_id),
        1,
        1.0,
        test_cmc=[0.5, 0.75],
        note="text",
        converged=True,
        test_mAP=0.4,
    )

    logged = MlflowClient(store).get_run(run_id).data.metrics
    # The ranks' checksums become one metric: their spread (0 when DDP keeps the replicas identical).
    assert logged == {"loss": 1.0, "test_mAP": 0.4, "replica_param_spread": 0.0}


def test_an_epoch_at_or_below_the_last_logged_one_is_not_logged_again(store):
    run_id = start_run(store, "tracking-tests", "replayed", {}, {})
    logger = EpochMetricsLogger(store, run_id)
    for epoch in (1, 2, 3):
        report(logger, epoch, float(epoch))

    report(logger, 3, 30.0)  # the same epoch again, trained twice after a failure
    report(logger, 2, 20.0)  # Ray resumed from an older checkpoint
    report(logger, 4, 4.0)

    assert series(store, run_id, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_a_new_logger_for_the_same_run_continues_after_its_last_logged_epoch(store):
    run_id = start_run(store, "tracking-tests", "resumed", {}, {})
    first = EpochMetricsLogger(store, run_id)
    for epoch in (1, 2):
        report(first, epoch, float(epoch))

    resumed = EpochMetricsLogger(store, run_id)  # e.g. the driver restarted with --resume
    report(resumed, 2, 20.0)
    report(resumed, 3, 3.0)

    assert series(store, run_id, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]
