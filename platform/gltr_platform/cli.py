"""What every entry point shares: exit codes, one-line errors, and connecting to Ray.

Exit codes: 0 success; 1 the work failed (training diverged, a dataset could not be read);
2 bad input (command line, configuration, dataset spec); 3 a service could not be reached (MLflow,
S3 endpoint, Ray cluster); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from gltr_platform.data.index import DatasetError
from gltr_platform.errors import ConfigError, ServiceUnavailable, TrackingError

OK, FAILED, BAD_INPUT, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130


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


def init_ray(address: str | None, **kwargs) -> None:
    """Connect to a running cluster (address or $RAY_ADDRESS), or start a local one when there is none."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, log_to_driver=True, **kwargs)
    except ConnectionError as e:
        raise ServiceUnavailable(f"cannot connect to the Ray cluster at {address}: {e}") from None


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
