"""Stage 2: the teachers distilled into one MPT student (shared prompt P*, u_k v_k^T per source),
as a Ray Train job. The same job without teachers (random P*, the sources' task loss alone, as
PEFT's own MPT example trains) gives the ``joint_multitask`` ablation's student."""

from __future__ import annotations

import logging

import ray.train
import ray.train.torch
import torch

from ...method import models
from ...method.distill import (SHARED_PROMPT_FILE, STUDENT_HEADS_FILE, SharedPrompt, Teacher, distill_step_loss,
                               init_student, label_slices, student_head_tensors, student_tensors, teacher_overrides)
from ...method.train import autocast, batch_stream, evaluate, fit, task_loss, to_device
from ...runtime.logs import fmt, in_ray_worker, progress
from ...tracking import FINGERPRINT_TAG, METHOD_TAG, child_run
from ..cache import JOINT
from . import worker
from .context import PipelineContext

log = logging.getLogger(__name__)


@in_ray_worker
def distill_train_loop(config: dict) -> None:
    """Train the MPT student against the teachers, or on the task loss alone when there are none
    (``config["teachers"]`` is None: joint_multitask). A Ray Train worker."""
    ctx: PipelineContext = config["ctx"]
    teachers: list[Teacher] | None = config["teachers"]
    spec, stage = ctx.spec, ctx.spec.distill
    name = ctx.tag("distill" if teachers else "joint_multitask")
    task_type, l = spec.model.task_type, spec.prompt.num_virtual_tokens
    datas = [ctx.load(t) for t in spec.sources]
    slices = label_slices(datas) if task_type == "SEQ_CLS" else [None] * len(datas)
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    device = ray.train.torch.get_device()
    base = models.load_base_model(ctx.model_dir, task_type, slices[-1].stop if slices[-1] else None, spec.seed)
    student = models.multitask_model(base, task_type, l, len(datas), stage.rank)
    if teachers:
        init_student(student, teachers, slices)
    model = ray.train.torch.prepare_model(student)
    inner = worker.unwrap(model)
    overrides = [teacher_overrides(inner, t, sl) for t, sl in zip(teachers, slices)] if teachers else None
    encoder = ctx.encoder()
    logger = worker.rank0_logger(config)
    if logger:
        for d in datas:
            logger.log_datasets(spec.task(d.name), d, ("train", "validation"), spec.seed)
    start, state = worker.resume(model, logger, name)
    streams = [batch_stream(d.train, stage.batch_size, spec.seed + k + start, rank, world)
               for k, d in enumerate(datas)]

    def loss_fn(step: int) -> torch.Tensor:
        k = (step - 1) % len(datas)  # round robin: every task gets the same number of single-task batches
        batch = to_device(encoder(next(streams[k]), datas[k].label_words, task_id=k,
                                  label_offset=slices[k].start if slices[k] else 0), device)
        with autocast(device):
            if overrides is None:
                loss = task_loss(model, batch, task_type, slices[k])
                parts = {"loss_task": loss.item()}
            else:
                loss, parts = distill_step_loss(model, batch, overrides[k], task_type=task_type, num_virtual_tokens=l,
                                                label_slice=slices[k], lambda_=stage.lambda_,
                                                temperature=stage.temperature)
        if logger:
            for part, value in parts.items():
                logger.metric(step, part, value)
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
            progress(log, name, step, stage.steps, metrics)
        names = [d.name for d in datas]
        worker.report_checkpoint(model, step, {**metrics, "step": step}, state,
                                 {SHARED_PROMPT_FILE: student_tensors(inner),
                                  STUDENT_HEADS_FILE: student_head_tensors(inner, names, slices)})

    fit(model, loss_fn, steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
        eval_every=stage.eval_every, evaluate=worker.on_rank0(rank, evaluate_all),
        on_step=worker.step_logger(logger, name, stage.steps), on_eval=on_eval,
        start_step=start, optimizer_state=state, **stage.optimization())


def run_distill(ctx: PipelineContext, teachers: list[Teacher] | None) -> SharedPrompt:
    """The distillation end to end: its MLflow run, its Train job, the shared prompt and student heads.
    With ``teachers`` None, the joint_multitask student instead (its own run, job and cache key)."""
    stage, sources = ctx.spec.distill, ctx.spec.sources
    key, name = ("distill", "distill") if teachers else (JOINT, "joint_multitask")
    params = {**stage.model_dump(exclude={"resources"}, by_alias=True), "num_tasks": len(sources),
              "num_virtual_tokens": ctx.spec.prompt.num_virtual_tokens, "num_workers": stage.resources.num_workers,
              "sources": ",".join(sources), "seed": ctx.spec.seed}
    if not teachers:
        params["lambda"] = 0.0  # the task loss only: no teachers to distill from
    label = ctx.tag(name)
    with child_run(ctx.tracking, "distill", "+".join(sources), label, params,
                   {FINGERPRINT_TAG: ctx.fingerprints[key], METHOD_TAG: name}) as run:
        log.info("[%s] %s -> one shared prompt, %d steps", label,
                 f"{len(sources)} teachers" if teachers else f"{len(sources)} source tasks, no teachers", stage.steps)
        result = worker.fit_trainer(ctx, distill_train_loop, {"ctx": ctx, "teachers": teachers, "run_id": run.run_id},
                                    stage.resources, key, stage.max_failures)
        tensors, heads = worker.checkpoint_tensors(result, SHARED_PROMPT_FILE, STUDENT_HEADS_FILE)
        run.log_tensors(SHARED_PROMPT_FILE, tensors)
        if heads:
            run.log_tensors(STUDENT_HEADS_FILE, heads)
        log.info("[%s] done: %s", label, fmt(result.metrics))
        return SharedPrompt(tensors, heads)
