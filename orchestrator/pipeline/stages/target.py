"""Stage 3: each target adapted from the shared prompt by a Ray Tune sweep, beside its baselines.

MPT trials run under ASHA over the spec's search space; the baselines and ablations run as a
second, FIFO sweep at the same step budget and lr search, in a graph node of their own that starts
when the sources end (they do not start from the shared prompt). Every configuration runs once per seed,
and each few-shot budget gets its own pair of sweeps (ASHA must not compare a 4-shot trial with a
full one). Trials train in their own Tune process, one worker each, so that no trial waits on a
nested trainer's resources. Each method's configuration is chosen on validation averaged over
seeds; its trial at every seed is then reloaded from its saved files, as a user would load it, and
scored on validation (it must match the sweep) and, once, on test, keeping the test predictions
for the paired comparison.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import ray
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from ...data import few_shot
from ...method import models
from ...method.distill import SharedPrompt, Teacher
from ...method.metrics import compute_metric
from ...method.targets import build_target_model, load_trial_model, save_trial_model, task_id_of
from ...method.train import autocast, batch_stream, evaluate, fit, predict, task_loss, to_device
from ...results import selection
from ...runtime.logs import in_ray_worker, progress, ticker
from ...serve import registry
from ...spec.methods import REFERENCE
from ...spec.search import SearchSpace
from ...tracking import (BEST_TAG, CONFIG_TAG, ERROR_TAG, FINGERPRINT_TAG, METHOD_TAG, PIPELINE_TAG,
                         PREDICTIONS_ARTIFACT, STOPPED_TAG, SWEEP_TAG, TRIAL_ID_TAG, RunLogger, TrackingContext,
                         child_run, chosen_trial_artifact, root_cause)
from ..sweep_state import resumable
from .context import PipelineContext

log = logging.getLogger(__name__)


@dataclass
class Starts:
    """What one seed's target trials start from: the shared prompt, the joint_multitask student (when
    asked for) and the teachers, by source task."""

    seed: int
    shared: SharedPrompt | None  # None for the baselines, which never start from it
    joint: SharedPrompt | None
    teachers: dict[str, Teacher]


@in_ray_worker
def target_trial(config: dict, ctx: PipelineContext, task: str, starts: dict[int, Starts], sweep: str) -> None:
    """One Tune trial: train one target from its start (MPT, a baseline or an ablation) at one seed
    and training-set budget, and report the eval metric."""
    spec, stage = ctx.spec, ctx.spec.target
    config = SearchSpace.trial_settings(config)
    method, seed, shots = config["method"], int(config["seed"]), config["shots"]
    start = starts.get(seed) or starts[spec.seed]  # seed_scope targets: one start, the first seed's
    data = ctx.load(task)
    data = dataclasses.replace(data, train=few_shot(data, shots, seed))
    device = torch.device("cuda" if torch.cuda.is_available() and stage.resources.use_gpu else "cpu")
    params = {"method": method, "rank": config.get("rank", ""), "lr": config.get("lr", ""),
              "head_lr": config["head_lr"], "batch_size": config["batch_size"],
              "weight_decay": config["weight_decay"], "steps": stage.steps, "seed": seed, "shots": shots,
              "num_virtual_tokens": spec.prompt.num_virtual_tokens, "task": task, **stage.optimization()}
    trial_id = tune.get_context().get_trial_id()
    task_id = task_id_of(method)
    with child_run(ctx.tracking, "target", task, f"target-{task}-{method}-{trial_id}", params,
                   {SWEEP_TAG: sweep, TRIAL_ID_TAG: trial_id, METHOD_TAG: method,
                    CONFIG_TAG: SearchSpace.configuration(config),
                    FINGERPRINT_TAG: ctx.fingerprints[f"target:{task}"]}) as run, \
            tempfile.TemporaryDirectory() as workdir:
        model = build_target_model(method, int(config.get("rank", 1)), ctx.model_dir, spec.model.task_type,
                                   spec.prompt.num_virtual_tokens, data.num_labels, seed, start.shared,
                                   start.teachers, Path(workdir), start.joint)
        model.to(device)
        trainable = models.count_trainable(model)
        run.log_params({"trainable_params": trainable})
        # the data's seed, not the trial's: the digest tells one few-shot draw from another
        run.log_datasets(spec.task(task), data, ("train", "validation"), spec.seed)
        encoder = ctx.encoder()
        stream = batch_stream(data.train, int(config["batch_size"]), seed)

        def loss_fn(step: int) -> torch.Tensor:
            batch = to_device(encoder(next(stream), data.label_words, task_id), device)
            with autocast(device):
                return task_loss(model, batch, spec.model.task_type)

        tag = f"target:{task}:{method}:{trial_id}"
        on_step = ticker(log, tag, stage.steps, lambda step, loss: run.metric(step, "train_loss", loss))

        def on_eval(step: int, metrics: dict[str, float], state: dict) -> None:
            run.log_metrics(step, metrics)
            progress(log, tag, step, stage.steps, metrics)
            with tempfile.TemporaryDirectory() as tmp:
                save_trial_model(model, method, Path(tmp))
                # When the scheduler stops this trial, tune.report does not return: TrialRunCloser ends the run.
                tune.report({**metrics, "step": step, "trainable_params": trainable, "mlflow_run_id": run.run_id},
                            checkpoint=tune.Checkpoint.from_directory(tmp))

        # the linear probe has no prompt: its lr is unused
        fit(model, loss_fn, steps=stage.steps, lr=float(config.get("lr", stage.lr)), head_lr=float(config["head_lr"]),
            weight_decay=float(config["weight_decay"]), eval_every=stage.eval_every,
            evaluate=lambda: evaluate(model, data, "validation", encoder, task_id),
            on_step=on_step, on_eval=on_eval, **stage.optimization())


class TrialRunCloser(tune.Callback):
    """Ends each trial's MLflow run from the driver when Tune ends the trial.

    A trial the scheduler stops never returns from ``tune.report`` (Tune ends its thread), so its own
    code cannot end its run: here it ends FINISHED, tagged ``STOPPED_TAG`` when it
    stopped before the step budget. A trial whose process died ends FAILED. Runs that the trial
    ended itself (finished, or failed with its cause) are left as they are.
    """

    def __init__(self, tracking: TrackingContext, sweep: str, steps: int):
        self.tracking, self.sweep, self.steps = tracking, sweep, steps

    def _run(self, trial) -> tuple[MlflowClient, Run | None]:
        client = MlflowClient(self.tracking.uri)
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if run_id:
            return client, client.get_run(run_id)
        # a trial that died before its first report: found by its id within this sweep and pipeline
        runs = client.search_runs([self.tracking.experiment_id],
                                  f"tags.`{TRIAL_ID_TAG}` = '{trial.trial_id}' and tags.`{SWEEP_TAG}` = '{self.sweep}' "
                                  f"and tags.`{PIPELINE_TAG}` = '{self.tracking.pipeline_run}'", max_results=1)
        return client, (runs[0] if runs else None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        client, run = self._run(trial)
        if run is None:
            return
        if (trial.last_result or {}).get("step", 0) < self.steps:
            client.set_tag(run.info.run_id, STOPPED_TAG, "true")
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        client, run = self._run(trial)
        if run is not None and run.info.status == "RUNNING":
            error = trial.get_pickled_error()
            client.set_tag(run.info.run_id, ERROR_TAG, root_cause(error)[:4000] if error else "the trial's process died")
            client.set_terminated(run.info.run_id, "FAILED")


def sweep_trainable(fn, name: str, resources: PlacementGroupFactory, **params):
    """``fn`` with ``params`` bound, registered with Tune under the sweep's own name.

    Tune keeps trainables in one registry per Ray job, keyed by the function's name, and looks the
    name up when it starts a trial: with two targets' sweeps running at once, the one registered
    last would run every trial of both, each logged under the other's target (ray-project/ray#31330).
    """
    trainable = tune.with_resources(tune.with_parameters(fn, **params), resources)
    trainable.__name__ = name
    return trainable


def _sweep(ctx: PipelineContext, task: str, starts: dict[int, Starts], space: dict, name: str,
           scheduler, max_concurrent: int | None) -> tune.ResultGrid:
    stage = ctx.spec.target
    trainable = sweep_trainable(target_trial, name, PlacementGroupFactory([stage.resources.bundle()]),
                                ctx=ctx, task=task, starts=starts, sweep=name)
    path = _join(ctx.storage, name)
    if resumable(path, f"[target:{task}] sweep {name}"):
        # An interrupted sweep of the same fingerprint: finished trials are kept, the rest run again.
        log.info("[target:%s] resuming sweep %s", task, name)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            # reuse_actors: a new trial starts in a finished trial's process, not paying for a fresh one and
            # the torch/transformers/peft imports again (trials are short: this is a large share of each)
            tune_config=tune.TuneConfig(metric=f"eval_{ctx.spec.task(task).metric}", mode="max",
                                        scheduler=scheduler,  # num_samples: 1, the space holds the draws
                                        max_concurrent_trials=max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=ctx.storage, verbose=0,
                                      callbacks=[TrialRunCloser(ctx.tracking, name, stage.steps)]),
        )
    return tuner.fit()


def _join(storage: str, name: str) -> str:
    """``storage``/``name``, also for a URI with a query (``s3://bucket/dir?region=...``): the name
    goes in the path, not after the query."""
    parts = urlsplit(storage)
    if not parts.scheme:
        return f"{storage.rstrip('/')}/{name}"
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def _rows(ctx: PipelineContext, task: str, grid: tune.ResultGrid) -> list[dict]:
    stage = ctx.spec.target
    metric = f"eval_{ctx.spec.task(task).metric}"
    rows = []
    for result in grid:
        cfg, m = SearchSpace.trial_settings(result.config or {}), result.metrics or {}
        step = m.get("step", 0)
        status = "failed" if result.error else ("early_stopped" if step < stage.steps else "completed")
        rows.append({"task": task, "method": cfg.get("method"), "rank": cfg.get("rank") if "rank" in
                     SearchSpace.method_keys(cfg.get("method", "")) else None,
                     "lr": cfg.get("lr"), "head_lr": cfg.get("head_lr"), "batch_size": cfg.get("batch_size"),
                     "seed": cfg.get("seed"), "shots": cfg.get("shots"), "config": SearchSpace.configuration(cfg),
                     "metric": metric, "value": m.get(metric), "steps": step, "trainable_params": m.get("trainable_params"),
                     "status": status, "error": str(result.error).splitlines()[0][:300] if result.error else "",
                     "mlflow_run_id": m.get("mlflow_run_id"),
                     "checkpoint": result.checkpoint})
    return rows


def run_mpt_sweeps(ctx: PipelineContext, task: str, starts: dict[int, Starts]) -> list[dict]:
    """MPT over the search space (ASHA when the spec asks), one sweep per training-set budget, every
    configuration at every seed. Returns one row per trial."""
    stage, seeds = ctx.spec.target, ctx.spec.seed_list()
    sched = stage.scheduler
    n_evals = math.ceil(stage.steps / stage.eval_every)
    rows = []
    for shots in stage.budgets():
        asha = (ASHAScheduler(time_attr="training_iteration", max_t=n_evals,
                              grace_period=min(sched.grace_period, n_evals), reduction_factor=sched.reduction_factor)
                if sched.type == "asha" else FIFOScheduler())
        log.info("[target:%s] sweep over %s (%s), %d steps per trial, seeds %s%s", task,
                 sorted(stage.search_space.root), sched.type, stage.steps, seeds, _budget(shots))
        rows += _rows(ctx, task, _sweep(ctx, task, starts, _space(ctx, [REFERENCE], shots), _sweep_name(ctx, task, shots),
                                        asha, stage.max_concurrent_trials))
    return rows


def run_baseline_sweeps(ctx: PipelineContext, task: str, starts: dict[int, Starts],
                        max_concurrent: int | None) -> list[dict]:
    """The baselines and ablations, one FIFO sweep per training-set budget at MPT's step budget and lr
    search, every configuration at every seed, at most ``max_concurrent`` trials at once. Returns one
    row per trial."""
    stage = ctx.spec.target
    baselines = stage.baseline_methods(ctx.spec.sources)
    rows = []
    for shots in stage.budgets() if baselines else ():
        log.info("[target:%s] baselines %s%s", task, stage.baselines, _budget(shots))
        rows += _rows(ctx, task, _sweep(ctx, task, starts, _space(ctx, baselines, shots),
                                        f"{_sweep_name(ctx, task, shots)}-baselines", FIFOScheduler(), max_concurrent))
    return rows


def _space(ctx: PipelineContext, methods: list[str], shots: int | str) -> dict:
    stage = ctx.spec.target
    # the same draws for MPT's sweep and the baselines'
    return stage.search_space.tune_space(methods, stage.defaults(), ctx.spec.seed_list(), shots,
                                         num_samples=stage.num_samples, draw_seed=ctx.spec.seed)


def _sweep_name(ctx: PipelineContext, task: str, shots: int | str) -> str:
    return ctx.job_name(f"target:{task}") + ("" if shots == "full" else f"-{shots}shot")


def _budget(shots: int | str) -> str:
    return "" if shots == "full" else f", {shots} shots per class"


@ray.remote
@in_ray_worker
def evaluate_best(ctx: PipelineContext, task: str, method: str, checkpoint: tune.Checkpoint,
                  run_id: str, register: bool) -> dict[str, float | str]:
    """Reload a chosen trial from its saved files and score validation (it must match the sweep) and
    test, keeping its test predictions on its run (``PREDICTIONS_ARTIFACT``); then, when ``register`` and as
    the spec's ``registry`` asks, register it as an MLflow model (``registered_model`` in the result).

    Test is scored here only, for trials already chosen on validation: never tune on test.
    """
    spec = ctx.spec
    data = ctx.load(task)
    task_id = task_id_of(method)
    encoder = ctx.encoder()
    with checkpoint.as_directory() as checkpoint_dir:
        model = load_trial_model(method, ctx.model_dir, spec.model.task_type, data.num_labels, spec.seed, checkpoint_dir)
        labels = [ex.label for ex in data.test]
        predictions = predict(model, data.test, encoder, data.label_words, task_id)
        metrics: dict[str, float | str] = {**evaluate(model, data, "validation", encoder, task_id),
                                           f"test_{data.metric}": compute_metric(data.metric, predictions, labels)}
        logger = RunLogger(ctx.tracking.uri, run_id)
        logger.log_metrics(spec.target.steps, {k: v for k, v in metrics.items() if k.startswith("test_")})
        logger.log_datasets(spec.task(task), data, ("test",), spec.seed)
        logger.set_tags({BEST_TAG: "true"})
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / Path(PREDICTIONS_ARTIFACT).name
            file.write_text(json.dumps({"metric": data.metric, "labels": labels, "predictions": predictions}))
            logger.log_artifact(file, str(Path(PREDICTIONS_ARTIFACT).parent))
        logger.log_artifact(checkpoint_dir, chosen_trial_artifact(method))
        if register and registry.should_register(spec.registry, method):
            metrics["registered_model"] = registry.register_best(ctx, task, method, data, checkpoint_dir, run_id,
                                                                 metrics)
    return metrics


def run_target(ctx: PipelineContext, task: str, starts: dict[int, Starts], baseline_rows: ray.ObjectRef) -> list[dict]:
    """One target end to end: its MPT sweeps, joined with its baseline sweeps' rows (``baseline_rows``,
    from ``run_baseline_sweeps`` in a task of their own), then each method's chosen configuration
    reloaded and scored at every seed (in parallel, one Ray task each); returns one row per trial, the
    chosen ones with their test value. The registry gets one model per method: the first seed's, at
    the last budget."""
    rows = run_mpt_sweeps(ctx, task, starts) + ray.get(baseline_rows)
    bests = selection.select_best(rows)
    spec = ctx.spec
    registered = (spec.seed_list()[0], str(spec.target.budgets()[-1]))
    cpus = spec.target.resources.cpus_per_worker
    evaluations = ray.get([evaluate_best.options(num_cpus=cpus).remote(
        ctx, task, b["method"], b["checkpoint"], b["mlflow_run_id"], (b["seed"], str(b["shots"])) == registered)
        for b in bests])
    return selection.attach_test(rows, bests, evaluations)
