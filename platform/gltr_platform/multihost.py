"""What a run needs when its processes spread over several hosts, checked before anything is created.

On one machine a sqlite file, a local checkpoint directory or an endpoint on 127.0.0.1 is the same for
every process. On a multi-host Ray cluster, Train controllers, trial drivers and workers land on other
hosts, where the same path is a different, private file and 127.0.0.1 is the host itself: runs would be
scattered over the hosts' disks, or fail at the first checkpoint after an epoch of work. So a multi-host
cluster refuses them up front, saying what to use instead; a single-node instance keeps allowing them
(`make demo` runs on sqlite and a local directory).
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from gltr_platform.errors import ConfigError

FILE_SCHEMES = ("", "file", "sqlite")
ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def is_multi_host() -> bool:
    """Whether the connected Ray cluster spreads work over hosts.

    More than one node address, or a driver's node with no CPUs (the head of a cluster whose workers an
    autoscaler has not started yet: cluster.yaml's head trains nothing).
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len({n["NodeManagerAddress"] for n in alive}) > 1:
        return True
    here = ray.get_runtime_context().get_node_id()
    return any(n["NodeID"] == here and n.get("Resources", {}).get("CPU", 0) == 0 for n in alive)


def is_loopback(host: str | None) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1 addresses."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_reachable_from_every_host(tracking_uri: str, storage_path: str) -> None:
    """ConfigError naming the first setting other hosts cannot reach, and what to use instead."""
    tracking = urlsplit(tracking_uri)
    if tracking.scheme in FILE_SCHEMES or len(tracking.scheme) == 1:  # a Windows drive letter is a path too
        raise ConfigError(
            f"MLflow tracking URI {tracking_uri} is a file on this host, which the other hosts of this multi-host "
            "Ray cluster cannot reach: use the team server (--tracking-uri http://HEAD_IP:5000, or "
            "$MLFLOW_TRACKING_URI as cluster.yaml sets it)"
        )
    if is_loopback(tracking.hostname):
        raise ConfigError(
            f"MLflow tracking URI {tracking.scheme}://{tracking.hostname}:{tracking.port} is this host's loopback, "
            "which every other host of this multi-host Ray cluster reads as itself: use the head's address "
            "(http://HEAD_IP:5000)"
        )
    if "://" not in storage_path:
        raise ConfigError(
            f"storage path {storage_path} is a directory on this host; on a multi-host Ray cluster every worker "
            "uploads checkpoints there from its own disk: use shared storage (--storage-path s3://BUCKET/prefix)"
        )
    for var in ENDPOINT_VARS:
        endpoint = os.environ.get(var)
        if endpoint and is_loopback(urlsplit(endpoint).hostname):
            raise ConfigError(
                f"${var}={endpoint} is this host's loopback, which the other hosts of this multi-host Ray cluster "
                "read as themselves: use an address every host can reach (the endpoint host's IP or name)"
            )
