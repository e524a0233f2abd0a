"""Exceptions the entry points turn into exit codes; a light module so a CLI can report bad input
before it imports torch, Ray or MLflow."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration is invalid. The message names the key and what would be valid."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class ServiceUnavailable(RuntimeError):
    """A service the run needs (Ray cluster, S3 endpoint) cannot be reached."""


class TrainingFailed(RuntimeError):
    """Training could not run to the end; the message says what failed and what to do."""
