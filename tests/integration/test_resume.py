"""A pipeline whose driver is killed with SIGKILL mid-stage, started again with the same command:
finished stages are reused, the interrupted one resumes from its checkpoint, and the dead run's
MLflow runs end KILLED instead of staying RUNNING."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking import PARENT_TAG, STAGE_TAG

SMOKE = str(Path(__file__).resolve().parents[2] / "pipelines" / "smoke.yaml")

pytestmark = pytest.mark.slow


def command(store: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "run", SMOKE, "--tracking-uri", f"sqlite:///{store}/mlflow.db",
            "--set", "distill.steps=150", "--set", "distill.eval_every=10"]


def wait_for_distill_checkpoint(client: MlflowClient, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pipeline ended before it could be killed"
        experiment = client.get_experiment_by_name("mpt-smoke")
        if experiment:
            runs = client.search_runs([experiment.experiment_id],
                                      f"tags.`{STAGE_TAG}` = 'distill' and attributes.status = 'RUNNING'")
            if runs and len(client.get_metric_history(runs[0].info.run_id, "eval_mean")) >= 2:
                return
        time.sleep(0.5)
    raise TimeoutError("the distillation never reported an eval")


def test_a_killed_pipeline_resumes_where_it_stopped(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(command(tmp_path), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_distill_checkpoint(client, proc)
    finally:
        family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies without any chance to clean up
        proc.wait()
        time.sleep(2)
        for child in family:  # then its local Ray, which would otherwise linger on this machine
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    experiment = client.get_experiment_by_name("mpt-smoke")
    (dead,) = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' and "
                                 "tags.`mpt.driver` LIKE '%'")
    interrupted_step = max(m.step for m in client.get_metric_history(
        client.search_runs([experiment.experiment_id], f"tags.`{STAGE_TAG}` = 'distill'")[0].info.run_id, "eval_mean"))

    again = subprocess.run(command(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"run {dead.info.run_id} was left RUNNING by a pipeline that died; marked KILLED" in again.stdout
    assert "reused 2 stage(s) from earlier runs: source:nli, source:sentiment" in again.stdout

    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}
    old = [r for r in runs if r.data.tags.get(PARENT_TAG) == dead.info.run_id or r.info.run_id == dead.info.run_id]
    assert {r.data.tags.get(STAGE_TAG, "parent"): r.info.status for r in old if r.info.status == "KILLED"} == \
        {"parent": "KILLED", "distill": "KILLED"}
    new_parent = next(r for r in runs if PARENT_TAG not in r.data.tags and r.info.status == "FINISHED")
    (new_distill,) = [r for r in runs if r.data.tags.get(PARENT_TAG) == new_parent.info.run_id
                      and r.data.tags.get(STAGE_TAG) == "distill"]
    (resumed,) = client.get_metric_history(new_distill.info.run_id, "restarted_from_step")
    assert 10 <= resumed.value <= interrupted_step < 150  # the last checkpoint, not step 0
    first_eval = min(m.step for m in client.get_metric_history(new_distill.info.run_id, "eval_mean"))
    assert first_eval > resumed.value  # no step before the checkpoint was trained again
