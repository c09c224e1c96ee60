"""Both sides' trials and the orchestrator's side: the full grid of trials the plain loop runs (as
Tune expands it), ``python -m orchestrator run`` on a fresh MLflow store, and its child runs read back
from MLflow in the plain loop's shape (units). P1, P2 and P4 use them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from orchestrator.spec.search import SearchSpace

from .common import child_env, progress


def full_grid(spec) -> list[dict]:
    """Every trial Tune runs for one target: each sweep's param space (SearchSpace.tune_space, which
    draws the random domains as the target stage does) expanded by Tune's own variant generator."""
    from ray.tune.search.variant_generator import generate_variants

    t, trials = spec.target, []
    for shots in t.budgets():
        for methods in (["mpt"], t.baseline_methods(spec.sources)):
            if methods:
                space = t.search_space.tune_space(methods, t.defaults(), spec.seed_list(), shots, t.num_samples,
                                                  spec.seed)
                trials += [SearchSpace.trial_settings(config) for _, config in generate_variants(space)]
    return trials


def run_orchestrator(spec_path: str, sets: list[str], workdir: Path) -> tuple[float, float, str]:
    workdir.mkdir(parents=True)
    uri = f"sqlite:///{workdir.resolve()}/mlflow.db"
    command = [sys.executable, "-m", "orchestrator", "run", str(Path(spec_path).resolve()), "--no-cache",
               "--tracking-uri", uri, *[f"--set={s}" for s in sets]]
    progress(f"orchestrator run in {workdir} (log: {workdir / 'orchestrator.log'})")
    started = time.time()
    with open(workdir / "orchestrator.log", "w") as log:
        code = subprocess.run(command, cwd=workdir, env=child_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    ended = time.time()
    if code != 0:
        sys.exit(f"orchestrator run failed (exit {code}; --out DIR keeps its files); its log's last lines:\n"
                 + "\n".join((workdir / "orchestrator.log").read_text().splitlines()[-30:]))
    progress(f"orchestrator run done in {ended - started:.1f} s")
    return started, ended, uri


def read_orchestrator(uri: str, spec) -> tuple[list[dict], float]:
    """The pipeline's child runs as units (the plain loop's shape) and the parent run's end time."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import PARENT_TAG, PIPELINE_TAG, STAGE_TAG, STOPPED_TAG, TASK_TAG

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment_name()).experiment_id], max_results=50000)
    # children carry mpt.pipeline_run too: the parent is the one without a parent
    (parent,) = [r for r in runs if PIPELINE_TAG in r.data.tags and PARENT_TAG not in r.data.tags]
    units = []
    for run in runs:
        tags = run.data.tags
        if tags.get(PARENT_TAG) != parent.info.run_id:
            continue
        stage, task = tags[STAGE_TAG], tags[TASK_TAG]
        history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
        if not history:
            progress(f"run {run.info.run_name} ({run.info.status}) logged no training step: left out")
            continue
        metric = "eval_mean" if stage == "distill" else f"eval_{spec.task(task).metric}"
        units.append({"stage": stage, "task": task, "method": tags.get("mpt.method"), "config": tags.get("mpt.config"),
                      "seed": int(run.data.params["seed"]) if "seed" in run.data.params else None,
                      "shots": run.data.params.get("shots"),
                      "start": run.info.start_time / 1000, "end": run.info.end_time / 1000,
                      "first": history[0].timestamp / 1000, "last": history[-1].timestamp / 1000,
                      "first_step": history[0].step, "last_step": history[-1].step,
                      "value": run.data.metrics.get(metric), "stopped": STOPPED_TAG in tags,
                      "test": next((v for k, v in run.data.metrics.items() if k.startswith("test_")), None)})
    return units, parent.info.end_time / 1000
