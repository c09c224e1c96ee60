"""Offline validation of cluster.yaml with Ray's own cluster-launcher checks.

Only the offline-safe part of `ray up` is used (read from ray/autoscaler/_private/commands.py):
`_bootstrap_config` = `prepare_config` (merge with ray/autoscaler/aws/defaults.yaml, merge setup
commands, docker and min/max checks; no cloud calls) + `provider.fillout_available_node_types_resources`
(EC2 DescribeInstanceTypes, skipped here) + `validate_config` (ray-schema.json + cross-field checks;
offline) + `provider.bootstrap_config` (IAM/key pairs/security groups, skipped here).
Every test here runs with outbound connections blocked, to prove it.
"""

from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail loudly if anything below tries to reach a cloud API."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted during offline validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture()
def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def schema() -> dict:
    assert SCHEMA_PATH.is_file(), f"Ray ships no ray-schema.json at {SCHEMA_PATH}"
    return json.loads(SCHEMA_PATH.read_text())


def ray_validate(cfg: dict) -> dict:
    """What `ray up` does before touching AWS: prepare_config then validate_config."""
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


# ---------------------------------------------------------------- the real file


def test_raw_file_matches_ray_schema(raw, schema):
    jsonschema.validate(raw, schema)


def test_prepared_config_passes_ray_validation(raw):
    prepared = ray_validate(raw)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # merge_setup_commands: head = setup + head_setup, workers = setup + worker_setup.
    assert prepared["head_setup_commands"] == raw["setup_commands"] + raw["head_setup_commands"]
    assert prepared["worker_setup_commands"] == raw["setup_commands"] + raw["worker_setup_commands"]
    # Ray's defaults.yaml would install a nightly Ray wheel if our setup_commands were missing.
    all_cmds = " ".join(prepared["head_setup_commands"] + prepared["worker_setup_commands"])
    assert "ray-wheels" not in all_cmds
    # fill_node_type_min_max_workers gave the head max_workers 0.
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_node_types_and_resources(raw):
    types = raw["available_node_types"]
    head = raw["head_node_type"]
    workers = {k: v for k, v in types.items() if k != head}
    gpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1]
    cpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) == 0 and v["resources"].get("CPU", 0) > 0]
    assert gpu and cpu, "need a CPU worker type and a GPU worker type"
    for name in gpu:
        assert types[name]["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5"))
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= raw["max_workers"], name
    assert sum(t.get("min_workers", 0) for t in types.values()) <= raw["max_workers"]


def test_setup_installs_project_and_pinned_torch(raw):
    cmds = "\n".join(raw["setup_commands"])
    assert "torch==2.13.0" in cmds
    assert re.search(r"pip install -e ~/mpt\b", cmds)
    assert "~/mpt" in raw["file_mounts"] and raw["file_mounts"]["~/mpt"] == "."
    for excluded in (".venv", ".git", "mlruns", "ray_results", "*.db"):
        assert excluded in raw["rsync_exclude"], excluded


def test_start_commands_enable_token_auth(raw):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in raw[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert "~/.ray/auth_token" in raw["file_mounts"]


def test_header_documents_the_workflow():
    header = "\n".join(l for l in CLUSTER_YAML.read_text().splitlines() if l.startswith("#"))
    for needle in (
        "ray up cluster.yaml",
        "mlflow server --backend-store-uri sqlite:////home/ubuntu/mlflow.db "
        "--artifacts-destination s3://BUCKET/mlartifacts --serve-artifacts --host 0.0.0.0 --port 5000",
        "ray job submit --address http://HEAD:8265 --working-dir .",
        '{"excludes": [".venv", "mlruns", "*.db", "ray_results", ".git"]}',
        "python -m orchestrator run pipelines/glue_t5_base.yaml --tracking-uri http://HEAD:5000",
        "ray job logs -f",
        "ray dashboard cluster.yaml",
        "ray down cluster.yaml",
        "RAY_AUTH_MODE=token",
        "ray get-auth-token --generate",
    ):
        assert needle in header, needle


_KEY = re.compile(r"^(\s*)(- )?([A-Za-z_~.][\w.~/-]*):(\s|$)")


def test_every_key_has_a_comment():
    """Each mapping key is preceded by a comment line (or carries one inline)."""
    lines = CLUSTER_YAML.read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#") or not _KEY.match(line):
            continue
        if " #" in line:
            continue
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not prev.lstrip().startswith("#"):
            missing.append(f"line {i + 1}: {line.strip()}")
    assert not missing, "keys without a 'why' comment:\n" + "\n".join(missing)


# ---------------------------------------------------------------- broken copies must fail


def _expect_failure(cfg: dict, schema: dict, *needles: str, raw_schema: bool = True) -> None:
    """Both checks reject `cfg`, naming the reason."""
    messages = []
    if raw_schema:
        with pytest.raises(jsonschema.ValidationError) as raw_err:
            jsonschema.validate(cfg, schema)
        messages.append(str(raw_err.value))
    with pytest.raises((jsonschema.ValidationError, ValueError)) as ray_err:
        ray_validate(cfg)
    messages.append(str(ray_err.value))
    for msg in messages:
        for needle in needles:
            assert needle in msg, f"{needle!r} not in:\n{msg[:2000]}"


def test_misspelled_top_level_key_fails(raw, schema):
    raw["max_worker"] = raw.pop("max_workers")
    _expect_failure(raw, schema, "Additional properties are not allowed", "'max_worker' was unexpected")


def test_misspelled_setup_key_fails(raw, schema):
    raw["setup_command"] = raw.pop("setup_commands")
    _expect_failure(raw, schema, "'setup_command' was unexpected")


def test_unknown_field_in_worker_type_fails(raw, schema):
    raw["available_node_types"]["gpu_worker"]["min_worker"] = 1
    _expect_failure(raw, schema, "'min_worker' was unexpected", "gpu_worker")


def test_bad_resource_type_in_worker_type_fails(raw, schema):
    raw["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    _expect_failure(raw, schema, "'one' is not of type 'integer'", "gpu_worker")


def test_worker_type_without_resources_fails(raw, schema):
    del raw["available_node_types"]["cpu_worker"]["resources"]
    _expect_failure(raw, schema, "'resources' is a required property", "cpu_worker")


def test_head_node_type_must_be_defined(raw, schema):
    # Schema-valid (a string), rejected by Ray's cross-field check.
    raw["head_node_type"] = "haed"
    jsonschema.validate(raw, schema)
    _expect_failure(raw, schema, "`head_node_type` must be one of `available_node_types`", raw_schema=False)


def test_min_workers_above_global_max_fails(raw, schema):
    raw["available_node_types"]["gpu_worker"]["min_workers"] = raw["max_workers"] + 1
    jsonschema.validate(raw, schema)
    _expect_failure(raw, schema, "max_workers` is smaller than the sum of `min_workers", raw_schema=False)
