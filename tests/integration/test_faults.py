"""Faults during a run, on a real local Ray: a training worker killed with SIGKILL, a stage that fails
for good, a Tune trial that fails alone; and the next run reusing what the failed one finished."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import EXIT_FAILED, main
from orchestrator.tracking import PARENT_TAG, STAGE_TAG, TASK_TAG

SMOKE = str(Path(__file__).resolve().parents[2] / "pipelines" / "smoke.yaml")
# Long enough sources that a worker can be killed after its first checkpoints and well before the end.
SOURCE_STEPS, EVAL_EVERY = 150, 10
LONG_SOURCES = ["--set", f"source.steps={SOURCE_STEPS}", "--set", f"source.eval_every={EVAL_EVERY}"]
KILLED_SOURCE = "sentiment"

pytestmark = pytest.mark.slow


def run(store: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(store)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["run", SMOKE, "--tracking-uri", f"sqlite:///{store}/mlflow.db", *args])
    finally:
        os.chdir(cwd)
    return rc, out.getvalue(), err.getvalue()


def kill_a_source_worker_after_its_checkpoint(store: Path, source: str, killed: list[int], stop: threading.Event):
    """SIGKILL the Ray Train worker of one source job once that job has a checkpoint to restart from.

    Ray Train's controller collects a worker's reports every 2 s through a queue of one, so a report
    returns before its checkpoint is registered, and a second report waits for the first to be taken.
    Its third eval in MLflow (logged before that eval's report) therefore means the second report
    returned, so the first checkpoint (at ``eval_every``) was taken: a restart has it to start from.
    The worker is told apart from the other source's by its working directory, named after the job.
    """
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    job = f"mpt-smoke-source-{source}-"
    while not stop.is_set():
        experiment = client.get_experiment_by_name("mpt-smoke")
        runs = client.search_runs([experiment.experiment_id], f"tags.`{STAGE_TAG}` = 'source' and "
                                  f"tags.`{TASK_TAG}` = '{source}' and attributes.status = 'RUNNING'") if experiment else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "eval_accuracy")) >= 3:
            # only this test's Ray (started by this process), never another Ray on the machine
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    if (proc.cmdline() or [""])[0].startswith("ray::RayTrainWorker") and job in proc.cwd():
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                        return
        time.sleep(0.2)


def test_faults_and_recovery(local_ray, tmp_path):
    # Run 1: a worker is killed mid-source (recovered), then the distillation diverges (fails for good).
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_a_source_worker_after_its_checkpoint,
                              args=(tmp_path, KILLED_SOURCE, killed, stop), daemon=True)
    killer.start()
    try:
        rc, out, err = run(tmp_path, *LONG_SOURCES, "--set", "distill.lr=1e30")
    finally:
        stop.set()
    assert killed, "no Ray Train worker was found to kill"
    assert rc == EXIT_FAILED, out + err
    assert "stage distill" in err and "diverged" in err and "run the same command again" in err
    assert "pid=" not in out + err  # the cause, not the workers' tracebacks: those are in the log file

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mpt-smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    status = {r.data.tags.get(STAGE_TAG, "parent"): set() for r in runs}
    for r in runs:
        status[r.data.tags.get(STAGE_TAG, "parent")].add(r.info.status)
    # The baselines train beside the distillation: a trial that had not finished when it failed was
    # stopped, and says why. None is left RUNNING.
    stopped = [r for r in runs if r.info.status == "KILLED"]
    assert status.pop("target", set()) <= {"KILLED", "FINISHED"}
    assert all(r.data.tags[STAGE_TAG] == "target" and "stopped because the pipeline failed" in r.data.tags["mpt.error"]
               and "diverged" in r.data.tags["mpt.error"] for r in stopped)
    assert status == {"parent": {"FAILED"}, "source": {"FINISHED"}, "distill": {"FAILED"}}
    sources = [r for r in runs if r.data.tags.get(STAGE_TAG) == "source"]
    restarted = [r for r in sources if r.data.tags.get("mpt.restarted") == "true"]
    assert [r.data.tags[TASK_TAG] for r in restarted] == [KILLED_SOURCE], "only the killed job restarts"
    assert restarted[0].data.tags["mpt.attempts"] == "2" and restarted[0].info.status == "FINISHED"
    (restart,) = client.get_metric_history(restarted[0].info.run_id, "restarted_from_step")
    # the new attempt starts at a checkpoint (an eval step), not at step 0 ...
    assert EVAL_EVERY <= restart.value < SOURCE_STEPS and restart.value % EVAL_EVERY == 0, restart.value
    # ... and trains no step before it again: those steps' losses were logged once, by the first attempt
    steps = Counter(m.step for m in client.get_metric_history(restarted[0].info.run_id, "train_loss"))
    assert set(steps) == set(range(1, SOURCE_STEPS + 1))
    assert {s: n for s, n in steps.items() if s <= restart.value and n != 1} == {}
    for r in sources:  # the failed pipeline kept every finished stage's artifacts
        task = r.data.tags[TASK_TAG]
        assert client.list_artifacts(r.info.run_id, "teacher")[0].path == f"teacher/teacher_{task}.safetensors"
    (distill,) = [r for r in runs if r.data.tags.get(STAGE_TAG) == "distill"]
    assert "diverged" in distill.data.tags["mpt.error"]

    # Run 2: sane distillation, one target trial whose learning rate diverges.
    space = "target.search_space={rank: {grid: [1]}, lr: {grid: [0.3, 1.0e+30]}}"
    rc, out, err = run(tmp_path, *LONG_SOURCES, "--set", space, "--set", "target.baselines=[]")
    assert rc == 0, out + err
    assert "reused 2 stage(s) from earlier runs: source:nli, source:sentiment" in out
    runs = client.search_runs([experiment.experiment_id], "attributes.status != 'FAILED'", max_results=1000)
    parent = max((r for r in runs if PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time)
    trials = client.search_runs([experiment.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' "
                                f"and tags.`{STAGE_TAG}` = 'target'", max_results=100)
    assert sorted(t.info.status for t in trials) == ["FAILED", "FINISHED"]
    failed = next(t for t in trials if t.info.status == "FAILED")
    assert float(failed.data.params["lr"]) == 1e30 and "diverged" in failed.data.tags["mpt.error"]
    # the trials table lists the diverged trial as failed beside the one that trained
    listed = out.split("All target trials:")[1].split("Chosen per target")[0]
    statuses = Counter(word for line in listed.splitlines()[2:] for word in line.split()
                       if word in ("failed", "completed", "early_stopped"))
    assert statuses["failed"] == 1 and sum(statuses.values()) == 2, listed
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
