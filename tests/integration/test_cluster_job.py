"""The smoke pipeline as a real Ray job on a 2-node cluster, tracked by a real MLflow server, all on
127.0.0.1 and all stopped by PID (never `ray stop`).

The cluster runs with token authentication on, as ``cluster.yaml`` starts Ray, and the job is
submitted the way the README and docs/cluster.md show: ``ray job submit --working-dir <checkout>
--runtime-env-json ... -- python -m orchestrator run ...``, with ``RAY_AUTH_MODE=token`` and the
token in the client's environment, retried only while the head cannot take a job yet. The same
command without the token fails with Ray's 401, with a wrong token with its 403, and neither submits
anything.

Resources are set so that the work must use both nodes: each node offers 1 CPU, each source job and
each target trial asks for 1 CPU (the two MPT trials run one per node unless Tune hands the second
to the first one's process), and distillation runs DDP with 2 workers of 1 CPU, one on each node.
The test then checks, through the MLflow server's API, the run tree, the artifacts and the
``mpt.node`` tag of every child run; through Ray's state API, that Train workers ran on both nodes;
that every node's address and every listening socket of every process it started (sampled while
the job runs) is loopback; and that the pre-flight passes against the live cluster and names a
request that does not fit.

The job runs with credentials in both URIs it is given: basic-auth userinfo in the tracking URI
(the test's MLflow server has no login and ignores it) and a token in the query of the ``file://``
storage URI (pyarrow, and so Ray Train, read it as the local path). Neither secret may appear in any
param, tag or artifact of any run, in the job's logs, in any file of Ray's log directories (driver
and worker output included) or in the pre-flight's output; nor in the messages of a run that fails
on them (``test_credentials_in_uris_stay_out_of_a_failed_runs_messages``, no cluster needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from helpers.mlflow_server import start_mlflow_server, stop_mlflow_server, wait_for_mlflow
from helpers.processes import NO_PHONE_HOME, alive, kill_tree, process_tree
from helpers.ray_cluster import LoopbackCluster, ray_cli, start_loopback_cluster, wait_for_job
from helpers.secrets import leaks, run_texts, sentinels
from helpers.sockets import ListenerLog, assert_all_loopback, free_port


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
SUBMIT_FOR_S = 120.0  # how long a submit is retried while the head cannot take a job yet
SUBMIT_EVERY_S = 2.0
CLI_TIMEOUT_S = 300  # one `ray` CLI call: mostly `import ray`, which takes 30 s on 2 loaded CPUs
# What Ray 2.60's `ray job submit` prints while the head cannot take a job yet; anything else fails at
# once. Seen on a loaded machine right after the head started (dashboard/modules/dashboard_sdk.py,
# dashboard/modules/job/job_head.py):
NOT_UP_YET = (
    # the dashboard's HTTP server is not listening yet (the CLI's version check gets ECONNREFUSED)
    "Failed to connect to Ray at address",
    # the dashboard is up, but the head's job agent has not registered in the GCS within the job
    # head's 10 s wait: HTTP 500 "No available agent to submit job, please try again later."
    "No available agent to submit job",
)
UNAUTHORIZED = "Unauthorized: Missing authentication token"  # the body of Ray's 401 (http_token_authentication.py)
FORBIDDEN = "Forbidden: Invalid authentication token"  # and of its 403

PREFLIGHT_SCRIPT = """
import json, sys
from orchestrator.pipeline.preflight import preflight
from orchestrator.spec.loading import load_spec
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


def _ray_log_files(temp_root: Path) -> dict[str, str]:
    """Every file in the session log directories of both nodes (``<temp_root>/ray`` for the head,
    ``<temp_root>/n2`` for the second node): Ray's own logs, the job driver's output, every worker's
    stdout/stderr. ``session_latest`` is a symlink to the session dir, so it is skipped."""
    dirs = [d for d in temp_root.glob("*/session_*/logs") if not d.parent.is_symlink()]
    return {str(f.relative_to(temp_root)): f.read_bytes().decode("latin-1")
            for d in dirs for f in d.rglob("*") if f.is_file()}


