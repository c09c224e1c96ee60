"""The smoke pipeline as a real Ray job on a 2-node cluster, tracked by a real MLflow server, all on
127.0.0.1 and all stopped by PID (never `ray stop`).

Resources are set so that the work must use both nodes: each node offers 1 CPU, each source job and
each target trial asks for 1 CPU (the two sources, and the two MPT trials, run at the same time, one
per node), and distillation runs DDP with 2 workers of 1 CPU, one on each node. The test then
checks, through the MLflow server's API, the run tree, the artifacts and the ``mpt.node`` tag of
every child run; through Ray's state API, that Train workers ran on both nodes; that every node's
address and every listening socket of every process it started (sampled while the job runs) is
loopback; and that the pre-flight passes against the live cluster and names a request that does
not fit.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from helpers import loopback as lb

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "pipelines/smoke.yaml"
# One full CPU per source job, per target trial and per distillation worker: with 1 CPU per node the
# scheduler has to use both nodes.
OVERRIDES = [
    "source.resources={num_workers: 1, cpus_per_worker: 1}",
    "distill.resources={num_workers: 2, cpus_per_worker: 1}",
    "target.resources={num_workers: 1, cpus_per_worker: 1}",
    "target.baselines=[]",  # the two MPT trials give the spread this test needs; a baseline sweep only adds time
]
EXCLUDES = [".venv", "*.db", "mlruns", "mlartifacts", "ray_results", ".git", ".hypothesis", ".pytest_cache",
            ".mpt_cache", "__pycache__"]
JOB_TIMEOUT_S = 900
SAMPLE_EVERY_S = 2.0  # one system-wide socket scan, ~0.05 s

PREFLIGHT_SCRIPT = """
import json, sys
from orchestrator.preflight import preflight
from orchestrator.spec import load_spec
address, spec_path, tracking, storage = sys.argv[1:5]
def check(*overrides):
    spec = load_spec(spec_path, [*overrides, "tracking.uri=" + tracking, "storage_path=" + storage])
    return [i.model_dump(mode="json") for i in preflight(spec, address, node_types=[])]
ok = check(*json.loads(sys.argv[5]))
too_big = check("source.resources.cpus_per_worker=2", "target.resources.gpus_per_worker=1",
                "distill.resources={num_workers: 3, cpus_per_worker: 1}")
import ray
print("PREFLIGHT " + json.dumps({"ok": ok, "too_big": too_big, "connected": ray.is_initialized(),
                                 "nodes": len([n for n in ray.nodes() if n["Alive"]])}))
