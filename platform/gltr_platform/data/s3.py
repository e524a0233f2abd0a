"""S3 at the edge: `s3://bucket/prefix` URIs, clients from the standard AWS configuration, clear errors.

Endpoint, region and credentials come only from the standard AWS configuration (`AWS_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `~/.aws/config`,
instance roles), so the same code talks to AWS, MinIO or a test server and no secret is ever passed
around or logged. Every botocore failure is turned into a `DatasetError` that names the bucket, object
or endpoint at fault and says what to do.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
import botocore.session
from boto3.s3.transfer import BaseSubscriber, S3UploadFailedError, TransferConfig, TransferManager
from botocore.config import Config
from s3transfer.exceptions import RetriesExceededError
from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS
from tqdm import tqdm

from gltr_platform.data.index import DatasetError
from gltr_platform.errors import ServiceUnavailable

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Attempts per request, botocore's own retries (standard mode: 500, 503 SlowDown, throttling, dropped
# connections; exponential backoff with jitter). Four ride out a brief outage; a refused connection
# still fails within a few seconds (backoff up to 1 + 2 + 4 s), a black-holed endpoint within ~15 s.
MAX_ATTEMPTS = 4

# Concurrent connections per process: S3 serves one connection at roughly 50-100 MB/s, so a node needs
# a few dozen in flight to fill its network link.
MAX_CONCURRENCY = 32

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_VALID_FORM = "s3://BUCKET/PREFIX, e.g. s3://my-datasets/mars/v1"


class EndpointUnreachable(DatasetError, ServiceUnavailable):
    """The S3 endpoint cannot be connected to at all (down, wrong URL, no network)."""


@dataclass(frozen=True)
class S3Uri:
    """A bucket and a key prefix (no leading or trailing slash; empty for the bucket root)."""

    bucket: str
    prefix: str

    def key(self, *parts: str) -> str:
        """The object key of `parts` below the prefix."""
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def child(self, *parts: str) -> str:
        """The full `s3://` URI of `parts` below the prefix, for messages."""
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def is_s3_uri(spec: object) -> bool:
    """Whether `spec` is meant as an S3 location (a string starting with `s3:`)."""
    return isinstance(spec, str) and spec.lower().startswith("s3:")


def parse_s3_uri(uri: str) -> S3Uri:
    """Split `s3://bucket/prefix`; DatasetError saying what a valid URI looks like otherwise."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise DatasetError(f"{uri!r} is not an S3 URI: expected {_VALID_FORM}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise DatasetError(
            f"{uri!r} has an invalid bucket name {bucket!r} (3-63 characters: lowercase letters, "
            f"digits, '.' and '-'): expected {_VALID_FORM}"
        )
    prefix = prefix.strip("/")
    # An empty segment ("a//b") is legal in S3 but almost always a typo that would silently miss data.
    if "//" in prefix or any(c in prefix for c in "\\\n\r\t"):
        raise DatasetError(f"{uri!r} has an empty or malformed path segment: expected {_VALID_FORM}")
    return S3Uri(bucket, prefix)


def make_client() -> Any:
    """An S3 client configured from the standard AWS configuration, with bounded retries.

    Connection failures must surface within seconds (a wrong endpoint should not hang a training
    job), so the connect timeout is short and standard-mode retries stop after MAX_ATTEMPTS; reads
    get a longer timeout because one request may stream a 16 MiB part.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=2,
        read_timeout=60,
        max_pool_connections=MAX_CONCURRENCY,
    )
    try:
        return boto3.session.Session(botocore_session=_botocore_session()).client("s3", config=config)
    # botocore reports a malformed AWS_ENDPOINT_URL as a bare ValueError.
    except (botocore.exceptions.BotoCoreError, ValueError) as e:
        raise DatasetError(
            f"cannot configure the S3 client from the AWS configuration ({e}): check "
            "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_PROFILE and ~/.aws/config"
        ) from e


_data_loader: Any = None


def _botocore_session() -> botocore.session.Session:
    """A fresh botocore session (configuration and credentials re-read) sharing one data loader.

    Every client would otherwise parse botocore's S3 service model JSON again (~0.1 s of CPU); the
    loader holds only those static files, so sharing it changes nothing else.
    """
    global _data_loader
    session = botocore.session.Session()
    if _data_loader is None:
        _data_loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _data_loader)
    return session


def transfer_config() -> TransferConfig:
    """Multipart, concurrent transfers: 16 MiB parts, MAX_CONCURRENCY requests in flight."""
    return TransferConfig(
        multipart_threshold=16 * MiB,
        multipart_chunksize=16 * MiB,
        max_concurrency=MAX_CONCURRENCY,
        use_threads=True,
    )


def create_transfer_manager(client: Any) -> TransferManager:
    """A transfer manager (a context manager) sharing one pool of MAX_CONCURRENCY connections."""
    return boto3.s3.transfer.create_transfer_manager(client, transfer_config())


def progress_bar(total: int, unit: str, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr, hidden unless `enabled` and stderr is a terminal (not logs, not CI)."""
    scale = unit == "B"
    return tqdm(
        total=total,
        unit=unit,
        unit_scale=scale,
        unit_divisor=1024 if scale else 1000,
        desc=desc,
        disable=not (enabled and sys.stderr.isatty()),
    )


