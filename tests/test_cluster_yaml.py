"""cluster.yaml: Ray's own validator accepts it, and it keeps the cluster's safety and cost invariants.

Offline by construction. `prepare_config` merges the AWS defaults from ray/autoscaler/aws/defaults.yaml
(a file in the installed wheel) and `validate_config` checks the result against ray-schema.json with
jsonschema; neither calls AWS. What does call AWS (subnets, security groups, key pair, AMI, IAM:
`bootstrap_aws`, which `ray up` runs next) is not called here. A socket guard makes any attempt to
reach the network fail the tests instead of hanging them.
"""

from __future__ import annotations

import copy
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
SERVICE_PORTS = {8265: "dashboard / job API", 5000: "MLflow", 6379: "GCS", 10001: "Ray client"}
WORLD = {"0.0.0.0/0", "::/0"}
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", "*"}


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    """Any connection attempt fails loudly: these tests must never reach AWS or anything else."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"test_cluster_yaml tried to reach the network: {args!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="module")
def raw() -> dict:
    """cluster.yaml as written (YAML anchors resolved)."""
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict) -> dict:
    """cluster.yaml as `ray up` sees it before touching AWS: AWS defaults merged, setup commands merged."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(raw))


def node_types(config: dict) -> dict[str, dict]:
    """Node type name -> its section, head included."""
    return config["available_node_types"]


def worker_types(config: dict) -> dict[str, dict]:
    """The node types the autoscaler launches as workers."""
    return {name: t for name, t in node_types(config).items() if name != config["head_node_type"]}


def all_commands(config: dict) -> list[str]:
    """Every shell command the launcher runs, global and per node type."""
    commands = [cmd for key in COMMAND_LISTS for cmd in config.get(key) or []]
    for node_type in node_types(config).values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node_type.get(key) or []
    return commands


