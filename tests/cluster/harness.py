"""A multi-host Ray cluster on one machine: every host a network namespace with its own address and disk.

To Ray, gloo, boto3 and MLflow each host is a separate machine: it has its own network stack (an address
on a private /24 behind a Linux bridge, its own loopback and port space) and its own disk (per-host
directories bind-mounted over /tmp and $HOME inside a private mount namespace, which every process Ray
spawns inherits), so a file written on one host is invisible to the others. The code and the virtual
environment are shared, as the same image would be on every node. The root namespace holds an address on
the bridge too: it is the user's laptop.

Everything is torn down by PID (`ip netns pids`), never by process name: `ray stop` or `pkill` would kill
other Ray instances on this machine. Needs root (namespaces, bridges and mounts).
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# The one path every host sees as its own $HOME (a bind mount per host, as /home/ubuntu on an AMI).
HOST_HOME = Path("/home/gltr-node")
# Per-host disks live outside /tmp, which each host replaces with its own.
DISKS_ROOT = Path("/var/tmp")
# Variables from the developer's shell that would point a host's processes elsewhere.
LEAKY_ENV = (
    "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI",
    "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "VIRTUAL_ENV", "TMPDIR", "PYTEST_CURRENT_TEST",
)  # fmt: skip


class HarnessUnavailable(RuntimeError):
    """Namespaces, bridges or mounts cannot be created here (not root, or no kernel support)."""


def check_privileges() -> None:
    """HarnessUnavailable with the reason when this process cannot build hosts."""
    if os.geteuid() != 0:
        raise HarnessUnavailable("the simulated cluster needs root (network namespaces, a bridge, bind mounts)")
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            raise HarnessUnavailable(f"the simulated cluster needs `{tool}` (Debian: iproute2 / util-linux)")


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class Host:
    """One simulated machine: a network namespace, its address, its disk, and the processes started on it."""

    name: str
    netns: str
    ip: str
    veth: str  # the bridge side of its link; deleting it unplugs the host
    disk: Path  # disk/tmp is the host's /tmp, disk/home its $HOME
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def home(self) -> Path:
        """The host's $HOME as the laptop sees it."""
        return self.disk / "home"

    @property
    def tmp(self) -> Path:
        """The host's /tmp as the laptop sees it."""
        return self.disk / "tmp"


