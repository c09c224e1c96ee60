"""A pipeline whose driver is killed with SIGKILL mid-stage, started again with the same command:
finished stages are reused, the interrupted ones resume (each source's Train job from its own
checkpoint, a Tune sweep with its finished trials kept; a saved state that the kill cut short:
tests/unit/pipeline/test_sweep_state.py), and the dead run's MLflow runs end KILLED instead of
staying RUNNING. Both tests share one store: the sweep test reuses the first test's sources and
distillation."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from helpers.pipeline import running
from mlflow.tracking import MlflowClient

from orchestrator.pipeline.sweep_state import unreadable_state_files
from orchestrator.tracking import PARENT_TAG, STAGE_TAG, TASK_TAG

SMOKE = str(Path(__file__).resolve().parents[2] / "pipelines" / "smoke.yaml")

pytestmark = pytest.mark.slow


SOURCE_STEPS = 80
# The sweep test: three MPT trials, one at a time and all to the end (FIFO), so "finished before the
# kill" is well defined; its own target settings, so sources and distillation are reused.
SWEEP = ["--set", "target.steps=40", "--set", "target.eval_every=10", "--set", "target.max_concurrent_trials=1",
         "--set", "target.scheduler.type=fifo", "--set", "target.baselines=[]",
         "--set", "target.search_space={rank: {grid: [1, 2, 3]}, lr: {grid: [0.3]}}"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


def command(store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "run", SMOKE, "--tracking-uri", f"sqlite:///{store}/mlflow.db",
            "--set", f"source.steps={SOURCE_STEPS}", "--set", "source.eval_every=10", *extra]


def wait_until(ready, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the pipeline ended before {what}"
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"never {what}")


def stopped_while(whole, proc: subprocess.Popen) -> bool:
    """Stop the driver, every thread of it (Tune's copy of its state to storage runs in one); leave it
    stopped if ``whole()``, else let it go on."""
    os.kill(proc.pid, signal.SIGSTOP)
    if whole():
        return True
    os.kill(proc.pid, signal.SIGCONT)
    return False


def run_until_killed(store: Path, args: list[str], ready, what: str, log_name: str, whole=lambda: True,
                     **env: str) -> None:
    """Start the pipeline, SIGKILL its driver once ``ready()`` at a moment when ``whole()`` (what it
    writes is not half written), then the local Ray it started."""
    log = open(store / log_name, "w")
    proc = subprocess.Popen(args, cwd=store, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        wait_until(lambda: ready() and stopped_while(whole, proc), proc, what)
    finally:
        family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        if proc.poll() is None:  # a pipeline that already ended keeps wait_until's message
            os.kill(proc.pid, signal.SIGKILL)  # the driver dies without any chance to clean up
        proc.wait()
        time.sleep(2)
        for child in family:  # then its local Ray, which would otherwise linger on this machine
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.fixture(scope="module")
def resumed(store):
    """A pipeline killed while both sources train, then the same command again, run to the end as a
    user runs it (its own Ray, no --verbose): the killed parent run, each source's last logged step
    before the kill, and the second run's completed process."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")

    def evals(run) -> list:
        return client.get_metric_history(run.info.run_id, "eval_accuracy")

    def both_sources_checkpointed() -> bool:
        # a third eval is logged after the second report returned, which waits for Ray Train's
        # controller to take the first (a queue of one): the checkpoint at step 10 is registered
        runs = running(client, "source")
        return len(runs) == 2 and all(len(evals(r)) >= 3 for r in runs)

    run_until_killed(store, command(store), both_sources_checkpointed, "both sources reported three evals",
                     "first.log")
    experiment = client.get_experiment_by_name("mpt-smoke")
    (dead,) = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' and "
                                 "tags.`mpt.driver` LIKE '%'")
    interrupted = {r.data.tags[TASK_TAG]: max(m.step for m in evals(r))
                   for r in client.search_runs([experiment.experiment_id], f"tags.`{STAGE_TAG}` = 'source'")}
    again = subprocess.run(command(store), cwd=store, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return dead, interrupted, again


def test_a_killed_pipeline_resumes_where_it_stopped(store, resumed):
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("mpt-smoke")
    dead, interrupted, again = resumed
    assert f"run {dead.info.run_id} was left RUNNING by a pipeline that died; marked KILLED" in again.stdout
    assert "reused 0 stage(s) from earlier runs: none" in again.stdout  # no stage had finished

    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}
    old = [r for r in runs if r.data.tags.get(PARENT_TAG) == dead.info.run_id or r.info.run_id == dead.info.run_id]
    assert sorted(r.data.tags.get(STAGE_TAG, "parent") for r in old if r.info.status == "KILLED") == \
        ["parent", "source", "source"]
    new_parent = next(r for r in runs if PARENT_TAG not in r.data.tags and r.info.status == "FINISHED")
    sources = [r for r in runs if r.data.tags.get(PARENT_TAG) == new_parent.info.run_id
               and r.data.tags.get(STAGE_TAG) == "source"]
    assert sorted(r.data.tags[TASK_TAG] for r in sources) == sorted(interrupted) == ["nli", "sentiment"]
    for source in sources:  # each from its own last checkpoint, not step 0 ...
        (restart,) = client.get_metric_history(source.info.run_id, "restarted_from_step")
        assert 10 <= restart.value <= interrupted[source.data.tags[TASK_TAG]] < SOURCE_STEPS, restart.value
        # ... training no step before it again, and every step after it
        trained = {m.step for m in client.get_metric_history(source.info.run_id, "train_loss")}
        assert trained == set(range(int(restart.value) + 1, SOURCE_STEPS + 1)), sorted(trained)[:5]


