"""The three stages as Ray Train loops and a Tune trainable, each a thin wrapper over the method.

Sources and distillation run as ``TorchTrainer`` jobs (DDP when ``num_workers > 1``); target trials
are Tune function trainables that train in their own process (one worker each), so no trial has to
wait for a nested trainer's resources. Each job or trial writes one MLflow child run.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from safetensors.torch import load_file, save_file

from . import models
from .ddp import NodeBoundTorchConfig
from .distill import Teacher, distill_step_loss, teacher_overrides
from .spec import PipelineSpec, Resources, TargetStage
from .tasks import TaskData, load_task
from .tracking import FINGERPRINT_TAG, NODE_TAG, RunLogger, TrackingContext, child_run, finish_stray_runs, node_name
from .train import Encoder, autocast, batch_stream, evaluate, fit, task_loss, to_device

SHARED_PROMPT_FILE = "shared_prompt.safetensors"
STUDENT_HEADS_FILE = "student_heads.safetensors"
TEACHER_FILE = "teacher.safetensors"
TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "train_state.pt"
BASELINE_KEY = "baseline"  # the baselines sweep's grid: one dict of settings per variant


@dataclass(frozen=True)
class PipelineContext:
    """Everything a stage needs, passed to Ray tasks, Train workers and Tune trials (picklable)."""

    spec: PipelineSpec
    model_dir: str
    tracking: TrackingContext
    storage: str
    run_tag: str  # unique per pipeline execution
    fingerprints: dict[str, str]
    forced: frozenset[str] = frozenset()  # stages run again whatever the cache holds

    def job_name(self, key: str) -> str:
        """The Train/Tune run name of a stage. Ray resumes a run dir with the same name from its last
        checkpoint, which is what an interrupted pipeline started again wants; a forced stage gets a
        fresh dir instead."""
        stage = key.split(":")[0]
        name = f"{self.spec.name}-{key.replace(':', '-')}-{self.fingerprints[key]}"
        return f"{name}-{self.run_tag}" if stage in self.forced else name


@dataclass
class SharedPrompt:
    """The distilled student: PEFT's MPT keys plus the per-source heads (SEQ_CLS)."""

    tensors: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]

    def save(self, path: Path) -> Path:
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path))
        return path


# ---------------------------------------------------------------- shared pieces


def _scaling(res: Resources) -> ray.train.ScalingConfig:
    per_worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker)


def _encoder(ctx: PipelineContext) -> Encoder:
    m = ctx.spec.model
    return Encoder(models.load_tokenizer(ctx.model_dir), m.task_type, m.max_length, m.max_target_length)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _report_checkpoint(model: torch.nn.Module, step: int, metrics: dict[str, float], state: dict,
                       files: dict[str, dict[str, torch.Tensor]]) -> None:
    """ray.train.report from every worker (it is a barrier); rank 0 attaches the stage's output files
    plus what a restarted worker needs: the trainable weights and the optimizer/schedule state."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    trainable = {n: p for n, p in _unwrap(model).named_parameters() if p.requires_grad}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tensors in {**files, TRAINABLE_FILE: trainable}.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(Path(tmp) / name))
        torch.save({"step": step, **state}, Path(tmp) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _resume(model: torch.nn.Module, logger: RunLogger | None, tag: str) -> tuple[int, dict | None]:
    """Restore the last checkpoint after a worker failure or an interrupted run: (step, optimizer state).

    Rank 0 counts attempts on the MLflow run (tag ``mpt.attempts``), so a restart is recorded even
    when it had no checkpoint to start from.
    """
    checkpoint = ray.train.get_checkpoint()
    step, state = 0, None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            _unwrap(model).load_state_dict(load_file(str(Path(d) / TRAINABLE_FILE)), strict=False)
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
        step = state.pop("step")
    if logger:
        attempts = int(logger.client.get_run(logger.run_id).data.tags.get("mpt.attempts", 0)) + 1
        logger.set_tags({"mpt.attempts": attempts})
        if attempts > 1 or checkpoint is not None:
            logger.log_metrics(step, {"restarted_from_step": step})
            logger.set_tags({"mpt.restarted": "true"})
    if checkpoint is not None:
        print(f"[{tag}] resumed from the checkpoint at step {step}", flush=True)
    return step, state


def _run_logger(config: dict) -> RunLogger | None:
    """Only rank 0 logs to MLflow, into the run the driver opened for this job; it also tags the run
    with the node the training ran on (the driver opened it from wherever the graph node ran)."""
    if ray.train.get_context().get_world_rank() != 0:
        return None
    logger = RunLogger(config["ctx"].tracking.uri, config["run_id"])
    logger.set_tags({NODE_TAG: node_name()})
    return logger


def _fit_trainer(ctx: PipelineContext, loop, config: dict, res: Resources, key: str,
                 max_failures: int) -> ray.train.Result:
    trainer = ray.train.torch.TorchTrainer(
        loop, train_loop_config=config, scaling_config=_scaling(res), torch_config=NodeBoundTorchConfig(),
        run_config=ray.train.RunConfig(name=ctx.job_name(key), storage_path=ctx.storage,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()


def _step_logger(logger: RunLogger | None):
    """``on_step`` for a Train worker: rank 0 buffers each step's loss, other ranks log nothing."""
    return (lambda step, loss: logger.metric(step, "train_loss", loss)) if logger else (lambda step, loss: None)


