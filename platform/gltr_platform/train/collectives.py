"""Bind torch.distributed's transports to the address Ray uses for the node.

gloo and NCCL pick the address they advertise to their peers from the machine's hostname. Where the
hostname resolves to 127.0.0.1 (Debian's /etc/hosts, many container images) every rank advertises
loopback and the full-mesh connect fails across hosts (`Gloo connectFullMesh failed ... remote=
[127.0.0.1]`). Ray already knows the right address, the one the node joined the cluster with: before the
process group is created, each worker points GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME at the interface
holding it. A value the user set in the environment wins.
"""

from __future__ import annotations

import os
import socket

import psutil
import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend  # Ray's own backend: we add one step before its start

SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def interface_for(address: str) -> str | None:
    """The network interface that holds `address`, or None."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    return None


def bind_to_node_address() -> str | None:
    """Point gloo and NCCL at the interface of this node's Ray address; the interface, or None."""
    interface = interface_for(ray.util.get_node_ip_address())
    if interface is not None:
        for var in SOCKET_IFNAME_VARS:
            os.environ.setdefault(var, interface)
    return interface


class _NodeBoundBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(bind_to_node_address)
        super().on_start(worker_group, backend_config)


class NodeBoundTorchConfig(TorchConfig):
    """Ray Train's TorchConfig, with every rank's transports bound to its node's Ray address."""

    @property
    def backend_cls(self):
        return _NodeBoundBackend
