"""What the platform exposes on this machine: the services it starts listen on 127.0.0.1 only, the Ray auth
token it makes Ray write is readable by its owner alone, and the documented job submission carries no
credentials in its runtime environment (Ray keeps that in the job's metadata, shown by `ray job list`).

Listening sockets are read from /proc (the kernel's own table), for exactly the processes each test starts.
Ray's GCS, raylet, object manager and worker ports bind every address by design (other nodes connect to
them): the test prints them for the record and asserts on the dashboard, which must not.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gltr_platform.train.tracking import SECRET_PATTERN

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1"}
START_TIMEOUT_S = 120


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """The TCP sockets in LISTEN state held by `pids`, as (pid, address, port), from /proc."""
    listeners: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints each 32-bit word of the address in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(packed)
            if address.version == 6 and address.ipv4_mapped:
                address = address.ipv4_mapped
            listeners[fields[9]] = (str(address), int(hex_port, 16))
    found = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # gone meanwhile
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target.removeprefix("socket:[").removesuffix("]")
            if inode in listeners:
                found.append((pid, *listeners[inode]))
    return sorted(found)


def process_tree(root: int, marker: str | None = None) -> set[int]:
    """`root`, its descendants, and any process whose command line names `marker`."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                table[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes())
            except (OSError, IndexError, ValueError):
                continue
    pids = {root} | ({pid for pid, (_, cmd) in table.items() if marker.encode() in cmd} if marker else set())
    while children := {pid for pid, (ppid, _) in table.items() if ppid in pids} - pids:
        pids |= children
    return pids


def command_name(pid: int) -> str:
    """A short name for the process, for the record."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in args if a]
    named = [w for w in words if w.endswith((".py", "_server", "raylet")) or w.startswith("ray::")]
    return Path(named[0]).name if named else Path(words[0]).name if words else "?"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_local_ray_serves_its_dashboard_on_loopback_and_keeps_its_token_private(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="gltr-sec-"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    script = (
        "import json, sys, ray\n"
        "from gltr_platform.cli import init_ray\n"
        "init_ray(None, num_cpus=1)\n"
        "print(json.dumps({'dashboard': ray._private.worker.get_dashboard_url()}), flush=True)\n"
        "sys.stdin.readline()\n"
        "ray.shutdown()\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = ""
        while not line.startswith("{"):
            line = driver.stdout.readline()
            assert line or driver.poll() is None, "the driver exited before Ray was up"
        dashboard_port = int(json.loads(line)["dashboard"].rsplit(":", 1)[1])
        listeners = listening_sockets(process_tree(driver.pid, str(ray_tmp)))
        print("\nlocal Ray listening sockets (pid, process, address, port):")
        for pid, address, port in listeners:
            print(f"  {pid} {command_name(pid)} {address}:{port}")

        dashboard = [address for _, address, port in listeners if port == dashboard_port]
        assert dashboard and set(dashboard) <= LOOPBACK, listeners
        token = home / ".ray" / "auth_token"
        assert token.read_text().strip()  # Ray 2.60 turns token auth on for a new local instance
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    finally:
        if driver.poll() is None:
            driver.stdin.close()  # lets the driver shut Ray down itself
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        for pid in process_tree(-1, str(ray_tmp)) - {-1}:  # anything of this instance still alive
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_tracking_server_listens_on_loopback_unless_told_otherwise(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gltr_platform.tracking_server", "--home", str(tmp_path / "mlflow"),
             "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        listeners = listening_sockets(process_tree(server.pid))
        assert listeners and {address for _, address, _ in listeners} <= LOOPBACK, listeners
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_demo_s3_endpoint_listens_on_loopback():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "experiments" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    server = demo.start_s3_endpoint()
    try:
        _, port = server.get_host_and_port()
        listeners = [entry for entry in listening_sockets({os.getpid()}) if entry[2] == port]
        assert listeners and {address for _, address, _ in listeners} <= LOOPBACK, listeners
    finally:
        server.stop()


@pytest.mark.parametrize("doc", ["docs/cluster.md", "README.md"])
def test_documented_job_submissions_carry_no_credentials_in_the_runtime_env(doc):
    text = (ROOT / doc).read_text()
    runtime_envs = [json.loads(m) for m in re.findall(r"--runtime-env-json '([^']*)'", text)]
    assert runtime_envs, f"{doc} documents no `ray job submit --runtime-env-json`"
    for runtime_env in runtime_envs:
        names = set(runtime_env.get("env_vars", {}))
        assert not {n for n in names if SECRET_PATTERN.search(n) or n.startswith("AWS_")}, runtime_env