def _on_rank0(rank: int, evaluate_fn):
    """Validation on rank 0 only: every rank holds the same weights, and only rank 0's metrics are logged."""
    return evaluate_fn if rank == 0 else dict


def _checkpoint_tensors(result: ray.train.Result, *names: str) -> list[dict[str, torch.Tensor]]:
    with result.checkpoint.as_directory() as d:
        return [load_file(str(Path(d) / n)) for n in names]


# ---------------------------------------------------------------- stage 1: sources


def source_train_loop(config: dict) -> None:
    """Vanilla prompt tuning of one source task (a Ray Train worker)."""
    ctx: PipelineContext = config["ctx"]
    spec, stage = ctx.spec, ctx.spec.source
    data = load_task(spec.task(config["task"]), spec.seed)
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    device = ray.train.torch.get_device()
    base = models.load_base_model(ctx.model_dir, spec.model.task_type, data.num_labels, spec.seed)
    model = ray.train.torch.prepare_model(models.prompt_tuning_model(base, spec.model.task_type,
                                                                     spec.prompt.num_virtual_tokens))
    encoder = _encoder(ctx)
    logger = _run_logger(config)
    start, state = _resume(model, logger, f"source:{data.name}")
    stream = batch_stream(data.train, stage.batch_size, spec.seed + start, rank, world)

    def loss_fn(step: int) -> torch.Tensor:
        batch = to_device(encoder(next(stream), data.label_words), device)
        with autocast(device):
            return task_loss(model, batch, spec.model.task_type)

    def on_eval(step: int, metrics: dict[str, float], state: dict) -> None:
        if logger:
            logger.log_metrics(step, metrics)
            _progress(f"source:{data.name}", step, stage.steps, metrics)
        inner = _unwrap(model)
        head = models.head_module(inner)
        teacher = Teacher(data.name, models.prompt_tensor(inner),
                          None if head is None else head.weight.detach(), None if head is None else head.bias.detach())
        _report_checkpoint(model, step, {**metrics, "step": step}, state, {TEACHER_FILE: teacher.tensors()})

    fit(model, loss_fn, steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
        eval_every=stage.eval_every, evaluate=_on_rank0(rank, lambda: evaluate(_unwrap(model), data, "validation", encoder)),
        on_step=_step_logger(logger), on_eval=on_eval,
        start_step=start, optimizer_state=state)


def run_source(ctx: PipelineContext, task: str) -> Teacher:
    """One source task end to end: its MLflow run, its Train job, its teacher prompt."""
    stage = ctx.spec.source
    params = {**stage.model_dump(exclude={"resources"}), "num_virtual_tokens": ctx.spec.prompt.num_virtual_tokens,
              "num_workers": stage.resources.num_workers, "task": task}
    key = f"source:{task}"
    with child_run(ctx.tracking, "source", task, f"source-{task}", params,
                   {FINGERPRINT_TAG: ctx.fingerprints[key]}) as run:
        print(f"[source:{task}] training {stage.steps} steps on {stage.resources.num_workers} worker(s)", flush=True)
        result = _fit_trainer(ctx, source_train_loop, {"ctx": ctx, "task": task, "run_id": run.run_id},
                              stage.resources, key, stage.max_failures)
        (tensors,) = _checkpoint_tensors(result, TEACHER_FILE)
        run.log_tensors(f"teacher_{task}.safetensors", tensors, "teacher")
        print(f"[source:{task}] done: {_fmt(result.metrics)}", flush=True)
        return Teacher.from_tensors(task, tensors)


# ---------------------------------------------------------------- stage 2: distillation


