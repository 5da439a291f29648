"""The cluster launcher configs pass Ray's own validation, as `ray up` runs it, and keep their promises:
GPU workers from zero, the project installed with Ray pinned, and no public dashboard."""

import re

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.helpers import ROOT, pinned_ray_version


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_ray_validates_the_config(name):
    validate_config(prepare_config(load(name)))  # what `ray up` does before touching any machine


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_every_node_installs_torch_then_the_project_with_pinned_ray(name):
    commands = load(name)["setup_commands"]
    torch = next(i for i, c in enumerate(commands) if re.search(r"pip install .*\btorch\b", c))
    project = next(i for i, c in enumerate(commands) if "pip install -e ~/sam" in c)
    assert torch < project
    assert f"ray[default,train,tune,serve]=={pinned_ray_version()}" in commands[project]
    assert load(name)["file_mounts"] == {"~/sam": "."}
    # Ray's workers run where `ray start` ran: there serve_config.yaml's serve_app:app and models/latest resolve.
    starts = load(name)["head_start_ray_commands"][-1], load(name)["worker_start_ray_commands"][-1]
    assert all(command.startswith("cd ~/sam && ") for command in starts)


def test_aws_gpu_workers_scale_from_zero_and_reach_shared_storage():
    config = load("cluster.yaml")
    types = config["available_node_types"]
    head, gpu = types[config["head_node_type"]], types["gpu"]
    assert not head["resources"].get("GPU") and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    assert gpu["min_workers"] == 0 and 1 < gpu["max_workers"] <= config["max_workers"]
    assert gpu["resources"]["GPU"] == 1 and gpu["node_config"]["InstanceType"] == "g5.xlarge"
    assert gpu["node_config"]["IamInstanceProfile"]  # Train workers write checkpoints to s3:// themselves


def _opens_to_the_world(rule: dict, port: int) -> bool:
    in_range = rule.get("IpProtocol") == "-1" or rule.get("FromPort", 0) <= port <= rule.get("ToPort", 65535)
    anywhere = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
    return in_range and bool({"0.0.0.0/0", "::/0"} & set(anywhere))


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_dashboard_is_reachable_only_by_port_forward(name):
    config = load(name)
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert not [rule for rule in rules if any(_opens_to_the_world(rule, port) for port in (8265, 8000))]
    # `ray start` binds the dashboard to localhost unless told otherwise; `ray dashboard` forwards to it.
    assert not any("--dashboard-host" in command for command in config["head_start_ray_commands"])


def test_the_world_check_would_catch_an_open_dashboard():
    assert _opens_to_the_world({"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, 8265)
    assert not _opens_to_the_world({"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, 8265)