"""


def _report(request, timings: dict[str, float]) -> None:
    line = " ".join(f"{k}={v:.1f}s" for k, v in timings.items())
    request.node.user_properties.append(("timings", timings))
    print(f"\n[{request.node.name}] {line}")


def test_smoke_pipeline_as_a_job_on_two_loopback_nodes(tmp_path, request):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    from orchestrator.spec import load_spec
    from orchestrator.tracking import NODE_TAG, PARENT_TAG, STAGE_TAG, TASK_TAG

    timings: dict[str, float] = {}
    t_start = time.monotonic()
    storage = tmp_path / "ray_results"
    url, mlf = lb.start_mlflow_server(tmp_path / "mlflow", wait=False)  # boots while Ray starts
    lc = None
    pre = None
    log = lb.ListenerLog()
    started: list[psutil.Process] = []
    survivors: list[psutil.Process] = []
    try:
        t = time.monotonic()
        lc = lb.start_loopback_cluster(head_cpus=1, node2_cpus=1)
        timings["ray_start"] = time.monotonic() - t
        t = time.monotonic()
        lb.wait_for_mlflow(url, mlf)
        timings["mlflow_ready_after_ray"] = time.monotonic() - t

        # Nothing but loopback: every node's address, the endpoints, every listener so far.
        nodes = [n for n in lc.cluster.global_state.node_table() if n["Alive"]]
        assert len(nodes) == 2, nodes
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1", "127.0.0.1"], nodes
        assert lc.node_ips == ["127.0.0.1", "127.0.0.1"]
        assert url.startswith("http://127.0.0.1:") and lc.dashboard_url.startswith("http://127.0.0.1:")
        assert lc.gcs_address.startswith("127.0.0.1:"), lc.gcs_address
        node_ids = {n["NodeID"][:8] for n in nodes}
        lb.assert_all_loopback(lc.processes() + [psutil.Process(mlf.pid)], "after start")

        # Pre-flight against the live cluster, from a separate driver (this process never joins it).
        pre_log = tmp_path / "preflight.log"
        with open(pre_log, "wb") as out:  # a file, not a pipe: nobody reads it while the job runs
            pre = subprocess.Popen(
                [sys.executable, "-c", PREFLIGHT_SCRIPT, lc.gcs_address, str(ROOT / SMOKE), url, str(storage),
                 json.dumps(OVERRIDES)],
                cwd=ROOT, env=lc.client_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(psutil.Process(pre.pid))

        # The pipeline, submitted like `ray job submit --working-dir .`.
        t = time.monotonic()
        entrypoint = shlex.join(["python", "-m", "orchestrator", "run", SMOKE, "--tracking-uri", url,
                                 *[a for o in [*OVERRIDES, f"storage_path={storage}"] for a in ("--set", o)]])
        client = JobSubmissionClient(lc.dashboard_url)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=f"mpt-smoke-{uuid.uuid4().hex[:8]}",
            runtime_env={
                "working_dir": str(ROOT),
                "excludes": EXCLUDES,
                "env_vars": {
                    **lb.NO_PHONE_HOME,
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "GLOO_SOCKET_IFNAME": "lo",  # DDP traffic on loopback whatever the host name resolves to
                    "PYTHONUNBUFFERED": "1",
                },
            },
        )
        timings["submit"] = time.monotonic() - t
        last_sample = 0.0

        def sample() -> None:
            nonlocal last_sample
            if time.monotonic() - last_sample >= SAMPLE_EVERY_S:
                procs = lc.processes() + lb.process_tree([mlf.pid, *([pre.pid] if pre.poll() is None else [])])
                started.extend(procs)
                log.sample(procs)
                last_sample = time.monotonic()

        status = lb.wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S, poll=0.5, on_poll=sample)
        logs = client.get_job_logs(job_id)
        timings["job"] = time.monotonic() - t
        assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}:\n{logs[-20000:]}"
        assert "[pipeline] finished" in logs, logs[-5000:]

        pre.wait(timeout=300)
        out = pre_log.read_text()
        assert pre.returncode == 0, out[-5000:]
        lines = [line for line in out.splitlines() if line.startswith("PREFLIGHT ")]
        assert lines, out[-5000:]
        result = json.loads(lines[-1].removeprefix("PREFLIGHT "))
        assert result["connected"] and result["nodes"] == 2, result
        assert result["ok"] == [], result["ok"]
        assert [i["field"] for i in result["too_big"]] == ["source.resources", "distill.resources",
                                                           "target.resources"], result["too_big"]
        assert "holds only 2" in result["too_big"][1]["message"]

        # The run tree, through the MLflow server's REST API.
        t = time.monotonic()
        spec = load_spec(ROOT / SMOKE, OVERRIDES)
        ml = MlflowClient(url)
        experiment = ml.get_experiment_by_name(spec.name)
        assert experiment is not None, [e.name for e in ml.search_experiments()]
        runs = ml.search_runs([experiment.experiment_id], max_results=1000)
        (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        assert len(children) == len(runs) - 1
        assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
        by_stage = {s: [r for r in children if r.data.tags[STAGE_TAG] == s] for s in ("source", "distill", "target")}
        assert sorted(r.data.tags[TASK_TAG] for r in by_stage["source"]) == sorted(spec.sources)
        assert len(by_stage["distill"]) == 1
        assert len(by_stage["target"]) == 2  # MPT rank grid [1, 2], no baselines
        assert {r.data.tags[TASK_TAG] for r in by_stage["target"]} == set(spec.targets)
        for run in by_stage["source"]:
            task = run.data.tags[TASK_TAG]
            assert [a.path for a in ml.list_artifacts(run.info.run_id, "teacher")] == \
                [f"teacher/teacher_{task}.safetensors"]
        assert "shared_prompt.safetensors" in {a.path for a in ml.list_artifacts(by_stage["distill"][0].info.run_id)}
        assert {"report/results.csv", "report/best.csv"} <= \
            {a.path for a in ml.list_artifacts(parent.info.run_id, "report")}
        (best,) = [r for r in by_stage["target"] if r.data.tags.get("mpt.best") and r.data.params["method"] == "mpt"]
        assert ml.list_artifacts(best.info.run_id, "best_adapter")
        # Artifacts went through the server (proxied) into its own store.
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
        stored = {p.name for p in (tmp_path / "mlflow" / "mlartifacts").rglob("*") if p.is_file()}
        assert {"results.csv", "shared_prompt.safetensors", "teacher_nli.safetensors"} <= stored, stored

        # Work ran on both nodes: target trials tag the node they ran on ...
        tagged = {r.data.tags[NODE_TAG] for r in children}
        assert all(v.startswith("127.0.0.1/") for v in tagged), tagged
        assert {v.split("/", 1)[1] for v in tagged} == node_ids, (tagged, node_ids)
        trial_nodes = {r.data.tags[NODE_TAG].split("/", 1)[1] for r in by_stage["target"]}
        assert trial_nodes == node_ids, trial_nodes
        # ... and Ray Train workers (sources, DDP distillation) ran on both, per Ray's state API.
        from ray.util.state import list_actors

        workers = list_actors(address=lc.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")],
                              limit=1000, raise_on_missing_output=False)
        assert {w.node_id[:8] for w in workers} == node_ids, [(w.node_id, w.state) for w in workers]
        timings["checks"] = time.monotonic() - t
        for run in sorted(runs, key=lambda r: r.info.start_time):  # where the job's time went
            took = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
            print(f"  {run.data.tags.get(STAGE_TAG, 'parent'):7s} {run.info.run_name:48s} "
                  f"{took:6.1f}s  {run.data.tags.get(NODE_TAG, '')}")

        # Every listener of every process started, sampled while the job ran and once more now.
        started.extend(lc.processes() + lb.process_tree([mlf.pid]))
        log.sample(started)
        assert log.samples >= 3
        assert not log.bad(), f"listening beyond loopback during the job ({log.samples} samples):\n" + \
            log.describe(log.bad())
        lb.assert_all_loopback(lc.processes() + [psutil.Process(mlf.pid)], "after the job")
    finally:
        t = time.monotonic()
        if pre is not None and pre.poll() is None:
            survivors += lb.kill_tree([pre.pid])
        if lc is not None:
            started = lb.process_tree(started) + lc.processes()
            survivors += lc.stop()
        started += lb.process_tree([mlf.pid])
        survivors += lb.stop_mlflow_server(mlf)
        survivors += lb.kill_tree(lb.alive(started))
        timings["stop"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t_start
        _report(request, timings)

    assert not survivors, [f"{p.pid} {p.name()}" for p in survivors]
    assert mlf.poll() is not None
    assert not lb.alive(started), [p.pid for p in lb.alive(started)]
    assert len({p.pid for p in started}) > 10  # gcs, raylets, dashboard, agents, workers, drivers, mlflow
