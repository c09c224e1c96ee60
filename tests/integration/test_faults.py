"""Faults during a run, on a real local Ray: training workers killed with SIGKILL (a source's and a
distillation's, each restarting from its checkpoint), a stage that fails for good while a baseline
trial trains beside it (the trial is stopped), a Tune trial that fails alone; and the next run
reusing what the failed one finished (with ``registry.enabled: false``, which registers no model)."""

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
from helpers.pipeline import running
from helpers.processes import alive
from helpers.secrets import ENV_SECRETS, leaks, run_texts, sentinels
from mlflow.tracking import MlflowClient

from orchestrator.cli import EXIT_FAILED, main
from orchestrator.tracking import METHOD_TAG, PARENT_TAG, STAGE_TAG, TASK_TAG

SMOKE = str(Path(__file__).resolve().parents[2] / "pipelines" / "smoke.yaml")
# Long enough sources that a worker can be killed after its first checkpoints and well before the end.
SOURCE_STEPS, EVAL_EVERY = 150, 10
LONG_SOURCES = ["--set", f"source.steps={SOURCE_STEPS}", "--set", f"source.eval_every={EVAL_EVERY}"]
KILLED_SOURCE = "sentiment"
# Run 1's distillation: long enough to lose a worker after its first checkpoint, restart from it, and
# lose one again, which fails it for good (one failure allowed)
LONG_DISTILL = ["--set", "distill.steps=600", "--set", f"distill.eval_every={EVAL_EVERY}",
                "--set", "distill.max_failures=1"]
# Run 1's baseline trial: still training when the distillation fails beside it
LONG_TRIALS = ["--set", "target.steps=20000", "--set", "target.eval_every=20"]

pytestmark = pytest.mark.slow

os.environ.update(ENV_SECRETS)  # in the driver's environment and, set before Ray starts, every worker's


def run(store: Path, token: str, *args: str) -> tuple[int, str, str]:
    """``run`` of the smoke spec with a token in its storage URI (pyarrow, and so Ray, read a
    ``file://`` URI's query as no part of the path)."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(store)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["run", SMOKE, "--tracking-uri", f"sqlite:///{store}/mlflow.db",
                       "--set", f"storage_path={(store / 'ray_results').as_uri()}?token={token}", *args])
    finally:
        os.chdir(cwd)
    return rc, out.getvalue(), err.getvalue()


def ray_processes(title: str, job: str = "") -> list[psutil.Process]:
    """This test's Ray processes (started by this process, never another Ray on the machine) whose
    title starts with ``title``, and whose working directory, named after their job, holds ``job``."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if (proc.cmdline() or [""])[0].startswith(title) and job in proc.cwd():
                found.append(proc)
    return found


def inject_faults(store: Path, killed: dict[str, int], trials: list[psutil.Process], stop: threading.Event) -> None:
    """SIGKILL, in turn: the worker of one source job once that job has a checkpoint to restart from;
    a distillation worker once the distillation has one; and, once the restarted distillation has
    reported and a baseline trial is training beside it, a distillation worker again, which fails the
    stage for good. Each kill's pid goes in ``killed``, and the trials' processes at the last in ``trials``.

    Ray Train's controller collects a worker's reports every 2 s through a queue of one, so a report
    returns before its checkpoint is registered, and a second report waits for the first to be taken.
    A third eval in MLflow (logged before that eval's report) therefore means the second report
    returned, so the first checkpoint (at ``eval_every``) was taken: a restart has it to start from.
    """
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")

    def history(stage: str, metric: str, task: str | None = None) -> list:
        runs = running(client, stage, task)
        return client.get_metric_history(runs[0].info.run_id, metric) if runs else []

    def kill_a_worker_once(job: str, ready, what: str) -> None:
        while not stop.is_set():
            if ready():
                # a worker of the restarted group, not the one killed before
                for proc in ray_processes("ray::RayTrainWorker", job):
                    if proc.pid not in killed.values():
                        os.kill(proc.pid, signal.SIGKILL)
                        killed[what] = proc.pid
                        return
            time.sleep(0.2)

    def distill_restarted_and_a_trial_trains() -> bool:
        restarts = history("distill", "restarted_from_step")
        if not restarts or not any(m.timestamp > restarts[0].timestamp for m in history("distill", "eval_mean")) \
                or not any(client.get_metric_history(r.info.run_id, "train_loss") for r in running(client, "target")):
            return False
        trials[:] = ray_processes("ray::ImplicitFunc")  # read just before the kill, so these were training
        return bool(trials)

    kill_a_worker_once(f"mpt-smoke-source-{KILLED_SOURCE}-",
                       lambda: len(history("source", "eval_accuracy", KILLED_SOURCE)) >= 3, "source")
    kill_a_worker_once("mpt-smoke-distill-", lambda: len(history("distill", "eval_mean")) >= 3, "distill")
    kill_a_worker_once("mpt-smoke-distill-", distill_restarted_and_a_trial_trains, "distill_again")