def label_slices(datas: list[TaskData]) -> list[slice]:
    """Each source task's block of label slots in the student's one head (the union of source labels)."""
    slices, start = [], 0
    for d in datas:
        slices.append(slice(start, start + d.num_labels))
        start += d.num_labels
    return slices


def init_student(student: torch.nn.Module, teachers: list[Teacher], slices: list[slice]) -> None:
    """Start at the teachers: P* = mean of their prompts (u v^T = 1), each head block = its teacher's head."""
    with torch.no_grad():
        student.prompt_encoder[models.ADAPTER].embedding.weight.copy_(torch.stack([t.prompt for t in teachers]).mean(0))
        head = models.head_module(student)
        if head is not None:
            for t, sl in zip(teachers, slices):
                head.weight[sl] = t.head_weight
                head.bias[sl] = t.head_bias


def student_tensors(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    enc = student.prompt_encoder[models.ADAPTER]
    return {"prompt_embeddings": enc.embedding.weight.detach().cpu(),
            "prefix_task_cols": enc.prefix_task_cols.detach().cpu(),
            "prefix_task_rows": enc.prefix_task_rows.detach().cpu()}


def student_head_tensors(student: torch.nn.Module, names: list[str], slices: list[slice]) -> dict[str, torch.Tensor]:
    head = models.head_module(student)
    if head is None:
        return {}
    out = {}
    for name, sl in zip(names, slices):
        out[f"{name}.weight"] = head.weight[sl].detach().cpu()
        out[f"{name}.bias"] = head.bias[sl].detach().cpu()
    return out


def distill_train_loop(config: dict) -> None:
    """Train the MPT student against the teachers (a Ray Train worker)."""
    ctx: PipelineContext = config["ctx"]
    teachers: list[Teacher] = config["teachers"]
    spec, stage = ctx.spec, ctx.spec.distill
    task_type, l = spec.model.task_type, spec.prompt.num_virtual_tokens
    datas = [load_task(spec.task(t.task), spec.seed) for t in teachers]
    slices = label_slices(datas) if task_type == "SEQ_CLS" else [None] * len(datas)
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    device = ray.train.torch.get_device()
    base = models.load_base_model(ctx.model_dir, task_type, slices[-1].stop if slices[-1] else None, spec.seed)
    student = models.multitask_model(base, task_type, l, len(teachers), stage.rank)
    init_student(student, teachers, slices)
    model = ray.train.torch.prepare_model(student)
    inner = _unwrap(model)
    overrides = [teacher_overrides(inner, t, sl) for t, sl in zip(teachers, slices)]
    encoder = _encoder(ctx)
    logger = _run_logger(config)
    start, state = _resume(model, logger, "distill")
    streams = [batch_stream(d.train, stage.batch_size, spec.seed + k + start, rank, world)
               for k, d in enumerate(datas)]

    def loss_fn(step: int) -> torch.Tensor:
        k = (step - 1) % len(datas)  # round robin: every task gets the same number of single-task batches
        batch = to_device(encoder(next(streams[k]), datas[k].label_words, task_id=k,
                                  label_offset=slices[k].start if slices[k] else 0), device)
        with autocast(device):
            loss, parts = distill_step_loss(model, batch, overrides[k], task_type=task_type, num_virtual_tokens=l,
                                            label_slice=slices[k], lambda_=stage.lambda_,
                                            temperature=stage.temperature)
        if logger:
            for name, value in parts.items():
                logger.metric(step, name, value)
        return loss

    def evaluate_all() -> dict[str, float]:
        metrics = {}
        for k, d in enumerate(datas):
            (value,) = evaluate(inner, d, "validation", encoder, task_id=k, label_slice=slices[k]).values()
            metrics[f"eval_{d.metric}_{d.name}"] = value
        metrics["eval_mean"] = sum(metrics.values()) / len(metrics)
        return metrics

    def on_eval(step: int, metrics: dict[str, float], state: dict) -> None:
        if logger:
            logger.log_metrics(step, metrics)
            _progress("distill", step, stage.steps, metrics)
        names = [t.task for t in teachers]
        _report_checkpoint(model, step, {**metrics, "step": step}, state,
                           {SHARED_PROMPT_FILE: student_tensors(inner),
                            STUDENT_HEADS_FILE: student_head_tensors(inner, names, slices)})

    fit(model, loss_fn, steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
        eval_every=stage.eval_every, evaluate=_on_rank0(rank, evaluate_all),
        on_step=_step_logger(logger), on_eval=on_eval,
        start_step=start, optimizer_state=state)


def run_distill(ctx: PipelineContext, teachers: list[Teacher]) -> SharedPrompt:
    stage = ctx.spec.distill
    params = {**stage.model_dump(exclude={"resources"}, by_alias=True), "num_tasks": len(teachers),
              "num_virtual_tokens": ctx.spec.prompt.num_virtual_tokens, "num_workers": stage.resources.num_workers,
              "sources": ",".join(t.task for t in teachers)}
    with child_run(ctx.tracking, "distill", "+".join(t.task for t in teachers), "distill", params,
                   {FINGERPRINT_TAG: ctx.fingerprints["distill"]}) as run:
        print(f"[distill] {len(teachers)} teachers -> one shared prompt, {stage.steps} steps", flush=True)
        result = _fit_trainer(ctx, distill_train_loop, {"ctx": ctx, "teachers": teachers, "run_id": run.run_id},
                              stage.resources, "distill", stage.max_failures)
        tensors, heads = _checkpoint_tensors(result, SHARED_PROMPT_FILE, STUDENT_HEADS_FILE)
        run.log_tensors(SHARED_PROMPT_FILE, tensors)
        if heads:
            run.log_tensors(STUDENT_HEADS_FILE, heads)
        print(f"[distill] done: {_fmt(result.metrics)}", flush=True)
        return SharedPrompt(tensors, heads)


# ---------------------------------------------------------------- stage 3: targets


def build_target_model(ctx: PipelineContext, data: TaskData, config: dict, shared: SharedPrompt,
                       teachers: dict[str, Teacher], workdir: Path) -> tuple[torch.nn.Module, int | None]:
    """The model a target trial trains, by method; returns it and the task_ids value its forward needs."""
    spec = ctx.spec
    task_type, l = spec.model.task_type, spec.prompt.num_virtual_tokens
    base = models.load_base_model(ctx.model_dir, task_type, data.num_labels, spec.seed)
    method = config["method"]
    if method == "mpt":
        path = shared.save(workdir / SHARED_PROMPT_FILE)
        return models.multitask_model(base, task_type, l, 1, int(config["rank"]), str(path)), 0
    if method == "head_only":
        return models.head_only_model(base), None
    if method == "vanilla_pt":
        return models.prompt_tuning_model(base, task_type, l), None
    source = method.split(":", 1)[1]  # single_source:<task>, SPoT-style start from one teacher prompt
    return models.prompt_tuning_model(base, task_type, l, init_prompt=teachers[source].prompt), None


def save_trial_model(model: torch.nn.Module, method: str, out: Path) -> None:
    """PEFT's own format (PeftModel.from_pretrained loads it); the linear probe saves just its head."""
    if method == "head_only":
        head = models.head_module(model)
        save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
                  str(out / "head.safetensors"))
    else:
        model.save_pretrained(str(out))