class ProgressSubscriber(BaseSubscriber):
    """Feeds the bytes of a transfer into a shared progress bar (called from transfer threads)."""

    def __init__(self, bar: tqdm):
        self.bar = bar
        self._lock = threading.Lock()

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        with self._lock:
            self.bar.update(bytes_transferred)


def endpoint_of(client: Any) -> str:
    """The endpoint URL a client talks to (for messages)."""
    return str(client.meta.endpoint_url)


@contextmanager
def s3_errors(uri: S3Uri, what: str, client: Any | None = None) -> Iterator[None]:
    """Turn botocore failures inside the block into DatasetErrors about `what` (an s3:// URI)."""
    endpoint = endpoint_of(client) if client is not None else "the configured S3 endpoint"
    try:
        yield
    except DatasetError:
        raise
    except botocore.exceptions.NoCredentialsError as e:
        raise DatasetError(
            f"no AWS credentials found to read {what}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile in ~/.aws/credentials, "
            "or run where an instance/IAM role provides them"
        ) from e
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
    ) as e:
        # botocore's endpoint_url is the whole request URL; the client's endpoint is what to check.
        url = endpoint if client is not None else getattr(e, "kwargs", {}).get("endpoint_url", endpoint)
        raise EndpointUnreachable(
            f"cannot reach the S3 endpoint {url} (for {what}): check AWS_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL_S3 or the profile's endpoint_url, and the network"
        ) from e
    except botocore.exceptions.ReadTimeoutError as e:
        raise DatasetError(f"the S3 endpoint {endpoint} timed out while serving {what}") from e
    except botocore.exceptions.ClientError as e:
        raise _client_error(e, uri, what, endpoint) from e
    except S3UploadFailedError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, botocore.exceptions.ClientError):
            raise _client_error(cause, uri, what, endpoint) from e
        raise DatasetError(f"upload of {what} failed: {e}") from e
    except RetriesExceededError as e:  # s3transfer's own retries of a download's body
        raise DatasetError(
            f"download of {what} from {endpoint} kept failing ({e.last_exception}); try again later"
        ) from e
    except botocore.exceptions.BotoCoreError as e:
        raise DatasetError(f"S3 request for {what} failed at {endpoint}: {e}") from e


_MISSING = ("NoSuchKey", "404", "NotFound")


def _code(e: botocore.exceptions.ClientError) -> str:
    """The error code of an S3 error response ("404" for a HEAD that found nothing)."""
    return str(e.response.get("Error", {}).get("Code", ""))


def _no_bucket(uri: S3Uri, what: str, endpoint: str) -> DatasetError:
    return DatasetError(
        f"bucket {uri.bucket!r} does not exist at {endpoint} (needed for {what}): "
        "check the bucket name and the endpoint, or create the bucket"
    )


def _client_error(e: botocore.exceptions.ClientError, uri: S3Uri, what: str, endpoint: str) -> DatasetError:
    """The DatasetError for an error response from S3."""
    code = _code(e)
    if code == "NoSuchBucket":
        return _no_bucket(uri, what, endpoint)
    if code in _MISSING:
        return DatasetError(f"{what} does not exist (endpoint {endpoint})")
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return DatasetError(
            f"access denied to {what}: the credentials in use lack permission "
            "(s3:GetObject/s3:PutObject/s3:ListBucket) on this bucket or prefix"
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return DatasetError(
            f"S3 rejected the credentials ({code}) for {what}: check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or the AWS profile"
        )
    message = e.response.get("Error", {}).get("Message") or str(e)
    return DatasetError(f"S3 error {code or 'unknown'} for {what} at {endpoint}: {message}")


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    """The body of an object, fetched again (MAX_ATTEMPTS in all) when the connection breaks mid-body.

    botocore retries a request only until its response headers arrive; a connection lost while the
    body streams surfaces later, from `Body.read()`, and is not retried (s3transfer retries its own
    downloads for the same reason, on the same errors).
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return body.read()
        except S3_RETRYABLE_DOWNLOAD_ERRORS as e:
            if attempt == MAX_ATTEMPTS:
                raise
            delay = random.random() * 2 ** (attempt - 1)  # botocore's standard backoff
            log.warning("reading s3://%s/%s broke off (%s); fetching it again in %.1fs", bucket, key, e, delay)
            time.sleep(delay)
        finally:
            body.close()
    raise AssertionError("unreachable")


def check_bucket(client: Any, uri: S3Uri) -> None:
    """Fail early, before any work, when the bucket is missing, unreachable or forbidden."""
    what = f"s3://{uri.bucket}"
    with s3_errors(uri, what, client):
        try:
            client.head_bucket(Bucket=uri.bucket)
        except botocore.exceptions.ClientError as e:
            if _code(e) in _MISSING:
                raise _no_bucket(uri, what, endpoint_of(client)) from e
            raise


def object_exists(client: Any, uri: S3Uri, key: str) -> bool:
    """Whether object `key` exists in the bucket of `uri`."""
    with s3_errors(uri, f"s3://{uri.bucket}/{key}", client):
        try:
            client.head_object(Bucket=uri.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if _code(e) in _MISSING:
                return False
            raise
    return True