def restarted_from_a_checkpoint(client: MlflowClient, run, steps: int) -> None:
    """The run restarted once, at a checkpoint (an eval step) and not at step 0, and trained no step
    before it again: those steps' losses were logged once, by the first attempt."""
    assert run.data.tags.get("mpt.restarted") == "true" and run.data.tags["mpt.attempts"] == "2", run.data.tags
    (restart,) = client.get_metric_history(run.info.run_id, "restarted_from_step")
    assert EVAL_EVERY <= restart.value < steps and restart.value % EVAL_EVERY == 0, restart.value
    logged = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert set(range(1, int(restart.value) + 1)) <= set(logged)
    assert {s: n for s, n in logged.items() if s <= restart.value and n != 1} == {}


def test_faults_and_recovery(local_ray, tmp_path):
    # Run 1: a source worker is killed (recovered), a distillation worker too (recovered), and once
    # more beside a training baseline trial: the distillation fails for good and the trial is stopped.
    killed: dict[str, int] = {}
    trials: list[psutil.Process] = []
    _, token = sentinels()
    stop = threading.Event()
    killer = threading.Thread(target=inject_faults, args=(tmp_path, killed, trials, stop), daemon=True)
    killer.start()
    try:
        rc, out, err = run(tmp_path, token, *LONG_SOURCES, *LONG_DISTILL, *LONG_TRIALS)
    finally:
        stop.set()
    assert set(killed) == {"source", "distill", "distill_again"}, killed
    assert rc == EXIT_FAILED, out + err
    # the stage, its task (a distillation's task is its sources) and the cause
    assert "stage distill, task sentiment+nli: " in err and "run the same command again" in err
    assert "pid=" not in out + err  # the cause, not the workers' tracebacks: those are in the log file
    # The trial that trained beside it was stopped, not left training on this Ray after run returned
    # (Ray ends an actor whose owner is gone within moments: a few seconds are allowed for it).
    assert trials, "no trial was training when the distillation failed"
    deadline = time.monotonic() + 30
    while alive(trials) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(trials), "a trial still trains after the pipeline failed"

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mpt-smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    status = {r.data.tags.get(STAGE_TAG, "parent"): set() for r in runs}
    for r in runs:
        status[r.data.tags.get(STAGE_TAG, "parent")].add(r.info.status)
    # the trial beside it is KILLED with the cause, none is left RUNNING, every finished stage is kept
    (distill,) = [r for r in runs if r.data.tags.get(STAGE_TAG) == "distill"]
    (trial,) = [r for r in runs if r.data.tags.get(STAGE_TAG) == "target"]
    assert trial.info.status == "KILLED" and trial.data.tags[METHOD_TAG] == "vanilla_pt"
    assert trial.data.tags["mpt.error"].startswith("stopped because the pipeline failed: stage distill, task "
                                                   "sentiment+nli: "), trial.data.tags["mpt.error"]
    assert status == {"parent": {"FAILED"}, "source": {"FINISHED"}, "distill": {"FAILED"}, "target": {"KILLED"}}
    sources = [r for r in runs if r.data.tags.get(STAGE_TAG) == "source"]
    restarted = [r for r in sources if r.data.tags.get("mpt.restarted") == "true"]
    assert [r.data.tags[TASK_TAG] for r in restarted] == [KILLED_SOURCE], "only the killed job restarts"
    assert restarted[0].info.status == "FINISHED"
    restarted_from_a_checkpoint(client, restarted[0], SOURCE_STEPS)
    logged = {m.step for m in client.get_metric_history(restarted[0].info.run_id, "train_loss")}
    assert logged == set(range(1, SOURCE_STEPS + 1))  # and then trained to its end
    restarted_from_a_checkpoint(client, distill, 600)  # its first restart; the second worker death ended it
    (restart,) = client.get_metric_history(distill.info.run_id, "restarted_from_step")
    assert any(m.timestamp > restart.timestamp for m in client.get_metric_history(distill.info.run_id, "eval_mean"))
    for r in sources:  # the failed pipeline kept every finished stage's artifacts
        task = r.data.tags[TASK_TAG]
        assert client.list_artifacts(r.info.run_id, "teacher")[0].path == f"teacher/teacher_{task}.safetensors"
    # No credential (the storage URI's token, the environment's secrets) in what the failed run printed,
    # its error messages (the runs' error tags), its params, tags and artifacts (the log file included)
    texts = {"stdout": out, "stderr": err, **run_texts(client, runs, tmp_path / "artifacts")}
    assert any(name.endswith("tag mpt.error") for name in texts) and any("artifact logs/" in n for n in texts)
    assert leaks((token, *ENV_SECRETS.values()), texts) == []

    # Run 2: sane distillation, one target trial whose learning rate diverges; the registry off.
    space = "target.search_space={rank: {grid: [1]}, lr: {grid: [0.3, 1.0e+30]}}"
    rc, out, err = run(tmp_path, token, *LONG_SOURCES, "--set", space, "--set", "target.baselines=[]",
                       "--set", "registry.enabled=false")
    assert rc == 0, out + err
    # the trial that trained is the target's best, and with the registry off no model is registered
    registry = MlflowClient(client.tracking_uri, registry_uri=client.tracking_uri)
    assert registry.search_registered_models() == [] and "Registered models" not in out
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