def target_trial(config: dict, ctx: PipelineContext, task: str, shared: SharedPrompt,
                 teachers: dict[str, Teacher], sweep: str) -> None:
    """One Tune trial: train one target from its start (MPT or a baseline) and report eval metric."""
    spec, stage = ctx.spec, ctx.spec.target
    config = trial_settings(config)
    data = load_task(spec.task(task), spec.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and stage.resources.use_gpu else "cpu")
    params = {"method": config["method"], "rank": config.get("rank", ""), "lr": config.get("lr", ""),
              "head_lr": config["head_lr"], "batch_size": config["batch_size"],
              "weight_decay": config["weight_decay"], "steps": stage.steps,
              "num_virtual_tokens": spec.prompt.num_virtual_tokens, "task": task}
    trial_id = tune.get_context().get_trial_id()
    with child_run(ctx.tracking, "target", task, f"target-{task}-{config['method']}-{trial_id}", params,
                   {"mpt.sweep": sweep, "mpt.trial_id": trial_id, "mpt.method": config["method"],
                    FINGERPRINT_TAG: ctx.fingerprints[f"target:{task}"]}) as run, \
            tempfile.TemporaryDirectory() as workdir:
        model, task_id = build_target_model(ctx, data, config, shared, teachers, Path(workdir))
        model.to(device)
        trainable = models.count_trainable(model)
        run.log_params({"trainable_params": trainable})
        encoder = _encoder(ctx)
        stream = batch_stream(data.train, int(config["batch_size"]), spec.seed)

        def loss_fn(step: int) -> torch.Tensor:
            batch = to_device(encoder(next(stream), data.label_words, task_id), device)
            with autocast(device):
                return task_loss(model, batch, spec.model.task_type)

        def on_eval(step: int, metrics: dict[str, float], state: dict) -> None:
            run.log_metrics(step, metrics)
            _progress(f"target:{task}:{config['method']}:{trial_id}", step, stage.steps, metrics)
            with tempfile.TemporaryDirectory() as tmp:
                save_trial_model(model, config["method"], Path(tmp))
                tune.report({**metrics, "step": step, "trainable_params": trainable, "mlflow_run_id": run.run_id},
                            checkpoint=tune.Checkpoint.from_directory(tmp))

        # the linear probe has no prompt: its lr is unused
        fit(model, loss_fn, steps=stage.steps, lr=float(config.get("lr", stage.lr)), head_lr=float(config["head_lr"]),
            weight_decay=float(config["weight_decay"]), eval_every=stage.eval_every,
            evaluate=lambda: evaluate(model, data, "validation", encoder, task_id),
            on_step=lambda s, v: run.metric(s, "train_loss", v), on_eval=on_eval)