def test_the_terminal_shows_the_projects_lines_and_the_log_file_the_rest(store, resumed):
    _, _, again = resumed
    terminal = again.stdout + again.stderr
    # progress of every stage that ran, then the results
    assert re.search(r"^\[source:nli\] step \d+/80: .*eval_accuracy=", again.stdout, re.M), terminal[-3000:]
    assert re.search(r"^\[distill\] step 12/12: .*eval_mean=", again.stdout, re.M), terminal[-3000:]
    assert re.search(r"^\[target:review_polarity:mpt:\w+\] step 12/12: .*eval_accuracy=", again.stdout, re.M)
    assert "All target trials:" in again.stdout and "MPT minus each method on test" in again.stdout
    # and none of Ray's, Ray Train's or Tune's own output
    for noise in ("(raylet)", "PYTHON worker processes", "Trial status", "Configuration for experiment", "╭",
                  "Checkpoint successfully created", "tensorboard", "Token authentication", "pid="):
        assert noise not in terminal, noise
    (line,) = [line for line in again.stdout.splitlines() if "Tune's and the libraries' output:" in line]
    log_file = Path(line.split("output: ")[1].split(" (--verbose")[0])
    kept = log_file.read_text()
    assert log_file.parent == store / "ray_results" / "logs"
    assert "Checkpoint successfully created" in kept and "(RayTrainWorker pid=" in kept
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    parent = client.get_run(re.search(r"MLflow parent run (\w+)", again.stdout).group(1))
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "logs")] == [f"logs/{log_file.name}"]


def saved_trials(sweep_dir: Path) -> list[dict]:
    """The trials in the sweep's saved state, what ``Tuner.restore`` reads (empty while unwritten)."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        return [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
    except (ValueError, KeyError):  # being rewritten
        return []


def saved_finished_ranks(sweep_dirs) -> set[str]:
    return {str(t["config"]["rank"]) for d in sweep_dirs for t in saved_trials(d) if t["status"] == "TERMINATED"}


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(store):
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("mpt-smoke")
    before = {r.info.run_id for r in client.search_runs([experiment.experiment_id], max_results=1000)}
    earlier_sweeps = set((store / "ray_results").glob("mpt-smoke-target-*"))

    def new_sweeps() -> set[Path]:
        return set((store / "ray_results").glob("mpt-smoke-target-*")) - earlier_sweeps

    def one_trial_saved_finished_and_the_next_running() -> bool:
        return bool(saved_finished_ranks(new_sweeps())) and \
            any(client.get_metric_history(r.info.run_id, "eval_accuracy") for r in running(client, "target"))

    def saved_state_whole() -> bool:  # Tune rewrites it in place: a kill mid-write leaves it cut short
        return not any(unreadable_state_files(str(d)) for d in new_sweeps())

    # Tune saves the sweep's state every 10 s by default, longer than these trials take; the test
    # needs a saved state with a finished trial while the sweep still runs, so it asks for every step.
    run_until_killed(store, command(store, *SWEEP), one_trial_saved_finished_and_the_next_running,
                     "a trial finished and the next one reported", "sweep.log", saved_state_whole,
                     TUNE_GLOBAL_CHECKPOINT_S="0")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    first = [r for r in runs if r.info.run_id not in before]
    (dead,) = [r for r in first if PARENT_TAG not in r.data.tags]
    # "finished" is what the saved state says: a trial that ended after the last save is trained again
    done = saved_finished_ranks(new_sweeps())
    assert done and len(done) < 3, done
    assert done <= {r.data.params["rank"] for r in first
                    if r.data.tags.get(STAGE_TAG) == "target" and r.info.status == "FINISHED"}

    again = subprocess.run(command(store, *SWEEP), cwd=store, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"run {dead.info.run_id} was left RUNNING by a pipeline that died; marked KILLED" in again.stdout
    assert "reused 3 stage(s) from earlier runs: distill, source:nli, source:sentiment" in again.stdout
    assert "resuming sweep" in again.stdout and "cannot resume" not in again.stdout

    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}
    new_parent = max((r for r in runs if PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time)
    assert new_parent.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get(PARENT_TAG) == new_parent.info.run_id
              and r.data.tags.get(STAGE_TAG) == "target"]
    rerun = {r.data.params["rank"] for r in trials}
    assert rerun == {"1", "2", "3"} - done  # finished trials are kept, not trained again

    def trained_steps(run) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))

    # the trial training at the kill had logged steps; it trains again from its start, every step once
    first_ids = {r.info.run_id for r in first}
    cut = {r.data.params["rank"] for r in runs if r.info.run_id in first_ids and r.info.status == "KILLED"
           and r.data.tags.get(STAGE_TAG) == "target" and trained_steps(r)}
    assert cut and cut <= rerun, (cut, rerun)
    assert all(trained_steps(r) == list(range(1, 41)) for r in trials)
    results = pd.read_csv(client.download_artifacts(new_parent.info.run_id, "report/trials.csv", str(store)))
    assert sorted(results["rank"].astype(int)) == [1, 2, 3] and set(results["status"]) == {"completed"}
