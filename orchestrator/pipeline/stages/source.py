"""Stage 1: one source prompt (a teacher) by vanilla prompt tuning, as a Ray Train job."""

from __future__ import annotations

import logging

import ray.train
import ray.train.torch
import torch

from ...method import models
from ...method.distill import Teacher
from ...method.train import autocast, batch_stream, evaluate, fit, task_loss, to_device
from ...runtime.logs import fmt, in_ray_worker, progress
from ...tracking import FINGERPRINT_TAG, child_run, teacher_artifact
from . import worker
from .context import PipelineContext

TEACHER_FILE = "teacher.safetensors"

log = logging.getLogger(__name__)


@in_ray_worker
def source_train_loop(config: dict) -> None:
    """Vanilla prompt tuning of one source task (a Ray Train worker)."""
    ctx: PipelineContext = config["ctx"]
    spec, stage = ctx.spec, ctx.spec.source
    data = ctx.load(config["task"])
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    device = ray.train.torch.get_device()
    base = models.load_base_model(ctx.model_dir, spec.model.task_type, data.num_labels, spec.seed)
    model = ray.train.torch.prepare_model(models.prompt_tuning_model(base, spec.model.task_type,
                                                                     spec.prompt.num_virtual_tokens))
    encoder = ctx.encoder()
    logger = worker.rank0_logger(config)
    if logger:
        logger.log_datasets(spec.task(data.name), data, ("train", "validation"), spec.seed)
    tag = ctx.tag(f"source:{data.name}")
    start, state = worker.resume(model, logger, tag)
    stream = batch_stream(data.train, stage.batch_size, spec.seed + start, rank, world)

    def loss_fn(step: int) -> torch.Tensor:
        batch = to_device(encoder(next(stream), data.label_words), device)
        with autocast(device):
            return task_loss(model, batch, spec.model.task_type)

    def on_eval(step: int, metrics: dict[str, float], state: dict) -> None:
        if logger:
            logger.log_metrics(step, metrics)
            progress(log, tag, step, stage.steps, metrics)
        teacher = Teacher.of(data.name, worker.unwrap(model))
        worker.report_checkpoint(model, step, {**metrics, "step": step}, state, {TEACHER_FILE: teacher.tensors()})

    fit(model, loss_fn, steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
        eval_every=stage.eval_every,
        evaluate=worker.on_rank0(rank, lambda: evaluate(worker.unwrap(model), data, "validation", encoder)),
        on_step=worker.step_logger(logger, tag, stage.steps), on_eval=on_eval,
        start_step=start, optimizer_state=state, **stage.optimization())


def run_source(ctx: PipelineContext, task: str) -> Teacher:
    """One source task end to end: its MLflow run, its Train job, its teacher prompt."""
    stage = ctx.spec.source
    params = {**stage.model_dump(exclude={"resources"}), "num_virtual_tokens": ctx.spec.prompt.num_virtual_tokens,
              "num_workers": stage.resources.num_workers, "task": task, "seed": ctx.spec.seed}
    key = f"source:{task}"
    label = ctx.tag(key)
    with child_run(ctx.tracking, "source", task, ctx.tag(f"source-{task}"), params,
                   {FINGERPRINT_TAG: ctx.fingerprints[key]}) as run:
        log.info("[%s] training %d steps on %d worker(s)", label, stage.steps, stage.resources.num_workers)
        result = worker.fit_trainer(ctx, source_train_loop, {"ctx": ctx, "task": task, "run_id": run.run_id},
                                    stage.resources, key, stage.max_failures)
        (tensors,) = worker.checkpoint_tensors(result, TEACHER_FILE)
        folder, name = teacher_artifact(task).split("/")
        run.log_tensors(name, tensors, folder)
        log.info("[%s] done: %s", label, fmt(result.metrics))
        return Teacher.from_tensors(task, tensors)
