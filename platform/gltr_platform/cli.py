"""What every entry point shares: exit codes, one-line errors, and connecting to Ray.

Exit codes: 0 success; 1 the work failed (training diverged, a dataset could not be read);
2 bad input (command line, configuration, dataset spec); 3 a service could not be reached (MLflow,
S3 endpoint, Ray cluster); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gltr_platform.data.index import DatasetError
from gltr_platform.errors import ConfigError, ServiceUnavailable, TrackingError

if TYPE_CHECKING:
    from gltr_platform.train.config import ScalingSection

OK, FAILED, BAD_INPUT, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "alembic", "mlflow.store.db.utils")
RAY_TOKEN_FILE = Path("~/.ray/auth_token")  # where Ray 2.60 writes the token it generates


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with BAD_INPUT."""

    def error(self, message: str) -> NoReturn:
        self.exit(BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def exit_code_for(error: BaseException) -> int:
    """Map an exception to the documented exit code."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(error, TrackingError | ServiceUnavailable | ConnectionError):
        return UNREACHABLE
    if isinstance(error, ConfigError | DatasetError | ValueError | FileNotFoundError):
        return BAD_INPUT
    return FAILED


def run_main(main: Callable[[], int | None], debug: bool) -> NoReturn:
    """Run `main`, turning errors into one `error: ...` line (a traceback only with --debug)."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    if not debug:  # library chatter ("Found credentials in environment variables.") is not for users
        for noisy in QUIET_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = main() or OK
    except BaseException as e:  # noqa: BLE001 - the one place errors become exit codes
        if isinstance(e, SystemExit):
            raise
        if debug:
            traceback.print_exc()
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        code = exit_code_for(e)
    sys.stdout.flush()
    sys.exit(code)


def init_ray(address: str | None, **kwargs) -> bool:
    """Connect to a running cluster (address or $RAY_ADDRESS), or start a local one when there is none.

    True when it started a local instance (whose resources are all there will ever be).

    A local instance serves its dashboard on 127.0.0.1 only and keeps Ray's token authentication (on by
    default in Ray 2.60), with the token file readable by its owner alone.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs.setdefault("dashboard_host", "127.0.0.1")  # ignored when joining a cluster
    with contextlib.suppress(OSError):  # where Ray writes a new token: private from its creation on
        RAY_TOKEN_FILE.expanduser().parent.mkdir(mode=0o700, exist_ok=True)
    try:
        ray.init(address=address, log_to_driver=True, **kwargs)
    except ConnectionError as e:
        raise ServiceUnavailable(f"cannot connect to the Ray cluster at {address}: {e}") from None
    restrict_auth_token()
    # Without an address ray.init also joins a cluster already running on this machine (`ray start`):
    # only a head node this process started itself is a local instance.
    node = ray._private.worker._global_node
    return node is not None and node.head


def joins_cluster(address: str | None) -> bool:
    """Whether init_ray(address) joins a running cluster (cheap, leaves nothing) rather than starting one.

    A job's driver always joins ($RAY_ADDRESS is set for it): it connects before reading the dataset, so
    what other hosts cannot reach is refused first; a local instance starts only once the inputs are read.
    """
    return bool(address or os.environ.get("RAY_ADDRESS"))


def connect_ray(address: str | None, scaling: ScalingSection, tracking_uri: str | None, storage_path: str) -> None:
    """Join (or start) Ray, then refuse what the cluster's nodes could not run or reach.

    A local instance has all the resources it will ever have, so a run must fit it; a multi-host cluster
    needs a tracking server, checkpoint storage and endpoints that every host can reach.
    """
    from gltr_platform.multihost import check_reachable_from_every_host, is_multi_host
    from gltr_platform.train.tracking import resolve_tracking_uri

    if init_ray(address):  # a cluster joined by address may autoscale: Ray Train checks against it
        check_cluster_fits(scaling)
    if is_multi_host():
        check_reachable_from_every_host(resolve_tracking_uri(tracking_uri), storage_path)


def restrict_auth_token() -> None:
    """Make our Ray auth token files owner-only: Ray 2.60 writes ~/.ray/auth_token with the default umask."""
    for name in {os.environ.get("RAY_AUTH_TOKEN_PATH") or str(RAY_TOKEN_FILE), str(RAY_TOKEN_FILE)}:
        path = Path(name).expanduser()
        with contextlib.suppress(OSError):  # absent, or not ours to change
            if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
                path.chmod(0o600)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_cluster_fits(scaling: ScalingSection) -> None:
    """ConfigError when one run's workers need more CPUs or GPUs than the connected Ray instance has.

    For a local instance only: a cluster joined by address may add nodes on demand (GPU nodes with
    min_workers 0 are not up when a job is submitted), and Ray Train checks against its autoscaler.
    """
    import ray

    have = ray.cluster_resources()
    need = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        need["GPU"] = scaling.gpus_per_worker
    for resource, per_worker in need.items():
        total = scaling.num_workers * per_worker
        if total > have.get(resource, 0) + 1e-9:
            raise ConfigError(
                f"{scaling.num_workers} workers x {per_worker:g} {resource} need {total:g} {resource}s, but the "
                f"Ray cluster has {have.get(resource, 0):g}: lower --workers (scaling.num_workers) or "
                f"scaling.{resource.lower()}s_per_worker, or add nodes"
            )


def parse_overrides(pairs: list[str]) -> dict:
    """`--set section.key=value` pairs into a dict of parsed values."""
    from gltr_platform.train.config import parse_value

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected section.key=value, e.g. model.dilations=[1,2,4]")
        overrides[key.strip()] = parse_value(value)
    return overrides