def load_for_eval(ctx: PipelineContext, data: TaskData, method: str, checkpoint_dir: str) -> torch.nn.Module:
    """A trial's saved model, loaded the way a user would (PeftModel.from_pretrained for prompts)."""
    from peft import PeftModel

    base = models.load_base_model(ctx.model_dir, ctx.spec.model.task_type, data.num_labels, ctx.spec.seed)
    if method == "head_only":
        head = load_file(str(Path(checkpoint_dir) / "head.safetensors"))
        models.head_module(base).load_state_dict(head)
        return base
    return PeftModel.from_pretrained(base, checkpoint_dir)


def evaluate_best(ctx: PipelineContext, task: str, method: str, checkpoint: tune.Checkpoint, run_id: str) -> dict[str, float]:
    """Reload a sweep's best trial from its saved files and score validation (it must match the sweep) and test.

    Test is scored here only, for the trial already chosen on validation: never tune on test.
    """
    data = load_task(ctx.spec.task(task), ctx.spec.seed)
    task_id = 0 if method == "mpt" else None
    encoder = _encoder(ctx)
    with checkpoint.as_directory() as checkpoint_dir:
        model = load_for_eval(ctx, data, method, checkpoint_dir)
        metrics = {**evaluate(model, data, "validation", encoder, task_id),
                   **evaluate(model, data, "test", encoder, task_id)}
        logger = RunLogger(ctx.tracking.uri, run_id)
        logger.log_metrics(ctx.spec.target.steps, {k: v for k, v in metrics.items() if k.startswith("test_")})
        logger.set_tags({"mpt.best": "true"})
        logger.log_artifact(checkpoint_dir, "best_adapter" if method == "mpt" else f"best_{method.split(':')[0]}")
    return metrics


def tune_domain(domain):
    """A spec domain ({grid: [...]}, {loguniform: [lo, hi]}, ..., or a constant) as a Tune domain."""
    if not isinstance(domain, dict):
        return domain
    ((kind, arg),) = domain.items()
    return {"grid": tune.grid_search, "choice": tune.choice}[kind](arg) if kind in ("grid", "choice") \
        else {"uniform": tune.uniform, "loguniform": tune.loguniform}[kind](*arg)


def param_spaces(stage: TargetStage, sources: list[str]) -> tuple[dict, dict | None]:
    """The MPT sweep's space, and the baselines': one grid over variants, each prompt method with the
    same lr domain as MPT, the linear probe (no prompt, so no lr) once."""
    defaults = {"rank": 1, "lr": stage.lr, "head_lr": stage.head_lr, "batch_size": stage.batch_size,
                "weight_decay": stage.weight_decay}
    space = {**defaults, **{k: tune_domain(v) for k, v in stage.search_space.items()}}
    mpt = {**space, "method": "mpt"}
    if not stage.baselines:
        return mpt, None
    methods = [m for m in stage.baselines if m != "single_source"]
    if "single_source" in stage.baselines:
        methods += [f"single_source:{s}" for s in sources]
    variants = [{"method": m} if m == "head_only" else {"method": m, "lr": space["lr"]} for m in methods]
    shared = {k: v for k, v in space.items() if k not in ("rank", "lr")}
    return mpt, {**shared, BASELINE_KEY: tune.grid_search(variants)}


def trial_settings(config: dict) -> dict:
    """A trial's config with its baseline variant (if any) merged in: method, lr, head_lr, ..."""
    return {**{k: v for k, v in config.items() if k != BASELINE_KEY}, **config.get(BASELINE_KEY, {})}


