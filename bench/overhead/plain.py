"""The plain loop: the spec's work in one process, without Ray or MLflow, with the project's own
training functions (every source, the distillation, every target trial of the grid, the chosen
trials reloaded and scored). Run as a worker process (``--worker plain``); P1, P2 and P4 read it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from orchestrator.results.selection import best_configurations
from orchestrator.spec.search import SearchSpace

from .common import progress, threads_for


def rank_mean(loss_of_rank, world: int):
    """DDP's gradient in one process: the mean of each rank's batch loss."""
    return sum(loss_of_rank(r) for r in range(world)) / world


class Clock:
    """One unit of work (a source, the distillation, a trial): start, first and last step, end."""

    def __init__(self, stage: str, task: str, **fields):
        self.unit = {"stage": stage, "task": task, **fields, "start": time.time(), "steps": []}

    def on_step(self, step: int, loss: float) -> None:
        self.unit["steps"].append((step, time.time()))

    def done(self, value: float | None, **fields) -> dict:
        steps = self.unit.pop("steps") or [(0, self.unit["start"])]  # a reload trains no step
        (first_step, first), (last_step, last) = steps[0], steps[-1]
        self.unit.update(first=first, last=last, first_step=first_step, last_step=last_step, end=time.time(),
                         value=value, **fields)
        return self.unit


def distill_parts(spec, model_dir, encoder, datas, teachers, world: int):
    """The distillation stage's student, loss and evaluation (stages/distill.py, without Ray);
    with ``teachers`` None, random ones of the right shapes (P3 measures memory, not quality)."""
    import torch

    from orchestrator.method import models
    from orchestrator.method.distill import Teacher, distill_step_loss, init_student, label_slices, teacher_overrides
    from orchestrator.method.train import batch_stream, evaluate

    stage, task_type, l = spec.distill, spec.model.task_type, spec.prompt.num_virtual_tokens
    slices = label_slices(datas) if task_type == "SEQ_CLS" else [None] * len(datas)
    base = models.load_base_model(model_dir, task_type, slices[-1].stop if slices[-1] else None, spec.seed)
    student = models.multitask_model(base, task_type, l, len(datas), stage.rank)
    if teachers is None:
        dim = student.prompt_encoder[models.ADAPTER].embedding.weight.shape[1]
        head = models.head_module(student)
        teachers = [Teacher(d.name, torch.randn(l, dim), torch.randn(d.num_labels, head.in_features) if head else None,
                            torch.randn(d.num_labels) if head else None) for d in datas]
    init_student(student, teachers, slices)
    overrides = [teacher_overrides(student, t, sl) for t, sl in zip(teachers, slices)]
    streams = [[batch_stream(d.train, stage.batch_size, spec.seed + k, r, world) for r in range(world)]
               for k, d in enumerate(datas)]

    def loss_fn(step: int):
        k = (step - 1) % len(datas)
        return rank_mean(lambda r: distill_step_loss(
            student, encoder(next(streams[k][r]), datas[k].label_words, task_id=k,
                             label_offset=slices[k].start if slices[k] else 0),
            overrides[k], task_type=task_type, num_virtual_tokens=l, label_slice=slices[k],
            lambda_=stage.lambda_, temperature=stage.temperature)[0], world)

    def evaluate_all() -> dict[str, float]:
        values = [next(iter(evaluate(student, d, "validation", encoder, task_id=k, label_slice=slices[k]).values()))
                  for k, d in enumerate(datas)]
        return {"eval_mean": sum(values) / len(values)}

    return student, slices, loss_fn, evaluate_all


def plain_loop(spec, trials: list[dict], scope: str, saved: Path, matched: bool) -> dict:
    """The spec's work in this process, trained models saved under ``saved``; ``scope`` stops after the
    sources ("sources") or after the MPT trials ("mpt") when the parts asked for need no more.
    ``matched``: each stage at the torch threads a Ray worker of its CPUs gets (P2); otherwise torch's
    default, every CPU, as a plain script runs (P1)."""
    import dataclasses

    import torch

    from orchestrator.data import few_shot, load_task
    from orchestrator.method import models
    from orchestrator.method.distill import SharedPrompt, Teacher, student_head_tensors, student_tensors
    from orchestrator.method.metrics import compute_metric
    from orchestrator.method.targets import build_target_model, load_trial_model, save_trial_model, task_id_of
    from orchestrator.method.train import Encoder, batch_stream, evaluate, fit, predict, task_loss

    result = {"threads_default": torch.get_num_threads(), "units": []}
    task_type, l = spec.model.task_type, spec.prompt.num_virtual_tokens
    model_dir = models.resolve_model_dir(spec.model)
    encoder = Encoder(models.load_tokenizer(model_dir), task_type, spec.model.max_length, spec.model.max_target_length)

    stage = spec.source
    threads = (lambda stage: torch.set_num_threads(threads_for(stage.resources))) if matched else (lambda stage: None)
    threads(stage)
    world, teachers = stage.resources.num_workers, {}
    for task in spec.sources:
        clock = Clock("source", task)
        data = load_task(spec.task(task), spec.seed)
        model = models.prompt_tuning_model(models.load_base_model(model_dir, task_type, data.num_labels, spec.seed),
                                           task_type, l)
        streams = [batch_stream(data.train, stage.batch_size, spec.seed, r, world) for r in range(world)]
        metrics = fit(model, lambda step: rank_mean(
                          lambda r: task_loss(model, encoder(next(streams[r]), data.label_words), task_type), world),
                      steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
                      eval_every=stage.eval_every, evaluate=lambda: evaluate(model, data, "validation", encoder),
                      on_step=clock.on_step, **stage.optimization())
        teachers[task] = Teacher.of(task, model)
        result["units"].append(clock.done(metrics[f"eval_{data.metric}"]))
    progress(f"plain loop: {len(spec.sources)} sources done")
    if scope == "sources":
        return result

    stage = spec.distill
    threads(stage)
    clock = Clock("distill", "+".join(spec.sources))
    datas = [load_task(spec.task(t), spec.seed) for t in spec.sources]
    student, slices, loss_fn, evaluate_all = distill_parts(spec, model_dir, encoder, datas,
                                                           [teachers[t] for t in spec.sources],
                                                           stage.resources.num_workers)
    metrics = fit(student, loss_fn, steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr,
                  weight_decay=stage.weight_decay, eval_every=stage.eval_every, evaluate=evaluate_all,
                  on_step=clock.on_step, **stage.optimization())
    shared = SharedPrompt(student_tensors(student), student_head_tensors(student, spec.sources, slices))
    result["units"].append(clock.done(metrics["eval_mean"]))
    progress("plain loop: distillation done")

    stage = spec.target
    threads(stage)
    for task in spec.targets:
        for i, s in enumerate(t for t in trials if scope == "full" or t["method"] == "mpt"):
            method, seed, task_id = s["method"], int(s["seed"]), task_id_of(s["method"])
            clock = Clock("target", task, method=method, config=SearchSpace.configuration(s), seed=seed,
                          shots=str(s["shots"]))
            data = load_task(spec.task(task), spec.seed)  # each trial loads its data, as target_trial does
            data = dataclasses.replace(data, train=few_shot(data, s["shots"], seed))
            with tempfile.TemporaryDirectory() as workdir:
                model = build_target_model(method, int(s.get("rank", 1)), model_dir, task_type, l, data.num_labels,
                                           seed, shared, teachers, Path(workdir))
            stream = batch_stream(data.train, int(s["batch_size"]), seed)
            metrics = fit(model, lambda step: task_loss(model, encoder(next(stream), data.label_words, task_id),
                                                        task_type),
                          steps=stage.steps, lr=float(s.get("lr", stage.lr)), head_lr=float(s["head_lr"]),
                          weight_decay=float(s["weight_decay"]), eval_every=stage.eval_every,
                          evaluate=lambda: evaluate(model, data, "validation", encoder, task_id),
                          on_step=clock.on_step, **stage.optimization())
            # saved once at the end for the reload: the orchestrator's save at every eval is Tune's checkpoint
            (saved / f"{task}-{i}").mkdir()
            save_trial_model(model, method, saved / f"{task}-{i}")
            result["units"].append(clock.done(metrics[f"eval_{data.metric}"], saved=str(saved / f"{task}-{i}")))
        progress(f"plain loop: target {task} trials done")
    if scope == "mpt":
        return result

    trained = [u for u in result["units"] if u["stage"] == "target"]
    def family(u: dict) -> tuple:  # as select_best groups: target, method family, budget
        return u["task"], u["method"].split(":")[0], u["shots"]

    for _, units in best_configurations(trained, family).values():
        for u in units:
            clock = Clock("reload", u["task"], method=u["method"], config=u["config"], seed=u["seed"], shots=u["shots"])
            data = load_task(spec.task(u["task"]), spec.seed)
            model = load_trial_model(u["method"], model_dir, task_type, data.num_labels, spec.seed, u["saved"])
            predictions = predict(model, data.test, encoder, data.label_words, task_id_of(u["method"]))
            evaluate(model, data, "validation", encoder, task_id_of(u["method"]))
            result["units"].append(clock.done(None, test=compute_metric(data.metric, predictions,
                                                                        [ex.label for ex in data.test])))
    progress("plain loop: chosen trials reloaded and scored")
    return result
