"""Faults during a run, on a real local Ray: a training worker killed with SIGKILL, a stage that fails
for good, a Tune trial that fails alone; and the next run reusing what the failed one finished."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import EXIT_FAILED, main
from orchestrator.tracking import PARENT_TAG, STAGE_TAG, TASK_TAG

SMOKE = str(Path(__file__).resolve().parents[2] / "pipelines" / "smoke.yaml")
# Long enough sources that a worker can be killed between two checkpoints.
LONG_SOURCES = ["--set", "source.steps=300", "--set", "source.eval_every=10"]

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


def kill_a_train_worker_after_its_first_checkpoint(storage: Path, killed: list[int], stop: threading.Event):
    """SIGKILL one Ray Train worker of a source job once that job has a checkpoint to restart from."""
    while not stop.is_set():
        if any(storage.glob("mpt-smoke-source-*/checkpoint_*")):
            # only this test's Ray (started by this process), never another Ray on the machine
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if (proc.cmdline() or [""])[0].startswith("ray::RayTrainWorker"):
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                        return
        time.sleep(0.1)


def test_faults_and_recovery(local_ray, tmp_path):
    # Run 1: a worker is killed mid-source (recovered), then the distillation diverges (fails for good).
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_a_train_worker_after_its_first_checkpoint,
                              args=(tmp_path / "ray_results", killed, stop), daemon=True)
    killer.start()
    try:
        rc, out, err = run(tmp_path, *LONG_SOURCES, "--set", "distill.lr=1e30")
    finally:
        stop.set()
    assert killed, "no Ray Train worker was found to kill"
    assert rc == EXIT_FAILED, out + err
    assert "stage distill" in err and "diverged" in err and "run the same command again" in err

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mpt-smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    status = {r.data.tags.get(STAGE_TAG, "parent"): set() for r in runs}
    for r in runs:
        status[r.data.tags.get(STAGE_TAG, "parent")].add(r.info.status)
    assert status == {"parent": {"FAILED"}, "source": {"FINISHED"}, "distill": {"FAILED"}}
    sources = [r for r in runs if r.data.tags.get(STAGE_TAG) == "source"]
    restarted = [r for r in sources if r.data.tags.get("mpt.restarted") == "true"]
    assert len(restarted) == 1, "the killed worker's job should record its restart"
    (restart,) = client.get_metric_history(restarted[0].info.run_id, "restarted_from_step")
    assert 0 <= restart.value < 300 and restarted[0].data.tags["mpt.attempts"] == "2"
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
    assert "failed" in out  # the report lists the failed trial
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