def sweep_trainable(fn, name: str, resources: dict, **params):
    """``fn`` with ``params`` bound, registered with Tune under the sweep's own name.

    Tune keeps trainables in one registry per Ray job, keyed by the function's name, and looks the
    name up when it starts a trial: with two targets' sweeps running at once, the one registered
    last would run every trial of both, each logged under the other's target (ray-project/ray#31330).
    """
    trainable = tune.with_resources(tune.with_parameters(fn, **params), resources)
    trainable.__name__ = name
    return trainable


def _sweep(ctx: PipelineContext, task: str, shared: SharedPrompt, teachers: dict[str, Teacher], space: dict,
           name: str, scheduler) -> tune.ResultGrid:
    stage = ctx.spec.target
    res = stage.resources
    trainable = sweep_trainable(target_trial, name, {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker},
                                ctx=ctx, task=task, shared=shared, teachers=teachers, sweep=name)
    metric = f"eval_{ctx.spec.task(task).metric}"
    path = f"{ctx.storage.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        # An interrupted sweep of the same fingerprint: finished trials are kept, the rest run again.
        print(f"[target:{task}] resuming sweep {name}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            # reuse_actors: a new trial starts in a finished trial's process, not paying for a fresh one and
            # the torch/transformers/peft imports again (trials are short: this is a large share of each)
            tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=stage.num_samples, scheduler=scheduler,
                                        max_concurrent_trials=stage.max_concurrent_trials, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=ctx.storage, verbose=0),
        )
    grid = tuner.fit()
    # Trials that ASHA stopped never return from tune.report, so their runs are closed here.
    finish_stray_runs(ctx.tracking, {"mpt.sweep": name}, "FINISHED", {"mpt.early_stopped": "true"})
    return grid


def _rows(ctx: PipelineContext, task: str, grid: tune.ResultGrid) -> list[dict]:
    stage = ctx.spec.target
    metric = f"eval_{ctx.spec.task(task).metric}"
    rows = []
    for result in grid:
        cfg, m = trial_settings(result.config or {}), result.metrics or {}
        step = m.get("step", 0)
        status = "failed" if result.error else ("early_stopped" if step < stage.steps else "completed")
        rows.append({"task": task, "method": cfg.get("method"), "rank": cfg.get("rank") if cfg.get("method") == "mpt" else None,
                     "lr": cfg.get("lr"), "head_lr": cfg.get("head_lr"), "batch_size": cfg.get("batch_size"),
                     "metric": metric, "value": m.get(metric), "steps": step, "trainable_params": m.get("trainable_params"),
                     "status": status, "error": str(result.error).splitlines()[0][:300] if result.error else "",
                     "mlflow_run_id": m.get("mlflow_run_id"),
                     "checkpoint": result.checkpoint})
    return rows


def run_target(ctx: PipelineContext, task: str, shared: SharedPrompt, teachers: list[Teacher]) -> list[dict]:
    """Tune sweep(s) for one target: MPT over the search space with ASHA, then the baselines (FIFO,
    same step budget, same lr search). Returns one row per trial."""
    stage = ctx.spec.target
    by_name = {t.task: t for t in teachers}
    mpt_space, baseline_space = param_spaces(stage, list(by_name))
    sched = stage.scheduler
    n_evals = math.ceil(stage.steps / stage.eval_every)
    asha = (ASHAScheduler(time_attr="training_iteration", max_t=n_evals,
                                          grace_period=min(sched.grace_period, n_evals),
                                          reduction_factor=sched.reduction_factor)
            if sched.type == "asha" else FIFOScheduler())
    print(f"[target:{task}] sweep over {sorted(stage.search_space)} ({sched.type}), {stage.steps} steps per trial", flush=True)
    rows = _rows(ctx, task, _sweep(ctx, task, shared, by_name, mpt_space, ctx.job_name(f"target:{task}"), asha))
    if baseline_space:
        print(f"[target:{task}] baselines {stage.baselines}", flush=True)
        rows += _rows(ctx, task, _sweep(ctx, task, shared, by_name, baseline_space,
                                        ctx.job_name(f"target:{task}") + "-baselines", FIFOScheduler()))
    return rows


def _progress(tag: str, step: int, steps: int, metrics: dict[str, float]) -> None:
    print(f"[{tag}] step {step}/{steps}: {_fmt(metrics)}", flush=True)


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v))

