"""Pre-flight checks (orchestrator/pipeline/preflight.py) that need no server: resources against fake
`ray.nodes()` entries and autoscaler node types, tracking against a dead port and SQLite paths,
storage on writable and unwritable local paths, what counts as loopback. No network beyond
127.0.0.1. The checks against a real `mlflow server` are tests/integration/test_preflight_tracking.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from helpers.specs import ROOT, SMOKE, fields
from helpers.specs import issues_text as text

from orchestrator.pipeline import preflight as pf
from orchestrator.spec.loading import load_spec

SECRET = "s3cr3t-SENTINEL-pw"


def smoke(*overrides: str, tmp_path: Path | None = None):
    extra = [f"storage_path={tmp_path / 'ray_results'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"] if tmp_path else []
    return load_spec(SMOKE, [*extra, *overrides])


def node(cpus: float, gpus: float = 0, ip: str = "127.0.0.1", alive: bool = True, **extra) -> dict:
    resources = {"CPU": float(cpus), "memory": 4e9, "object_store_memory": 1e9, f"node:{ip}": 1.0, **extra}
    if gpus:
        resources["GPU"] = float(gpus)
    return {"NodeID": f"{ip}-{cpus}-{gpus}", "Alive": alive, "NodeManagerAddress": ip, "Resources": resources}


TWO_SMALL = [node(1), node(1, node2=1.0)]  # the loopback test cluster


# ----------------------------------------------------------------------------- resources


def test_smoke_fits_two_one_cpu_nodes():
    assert pf.resource_issues(smoke(), TWO_SMALL) == []


def test_too_many_cpus_per_worker_is_named_with_what_the_largest_node_offers():
    issues = pf.resource_issues(smoke("source.resources.cpus_per_worker=4"), TWO_SMALL)
    assert fields(issues) == ["source.resources"], text(issues)
    (issue,) = issues
    assert "{CPU: 4}" in issue.message and "{CPU: 1}" in issue.message and "PENDING" in issue.message
    assert "source.resources.cpus_per_worker to at most 1" in issue.fix and "node type" in issue.fix
    assert issue.value["cpus_per_worker"] == 4


def test_gpu_on_a_cpu_only_cluster():
    issues = pf.resource_issues(smoke("target.resources.gpus_per_worker=1", "distill.resources.gpus_per_worker=0.5"),
                                TWO_SMALL)
    assert fields(issues) == ["distill.resources", "target.resources"], text(issues)
    assert all("GPU" in i.message and "no node has a GPU" in i.message for i in issues)
    assert all("gpus_per_worker: 0" in i.fix for i in issues)


def test_gpu_request_fits_a_gpu_node_but_not_more_gpus_than_it_has():
    nodes = [node(0), node(8, gpus=1, ip="10.0.0.7")]
    assert pf.resource_issues(smoke("target.resources.gpus_per_worker=1"), nodes) == []
    issues = pf.resource_issues(smoke("target.resources.gpus_per_worker=2"), nodes)
    assert fields(issues) == ["target.resources"] and "gpus_per_worker to at most 1" in issues[0].fix


def test_each_bundle_fits_but_the_cluster_total_is_too_small():
    # 3 workers x 1 CPU: each fits a 1-CPU node, but 2 nodes hold only 2 at once.
    issues = pf.resource_issues(smoke("distill.resources.num_workers=3", "distill.resources.cpus_per_worker=1"),
                                TWO_SMALL)
    assert fields(issues) == ["distill.resources"], text(issues)
    assert "3 workers" in issues[0].message and "holds only 2" in issues[0].message
    assert "num_workers to at most 2" in issues[0].fix
    # Half-CPU workers pack two per node: 4 fit, 5 do not.
    assert pf.resource_issues(smoke("distill.resources.num_workers=4"), TWO_SMALL) == []
    assert fields(pf.resource_issues(smoke("distill.resources.num_workers=5"), TWO_SMALL)) == ["distill.resources"]


def test_dead_nodes_offer_nothing():
    nodes = [*TWO_SMALL, node(64, ip="10.0.0.9", alive=False)]
    assert fields(pf.resource_issues(smoke("source.resources.cpus_per_worker=8"), nodes)) == ["source.resources"]


def test_one_cpu_and_gpu_on_different_nodes_is_not_one_node():
    nodes = [node(8), node(1, gpus=1, ip="10.0.0.8")]
    issues = pf.resource_issues(smoke("target.resources.cpus_per_worker=2", "target.resources.gpus_per_worker=1"), nodes)
    assert fields(issues) == ["target.resources"], text(issues)
    assert "{CPU: 2, GPU: 1}" in issues[0].message


def test_autoscaler_node_types_count_as_nodes_the_cluster_can_add():
    types = pf.autoscaling_node_types(ROOT / "cluster.yaml")
    assert {t["name"]: (t["resources"], t["max_workers"]) for t in types} == {
        "cpu_worker": ({"CPU": 8}, 4), "gpu_worker": ({"CPU": 8, "GPU": 1}, 4)}
    head_only = [node(0, ip="10.0.0.2")]  # a fresh `ray up` cluster: the head offers CPU 0
    big = smoke("source.resources.cpus_per_worker=8", "source.resources.num_workers=8",
                "target.resources.gpus_per_worker=1")
    assert fields(pf.resource_issues(big, head_only)) == ["source.resources", "distill.resources", "target.resources"]
    assert pf.resource_issues(big, head_only, types) == []
    too_big = smoke("source.resources.cpus_per_worker=16", "distill.resources.num_workers=9",
                    "distill.resources.cpus_per_worker=8")
    issues = pf.resource_issues(too_big, head_only, types)
    assert fields(issues) == ["source.resources", "distill.resources"], text(issues)
    assert "running or addable" in issues[0].message and "holds only 8" in issues[1].message
    # A node type whose size the config does not declare may be anything: nothing is ruled out.
    assert pf.resource_issues(too_big, head_only, [{"name": "x", "resources": None, "max_workers": 1}]) == []


def test_no_bootstrap_config_means_no_node_types(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pf.autoscaling_node_types() == []
    (tmp_path / "ray_bootstrap_config.yaml").write_text((ROOT / "cluster.yaml").read_text())
    assert [t["name"] for t in pf.autoscaling_node_types()] == ["cpu_worker", "gpu_worker"]


# ----------------------------------------------------------------------------- several machines


def test_local_storage_on_several_machines(tmp_path):
    spec = smoke(tmp_path=tmp_path)
    two_machines = [node(4, ip="10.0.0.2"), node(4, ip="10.0.0.3")]
    assert pf.multi_node_issues(spec, TWO_SMALL) == []  # one machine (loopback harness): one disk
    issues = pf.multi_node_issues(spec, two_machines)
    assert fields(issues) == ["storage_path", "tracking.uri"], text(issues)
    assert "s3://" in issues[0].fix and "file:///" in issues[0].fix and "own disk" in issues[0].message
    shared = smoke(f"storage_path=file://{tmp_path}/nfs", "tracking.uri=http://10.0.0.2:5000")
    assert pf.multi_node_issues(shared, two_machines) == []
    assert fields(pf.multi_node_issues(smoke("storage_path=s3://b/r", "tracking.uri=http://127.0.0.1:5000"),
                                       two_machines)) == ["tracking.uri"]
    for uri in ("databricks", "https://mlflow.example.com", "http://[fd00::5]:5000"):
        assert pf.multi_node_issues(smoke("storage_path=s3://b/r", f"tracking.uri={uri}"), two_machines) == []
    for uri in ("file:///tmp/mlruns", "/tmp/mlruns", "http://localhost:5000", "http://u:p@127.0.0.2:5000"):
        assert fields(pf.multi_node_issues(smoke("storage_path=s3://b/r", f"tracking.uri={uri}"), two_machines)) \
            == ["tracking.uri"], uri
    # Declared (validate, from the spec) or implied by autoscaler node types.
    assert fields(pf.multi_node_issues(spec, [], declared=True)) == ["storage_path", "tracking.uri"]
    assert fields(pf.multi_node_issues(spec, TWO_SMALL, pf.autoscaling_node_types(ROOT / "cluster.yaml"))) == \
        ["storage_path", "tracking.uri"]


@pytest.mark.parametrize("address, multi", [
    (None, False), ("127.0.0.1:6379", False), ("localhost:6379", False), ("ray://127.0.0.1:10001", False),
    ("auto", True), ("10.0.0.2:6379", True), ("ray://head.internal:10001", True)])
def test_what_a_spec_declares(address, multi):
    spec = smoke(*([f"cluster.address={address}"] if address else []))
    assert pf.declares_multi_node(spec) is multi
    assert bool(pf.multi_node_issues(spec, [], declared=pf.declares_multi_node(spec))) is multi


def test_a_shared_mount_as_file_uri_is_probed_like_a_local_dir(tmp_path):
    assert pf.storage_issues(f"file://{tmp_path}/nfs/ray_results") == []
    (tmp_path / "nfs").write_text("a file, not a mount")
    issues = pf.storage_issues(f"file://{tmp_path}/nfs/ray_results")
    assert fields(issues) == ["storage_path"] and "nfs is not a directory" in issues[0].message


# ----------------------------------------------------------------------------- tracking


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there now


def test_tracking_server_that_does_not_answer_names_the_cause_not_the_secret():
    uri = f"http://admin:{SECRET}@127.0.0.1:{dead_port()}"
    issues = pf.tracking_issues(uri)
    assert fields(issues) == ["tracking.uri"], issues
    assert "does not answer" in issues[0].message and "connection refused" in issues[0].message
    assert SECRET not in text(issues) and "admin" not in text(issues)
    assert issues[0].value.startswith("http://***@127.0.0.1:")


def test_sqlite_store(tmp_path):
    assert pf.tracking_issues(f"sqlite:///{tmp_path}/new/dir/mlflow.db") == []
    (tmp_path / "file.txt").write_text("x")
    issues = pf.tracking_issues(f"sqlite:///{tmp_path}/file.txt/sub/mlflow.db")
    assert fields(issues) == ["tracking.uri"] and "cannot create" in issues[0].message
    assert "absolute" in pf.tracking_issues("sqlite:///relative/mlflow.db")[0].fix


def test_other_schemes_are_not_checked():
    assert pf.tracking_issues("databricks") == []


# ----------------------------------------------------------------------------- storage


def test_writable_storage_is_probed_and_left_as_it_was(tmp_path):
    target = tmp_path / "a" / "ray_results"
    assert pf.storage_issues(str(target)) == []
    assert list(tmp_path.iterdir()) == []  # probed in tmp_path (nearest existing dir); nothing created
    target.mkdir(parents=True)
    assert pf.storage_issues(str(target)) == []
    assert list(target.iterdir()) == []


def test_unwritable_storage(tmp_path):
    # We run as root, so chmod cannot make a directory unwritable; a path under a regular file
    # cannot be created by anyone.
    (tmp_path / "file.txt").write_text("x")
    issues = pf.storage_issues(str(tmp_path / "file.txt" / "sub"))
    assert fields(issues) == ["storage_path"], issues
    assert "cannot write" in issues[0].message and "file.txt is not a directory" in issues[0].message
    assert issues[0].value == str(tmp_path / "file.txt" / "sub")


def test_unknown_storage_scheme_is_reported_without_network():
    issues = pf.storage_issues("nosuchfs://bucket/ray_results")
    assert fields(issues) == ["storage_path"] and "nosuchfs" in issues[0].message


# ----------------------------------------------------------------------------- loopback


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("::ffff:127.0.0.1", True), ("localhost", True),
    ("::1%lo", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("192.168.1.1", False), ("example.com", False)])
def test_what_counts_as_loopback(host, loopback):
    assert pf.is_loopback(host) is loopback


# ----------------------------------------------------------------------------- all together


def test_preflight_on_this_machine(tmp_path, monkeypatch):
    """No address and no RAY_ADDRESS: the local machine as Ray would see it; nothing is started."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/ray_bootstrap_config.yaml
    assert pf.preflight(smoke(tmp_path=tmp_path)) == []
    (tmp_path / "file.txt").write_text("x")
    issues = pf.preflight(smoke("source.resources.cpus_per_worker=100000", "target.resources.gpus_per_worker=64",
                                f"storage_path={tmp_path}/file.txt/sub",
                                f"tracking.uri=http://127.0.0.1:{dead_port()}"))
    assert fields(issues) == ["source.resources", "target.resources", "tracking.uri", "storage_path"], text(issues)


def test_preflight_reports_an_unreachable_cluster_and_still_checks_the_rest(tmp_path, monkeypatch):
    def refuse(address):
        raise ConnectionError(f"Could not connect to the GCS at {address}")

    monkeypatch.setattr(pf, "cluster_nodes", refuse)
    (tmp_path / "file.txt").write_text("x")
    spec = smoke(f"storage_path={tmp_path}/file.txt/sub", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    issues = pf.preflight(spec, "10.9.9.9:6379", node_types=[])
    assert fields(issues) == ["cluster.address", "storage_path"], text(issues)
    assert "10.9.9.9:6379" in issues[0].message and "RAY_AUTH_MODE=token" in issues[0].fix