def _submit(lc: LoopbackCluster, env: dict[str, str], submission_id: str, runtime_env: dict,
            entrypoint: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """``ray job submit --no-wait`` as docs/cluster.md step 6 shows it, retried every SUBMIT_EVERY_S
    for SUBMIT_FOR_S while the output says the head cannot take a job yet (NOT_UP_YET), returned at
    once on anything else; (the last result, the number of tries)."""
    args = ["job", "submit", "--address", lc.dashboard_url, "--working-dir", str(ROOT),
            "--runtime-env-json", json.dumps(runtime_env), "--submission-id", submission_id, "--no-wait",
            "--", *entrypoint]
    deadline = time.monotonic() + SUBMIT_FOR_S
    tries = 0
    while True:
        tries += 1
        result = ray_cli(args, env, timeout=CLI_TIMEOUT_S)
        out = result.stdout + result.stderr
        if result.returncode == 0 or not any(s in out for s in NOT_UP_YET) or time.monotonic() > deadline:
            return result, tries
        time.sleep(SUBMIT_EVERY_S)


def _report(request, timings: dict[str, float]) -> None:
    line = " ".join(f"{k}={v:.1f}s" for k, v in timings.items())
    request.node.user_properties.append(("timings", timings))
    print(f"\n[{request.node.name}] {line}")


@pytest.mark.slow
def test_smoke_pipeline_as_a_job_on_two_loopback_nodes(tmp_path, request):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient, JobType
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    from orchestrator.spec.loading import apply_overrides, load_spec
    from orchestrator.tracking import NODE_TAG, PARENT_TAG, STAGE_TAG, TASK_TAG

    timings: dict[str, float] = {}
    t_start = time.monotonic()
    password, token = sentinels()
    storage = tmp_path / "ray_results"
    storage_uri = f"{storage.as_uri()}?token={token}"  # file:///.../ray_results?token=SENTINEL-tok-...
    url, mlf = start_mlflow_server(tmp_path / "mlflow", wait=False)  # boots while Ray starts
    tracking = url.replace("http://", f"http://mpt-user:{password}@")  # what the job gets; the server ignores it
    lc = None
    pre = None
    leaked: list[str] | None = None
    scanned = 0
    log = ListenerLog()
    started: list[psutil.Process] = []
    survivors: list[psutil.Process] = []
    try:
        t = time.monotonic()
        lc = start_loopback_cluster(head_cpus=1, node2_cpus=1, auth_token=uuid.uuid4().hex)
        timings["ray_start"] = time.monotonic() - t
        t = time.monotonic()
        wait_for_mlflow(url, mlf)
        timings["mlflow_ready_after_ray"] = time.monotonic() - t

        # Nothing but loopback: every node's address, the endpoints, every listener so far.
        with lc.in_process_client():  # the harness's GCS client, which needs the token too
            nodes = [n for n in lc.cluster.global_state.node_table() if n["Alive"]]
        assert len(nodes) == 2, nodes
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1", "127.0.0.1"], nodes
        assert lc.node_ips == ["127.0.0.1", "127.0.0.1"]
        assert url.startswith("http://127.0.0.1:") and lc.dashboard_url.startswith("http://127.0.0.1:")
        assert lc.gcs_address.startswith("127.0.0.1:"), lc.gcs_address
        node_ids = {n["NodeID"][:8] for n in nodes}
        assert_all_loopback(lc.processes() + [psutil.Process(mlf.pid)], "after start")

        # Pre-flight against the live cluster, from a separate driver (this process never joins it),
        # with the token in its environment, as a driver on the head has it.
        pre_log = tmp_path / "preflight.log"
        with open(pre_log, "wb") as out:  # a file, not a pipe: nobody reads it while the job runs
            pre = subprocess.Popen(
                [sys.executable, "-c", PREFLIGHT_SCRIPT, lc.gcs_address, str(ROOT / SMOKE), tracking, storage_uri,
                 json.dumps(OVERRIDES)],
                cwd=ROOT, env=lc.client_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(psutil.Process(pre.pid))

        # The pipeline, submitted with the CLI as docs/cluster.md step 6 shows it. The credentials are
        # in the spec, not on the command line: Ray's job log starts by echoing the entrypoint
        # (docs/cluster.md says so). Both nodes share this machine's disk, so the spec can live here.
        spec_file = tmp_path / "smoke_with_credentials.yaml"
        raw = apply_overrides(yaml.safe_load((ROOT / SMOKE).read_text()),
                              [*OVERRIDES, f"tracking.uri={tracking}", f"storage_path={storage_uri}"])
        spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        entrypoint = ["python", "-m", "orchestrator", "run", str(spec_file)]
        runtime_env = {
            "excludes": EXCLUDES,
            "env_vars": {
                **NO_PHONE_HOME,
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "GLOO_SOCKET_IFNAME": "lo",  # DDP traffic on loopback whatever the host name resolves to
                "PYTHONUNBUFFERED": "1",
            },
        }
        # First without the token: no RAY_AUTH_* variable, and a HOME without ~/.ray/auth_token, so the
        # answer does not depend on this machine's user (a token on disk without RAY_AUTH_MODE=token is
        # not sent either: test_loopback.py). Ray's 401, before anything is uploaded or submitted.
        t = time.monotonic()
        (tmp_path / "home_without_token").mkdir()
        no_token_env = {**lc.client_env(with_auth=False), "HOME": str(tmp_path / "home_without_token")}
        refused, refused_tries = _submit(lc, no_token_env, f"mpt-no-token-{uuid.uuid4().hex[:8]}", runtime_env,
                                         entrypoint)
        refused_out = refused.stdout + refused.stderr
        assert refused.returncode != 0 and UNAUTHORIZED in refused_out, (refused.returncode, refused_out[-3000:])
        timings["submit_without_token"] = time.monotonic() - t
        # Then with a wrong token, as a client in token mode with a stale or mistyped one sends it: Ray's 403.
        wrong_token = tmp_path / "wrong_auth_token"
        wrong_token.write_text(uuid.uuid4().hex)
        forbidden, _ = _submit(lc, {**lc.client_env(), "RAY_AUTH_TOKEN_PATH": str(wrong_token)},
                               f"mpt-wrong-token-{uuid.uuid4().hex[:8]}", runtime_env, entrypoint)
        forbidden_out = forbidden.stdout + forbidden.stderr
        assert forbidden.returncode != 0 and FORBIDDEN in forbidden_out, (forbidden.returncode, forbidden_out[-3000:])

        t = time.monotonic()
        job_id = f"mpt-smoke-{uuid.uuid4().hex[:8]}"
        submitted, tries = _submit(lc, lc.client_env(), job_id, runtime_env, entrypoint)
        submit_out = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, f"after {tries} tries:\n{submit_out[-5000:]}"
        assert f"Job '{job_id}' submitted successfully" in submit_out, submit_out[-3000:]
        timings["submit"] = time.monotonic() - t
        said = [line for line in refused_out.splitlines() if UNAUTHORIZED in line][:1]
        print(f"\n  submit: {tries} tries; without the token: {refused_tries} tries, {said}")
        # This process is not in token mode (Ray caches the mode per process): its clients send the
        # header Ray's own clients send in token mode.
        client = JobSubmissionClient(lc.dashboard_url, headers=lc.auth_headers())
        last_sample = 0.0

        def sample() -> None:
            nonlocal last_sample
            if time.monotonic() - last_sample >= SAMPLE_EVERY_S:
                procs = lc.processes() + process_tree([mlf.pid, *([pre.pid] if pre.poll() is None else [])])
                started.extend(procs)
                log.sample(procs)
                last_sample = time.monotonic()

        status = wait_for_job(client, job_id, timeout=JOB_TIMEOUT_S, poll=0.5, on_poll=sample)
        timings["job"] = time.monotonic() - t
        # The logs as `ray job logs` (docs/cluster.md step 7) shows them, with the token.
        shown = ray_cli(["job", "logs", "--address", lc.dashboard_url, job_id], lc.client_env(),
                           timeout=CLI_TIMEOUT_S)
        logs = shown.stdout + shown.stderr
        assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}:\n{logs[-20000:]}"
        assert shown.returncode == 0 and "[pipeline] finished" in logs, logs[-5000:]
        # The submits without the token and with a wrong one left nothing behind; the retried one made
        # exactly one job. (The list also holds the pre-flight's `ray.init()` driver, a job of type DRIVER.)
        assert [j.submission_id for j in client.list_jobs() if j.type == JobType.SUBMISSION] == [job_id]

        pre.wait(timeout=300)
        pre_out = pre_log.read_text()
        assert pre.returncode == 0, pre_out[-5000:]
        lines = [line for line in pre_out.splitlines() if line.startswith("PREFLIGHT ")]
        assert lines, pre_out[-5000:]
        result = json.loads(lines[-1].removeprefix("PREFLIGHT "))
        assert result["connected"] and result["nodes"] == 2, result  # the pre-flight's driver got in with the token
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

        # Work ran on both nodes: child runs tag the node they ran on ...
        tagged = {r.data.tags[NODE_TAG] for r in children}
        assert all(v.startswith("127.0.0.1/") for v in tagged), tagged
        assert {v.split("/", 1)[1] for v in tagged} == node_ids, (tagged, node_ids)
        # ... though the two trials may share one: with reuse_actors, Tune hands a pending trial to the
        # first trial's process when that one ends first (a 2 s trial, against a worker start of up to
        # 30 s on 2 loaded CPUs), and drops the process it was starting on the other node.
        trial_nodes = {r.data.tags[NODE_TAG].split("/", 1)[1] for r in by_stage["target"]}
        assert trial_nodes <= node_ids, (trial_nodes, node_ids)
        # ... and Ray Train workers (sources, DDP distillation) ran on both, per Ray's state API.
        # (ray.util.state.list_actors takes no headers; its client does.)
        workers = StateApiClient(lc.dashboard_url, headers=lc.auth_headers()).list(
            StateResource.ACTORS, ListApiOptions(filters=[("class_name", "=", "RayTrainWorker")], limit=1000),
            raise_on_missing_output=False)
        assert {w.node_id[:8] for w in workers} == node_ids, [(w.node_id, w.state) for w in workers]

        # The storage URI's query was not taken for part of a path: Train and Tune wrote into the
        # directory itself, and nothing on disk is named after the token.
        assert storage.is_dir() and len(list(storage.iterdir())) >= 4, list(tmp_path.iterdir())  # 2 sources, distill, 2 sweeps
        assert not [p for p in tmp_path.rglob("*") if token in p.name or "token=" in p.name]

        # Neither secret in any param, tag (key or value), metric name or artifact file of any run of
        # the experiment, in the job's logs, in any file of Ray's log directories (the job driver's
        # output, every worker's stdout/stderr, Ray's own logs), the pre-flight's output or the CLI's.
        texts: dict[str, str] = {"ray job logs": logs, "ray job submit": submit_out, "pre-flight": pre_out,
                                 "mlflow server log": mlf.log_path.read_text()}
        texts.update(run_texts(ml, runs, tmp_path / "artifacts"))
        ray_logs = _ray_log_files(lc.temp_root)
        texts.update({f"ray log {name}": text for name, text in ray_logs.items()})
        # The scans read what they should: the spec and tags, every run's artifacts, both nodes' logs,
        # the job driver's output, and workers' output (where the stages log).
        assert sum(" param " in k for k in texts) > 50 and sum(" tag " in k for k in texts) > 30, len(texts)
        assert sum(" artifact " in k for k in texts) >= 10, [k for k in texts if " artifact " in k]
        assert {name.split("/", 1)[0] for name in ray_logs} == {"ray", "n2"}, sorted(ray_logs)[:20]
        driver_logs = [t for name, t in ray_logs.items() if name.endswith(f"job-driver-{job_id}.log")]
        assert driver_logs and "[pipeline] finished" in driver_logs[0], sorted(ray_logs)
        assert sum("/worker-" in name for name in ray_logs) >= 4, sorted(ray_logs)
        assert any("[source:" in t for name, t in ray_logs.items() if "/worker-" in name)
        # Asserted last, so that a leak does not hide whether everything else holds.
        leaked, scanned = leaks((password, token), texts), len(texts)
        timings["checks"] = time.monotonic() - t
        for run in sorted(runs, key=lambda r: r.info.start_time):  # where the job's time went
            took = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
            print(f"  {run.data.tags.get(STAGE_TAG, 'parent'):7s} {run.info.run_name:48s} "
                  f"{took:6.1f}s  {run.data.tags.get(NODE_TAG, '')}")

        # Every listener of every process started, sampled while the job ran and once more now.
        started.extend(lc.processes() + process_tree([mlf.pid]))
        log.sample(started)
        assert log.samples >= 3
        assert not log.bad(), f"listening beyond loopback during the job ({log.samples} samples):\n" + \
            log.describe(log.bad())
        assert_all_loopback(lc.processes() + [psutil.Process(mlf.pid)], "after the job")
    finally:
        t = time.monotonic()
        if pre is not None and pre.poll() is None:
            survivors += kill_tree([pre.pid])
        if lc is not None:
            started = process_tree(started) + lc.processes()
            survivors += lc.stop()
        started += process_tree([mlf.pid])
        survivors += stop_mlflow_server(mlf)
        survivors += kill_tree(alive(started))
        timings["stop"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t_start
        _report(request, timings)

    assert not survivors, [f"{p.pid} {p.name()}" for p in survivors]
    assert mlf.poll() is not None
    assert not alive(started), [p.pid for p in alive(started)]
    assert len({p.pid for p in started}) > 10  # gcs, raylets, dashboard, agents, workers, drivers, mlflow
    assert leaked == [], f"{len(leaked)} line(s) with a secret in {scanned} texts scanned:\n" + "\n".join(leaked)


def test_credentials_in_uris_stay_out_of_a_failed_runs_messages(tmp_path):
    """`run` with both URIs unusable, each carrying a secret: the tracking server's port is dead and
    the storage URI points below a regular file. The pre-flight names both problems, quoting both
    URIs, and exits 2 before any compute; neither secret is in what it prints. No cluster: with no
    address the pre-flight estimates the local machine and starts no Ray."""
    password, token = sentinels()
    (tmp_path / "a_file").write_text("not a directory")
    dead_port = free_port()  # nothing listens there (it was free a moment ago, and this test starts nothing)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING"))}
    # This checkout's code whatever the cwd: an editable install may point at another checkout, and
    # Python's path search (PYTHONPATH first) runs before the editable install's finder.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(ROOT / SMOKE),
         "--tracking-uri", f"http://mpt-user:{password}@127.0.0.1:{dead_port}",
         "--set", f"storage_path={(tmp_path / 'a_file' / 'ray_results').as_uri()}?token={token}"],
        cwd=tmp_path, env={**env, **NO_PHONE_HOME}, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-5000:]
    # Failed for the two reasons set up here, with both URIs shown (redacted), so that "no secret in
    # the output" is not true merely because nothing was said about the URIs.
    assert "tracking.uri" in out and "connection refused" in out, out[-5000:]
    assert f"http://***@127.0.0.1:{dead_port}" in out, out[-5000:]
    assert "storage_path" in out and "is not a directory" in out and "?token=***" in out, out[-5000:]
    assert not leaks((password, token), {"stdout": result.stdout, "stderr": result.stderr})


def test_the_submit_retries_only_on_what_this_ray_prints_while_starting():
    """The texts the job test retries on, and the 401 and 403 it expects, are the ones the installed Ray
    produces (read from its source; seen in its output on a loaded machine): if a Ray upgrade changes
    them, the retry would stop matching and a slow head would fail the job test for no reason."""
    import inspect

    from ray._private.authentication import http_token_authentication
    from ray.dashboard.modules import dashboard_sdk
    from ray.dashboard.modules.job import job_head

    assert NOT_UP_YET[0] in inspect.getsource(dashboard_sdk)
    assert NOT_UP_YET[1] in inspect.getsource(job_head)
    assert UNAUTHORIZED in inspect.getsource(http_token_authentication)
    assert FORBIDDEN in inspect.getsource(http_token_authentication)