@dataclass
class SimulatedCluster:
    """A bridge, hosts on it, and the laptop (the root namespace) at `.1`."""

    tag: str  # short and unique: interface names are limited to 15 characters
    subnet: str  # the first three octets of the /24
    base: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    _next_octet: int = 10

    @property
    def bridge(self) -> str:
        return f"gb{self.tag}"

    @property
    def laptop_ip(self) -> str:
        return f"{self.subnet}.1"

    @classmethod
    def create(cls) -> SimulatedCluster:
        """A new, empty cluster: the bridge up with the laptop's address on it."""
        check_privileges()
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        subnet = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
        base = DISKS_ROOT / f"gltr-cluster-{tag}"
        base.mkdir(parents=True)
        cluster = cls(tag, subnet, base)
        try:
            _sh("ip", "link", "add", cluster.bridge, "type", "bridge")
            _sh("ip", "addr", "add", f"{cluster.laptop_ip}/24", "dev", cluster.bridge)
            _sh("ip", "link", "set", cluster.bridge, "up")
            HOST_HOME.mkdir(exist_ok=True)
        except (subprocess.CalledProcessError, OSError) as e:
            cluster.teardown()
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
            raise HarnessUnavailable(f"cannot create the cluster's bridge: {detail}") from None
        return cluster

    def add_host(self, name: str) -> Host:
        """A new host plugged into the bridge, with an empty disk."""
        octet, self._next_octet = self._next_octet, self._next_octet + 1
        host = Host(
            name=name,
            netns=f"gltr-{self.tag}-{name}",
            ip=f"{self.subnet}.{octet}",
            veth=f"gv{self.tag}{octet}",
            disk=self.base / name,
        )
        for sub in ("tmp", "home"):
            (host.disk / sub).mkdir(parents=True)
        (host.tmp).chmod(0o1777)
        self.hosts[name] = host
        _sh("ip", "netns", "add", host.netns)
        _sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _sh("ip", "link", "set", host.veth, "master", self.bridge, "up")
        _sh("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        _sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        return host

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        """A clean environment for a process on `host`: the shared venv first on PATH, its own $HOME."""
        env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(HOST_HOME),
            RAY_USAGE_STATS_ENABLED="0",
            MLFLOW_DISABLE_TELEMETRY="true",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def command(self, host: Host, argv: list[str]) -> list[str]:
        """`argv` as run on `host`: in its network namespace, with its disk mounted over /tmp and $HOME."""
        mounts = (
            f"mount --bind {shlex.quote(str(host.tmp))} /tmp && "
            f"mount --bind {shlex.quote(str(host.home))} {shlex.quote(str(HOST_HOME))} && "
            'exec "$@"'
        )
        return ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation", "private",
                "sh", "-c", mounts, "sh", *argv]  # fmt: skip

    def start(self, host: Host, argv: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen:
        """Start a long-running process on `host`, its output in `log` (on the laptop)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.command(host, argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        host.processes.append(proc)
        return proc

    def run(
        self, host: Host, argv: list[str], env: dict[str, str], timeout: float, cwd: Path = ROOT
    ) -> subprocess.CompletedProcess:
        """Run a command on `host` to completion; its exit code and output."""
        return subprocess.run(
            self.command(host, argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def pids(self, host: Host) -> set[int]:
        """Every process living in `host`'s network namespace (Ray's daemons and workers included)."""
        listed = _sh("ip", "netns", "pids", host.netns, check=False)
        return {int(p) for p in listed.stdout.split()} - {os.getpid()}

    def kill_processes(self, host: Host, grace: float = 10.0) -> None:
        """End every process on `host`: SIGTERM, then SIGKILL what is left after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            for pid in self.pids(host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.pids(host) and time.monotonic() < deadline:
                for proc in host.processes:
                    proc.poll()  # reap our own children so they stop counting
                time.sleep(0.2)
        for proc in host.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def unplug(self, host: Host) -> None:
        """Take `host`'s link down: it is partitioned from every other host (its processes keep running)."""
        _sh("ip", "link", "set", host.veth, "down")

    def plug(self, host: Host) -> None:
        """Bring `host`'s link back up."""
        _sh("ip", "link", "set", host.veth, "up")

    def remove_host(self, host: Host, grace: float = 0.0) -> None:
        """Lose `host` as a spot preemption does: its processes killed, its link and its disk gone."""
        self.kill_processes(host, grace=grace)
        _sh("ip", "link", "del", host.veth, check=False)
        _sh("ip", "netns", "del", host.netns, check=False)
        shutil.rmtree(host.disk, ignore_errors=True)
        self.hosts.pop(host.name, None)

    def teardown(self) -> None:
        """Remove every host, the bridge, the disks and the $HOME mount point; safe to call twice."""
        for host in list(self.hosts.values()):
            self.remove_host(host, grace=5.0)
        _sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(OSError):
            HOST_HOME.rmdir()  # only when empty: it is a bare mount point

    def leftovers(self) -> list[str]:
        """What teardown should have removed and did not (namespaces, links, disks)."""
        names = _sh("ip", "netns", "list", check=False).stdout
        links = _sh("ip", "-o", "link", "show", check=False).stdout
        found = [f"netns {n}" for n in names.split() if n.startswith(f"gltr-{self.tag}-")]
        found += [f"link {word}" for word in links.split() if word.rstrip(":@").startswith(f"gv{self.tag}")]
        found += [f"bridge {self.bridge}"] if f" {self.bridge}:" in links else []
        found += [f"disk {self.base}"] if self.base.exists() else []
        return found


@contextlib.contextmanager
def simulated_cluster() -> Iterator[SimulatedCluster]:
    """A SimulatedCluster that is torn down however the block ends."""
    cluster = SimulatedCluster.create()
    try:
        yield cluster
    finally:
        cluster.teardown()


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Until `url` answers at all (any HTTP status), failing early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[-3:]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # an auth-protected endpoint answering 401 is up
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