def ingress_rules(value) -> Iterator[dict]:
    """Every IpPermissions entry anywhere in the config (provider.security_group, node configs, ...)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "IpPermissions":
                yield from item
            else:
                yield from ingress_rules(item)
    elif isinstance(value, list):
        for item in value:
            yield from ingress_rules(item)


def ray_start_commands(config: dict) -> list[str]:
    """The commands that run `ray start` (head and workers)."""
    return [cmd for cmd in all_commands(config) if re.search(r"\bray start\b", cmd)]


def mlflow_server_commands(commands: list[str]) -> list[str]:
    """The commands that start the team MLflow server."""
    return [cmd for cmd in commands if "gltr_platform.tracking_server" in cmd]


def uv_syncs(commands: list[str]) -> list[str]:
    """The `uv sync ...` invocations in shell commands (up to the next ;, &&, || or |), not mentions in echo."""
    return [m.group(1) for cmd in commands for m in re.finditer(r"(?:^|&&|;|\|\||\()\s*(uv sync[^;&|)]*)", cmd)]


def test_ray_validator_accepts_the_prepared_config(prepared: dict) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)


def test_provider_is_aws_with_a_region_and_considered_node_caching(raw: dict) -> None:
    provider = raw["provider"]
    assert provider["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}-[a-z]+-\d", provider["region"])
    assert "cache_stopped_nodes" in provider, "say whether scale-down stops or terminates nodes"


def test_head_runs_no_training(raw: dict) -> None:
    head = node_types(raw)[raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0
    assert head.get("max_workers", 0) == 0
    (head_start,) = [cmd for cmd in raw["head_start_ray_commands"] if "ray start" in cmd]
    assert "--num-cpus=0" in head_start
    assert "--num-gpus=0" in head_start


def test_a_gpu_worker_type_can_scale_up(raw: dict) -> None:
    gpu_types = {
        name: t for name, t in worker_types(raw).items() if t["resources"].get("GPU", 0) > 0 and t["max_workers"] > 0
    }
    assert gpu_types, "no worker type with GPUs and max_workers > 0"
    assert raw["max_workers"] > 0
    assert raw["idle_timeout_minutes"] > 0


def test_every_node_type_brings_its_own_security_group(raw: dict) -> None:
    # A group Ray creates itself always gets SSH from 0.0.0.0/0 (ray.autoscaler._private.aws.config
    # _create_default_ssh_inbound_rules); naming one for every node type means Ray creates none.
    for name, node_type in node_types(raw).items():
        assert node_type["node_config"].get("SecurityGroupIds"), f"{name}: no SecurityGroupIds"


def test_no_ingress_rule_is_open_to_the_world(raw: dict) -> None:
    for rule in ingress_rules(raw):
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        }
        assert not cidrs & WORLD, f"ingress open to the world: {rule}"


def test_service_ports_are_in_no_ingress_rule(raw: dict) -> None:
    for rule in ingress_rules(raw):
        if rule.get("UserIdGroupPairs") and not (rule.get("IpRanges") or rule.get("Ipv6Ranges")):
            continue  # traffic between the cluster's own nodes
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        every_port = rule.get("IpProtocol") == "-1" or low == -1
        for port, service in SERVICE_PORTS.items():
            assert not (every_port or low <= port <= high), f"{service} port {port} reachable from outside: {rule}"


def test_every_node_has_an_instance_profile_and_a_pinned_image(raw: dict) -> None:
    for name, node_type in node_types(raw).items():
        node_config = node_type["node_config"]
        assert ":instance-profile/" in node_config["IamInstanceProfile"]["Arn"], name
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", node_config["ImageId"]), f"{name}: pin an AMI id"


def test_spot_is_available_as_an_option(raw: dict) -> None:
    markets = [t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") for t in worker_types(raw).values()]
    assert "spot" in markets


def test_token_auth_is_on_for_every_ray_start(prepared: dict) -> None:
    starts = ray_start_commands(prepared)
    assert len(starts) >= 2, "expected a head and a worker `ray start`"
    for cmd in starts:
        assert "RAY_AUTH_MODE=token" in cmd, cmd


def test_the_head_generates_the_token_and_every_worker_receives_it(raw: dict) -> None:
    assert any("ray get-auth-token --generate" in cmd for cmd in raw["head_setup_commands"])
    assert "~/.ray/auth_token" in raw["cluster_synced_files"]


def test_every_node_installs_the_project_from_its_lock_file(prepared: dict) -> None:
    for key in ("head_setup_commands", "worker_setup_commands"):
        syncs = uv_syncs(prepared[key])
        assert syncs, f"{key}: no uv sync"
        assert all("--frozen" in sync for sync in syncs), syncs
    commands = all_commands(prepared)
    assert not any(re.search(r"\bpip install\b.*\bray\b", cmd) for cmd in commands), "Ray comes from uv.lock"


def test_the_repository_is_shipped_without_local_state(raw: dict) -> None:
    assert raw["file_mounts"].get("~/gltr-platform") == "."
    assert {".venv", ".cache", "mlruns"} <= set(raw["rsync_exclude"])


def test_mlflow_server_starts_on_the_head_only(raw: dict) -> None:
    head = raw["head_setup_commands"] + raw["head_start_ray_commands"]
    assert mlflow_server_commands(head), "the head must start python -m gltr_platform.tracking_server"
    workers = raw["worker_setup_commands"] + raw["worker_start_ray_commands"] + raw["setup_commands"]
    assert not mlflow_server_commands(workers)


def test_mlflow_server_is_not_bound_to_every_interface(raw: dict) -> None:
    for cmd in mlflow_server_commands(all_commands(raw)):
        hosts = re.findall(r"--host[= ]+\"?([^\"\s]+)", cmd)
        assert hosts, f"bind address must be explicit: {cmd}"
        assert not set(hosts) & WILDCARD_HOSTS, cmd
        assert "--artifacts-destination" in cmd


def test_dashboard_is_not_bound_to_every_interface(raw: dict) -> None:
    for cmd in ray_start_commands(raw):
        for host in re.findall(r"--dashboard-host[= ]+(\S+)", cmd):
            assert host not in WILDCARD_HOSTS, cmd


def test_jobs_see_the_provider_region_and_the_mlflow_uri(raw: dict) -> None:
    region = raw["provider"]["region"]
    setup = " ".join(raw["setup_commands"])
    assert f"AWS_DEFAULT_REGION={region}" in setup
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("MLFLOW_TRACKING_URI=" in cmd and ":5000" in cmd for cmd in raw[key]), key


def test_nodes_get_aws_access_from_instance_profiles_not_keys(raw: dict) -> None:
    # Keys in a node's environment reach every job and worker process it runs; a profile's do not.
    for cmd in all_commands(raw):
        assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)", cmd), cmd


def test_docs_name_every_port_a_firewall_must_close(raw: dict) -> None:
    docs = (CLUSTER_YAML.parent / "docs" / "cluster.md").read_text()
    firewall = docs[docs.index("#### Ports a firewall must close") :]
    for port in SERVICE_PORTS:
        assert f"| {port} |" in firewall, port
    object_manager = {re.search(r"--object-manager-port=(\d+)", cmd).group(1) for cmd in ray_start_commands(raw)}
    assert all(f"| {port} | object manager" in firewall for port in object_manager), object_manager
    for flag in ("--node-manager-port", "--metrics-export-port", "--min-worker-port", "--dashboard-agent-grpc-port"):
        assert flag in firewall, flag
    assert "RAY_AUTH_MODE=token" in firewall
