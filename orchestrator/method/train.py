"""One training loop and one evaluation, used by every stage (pure PyTorch, runs without Ray).

A stage supplies ``loss_fn(step) -> loss`` and ``evaluate() -> metrics``; the loop owns the optimizer,
the schedule and the cadence of logging. Ray Train / Tune / MLflow only see the callbacks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import Example, TaskData
from ..spec.schema import DropoutSetting, OptimizerName, ScheduleName
from .metrics import compute_metric
from .models import HEAD_NAMES
from .optimization import make_optimizer, make_schedule, set_dropout


@dataclass
class Encoder:
    """Turns examples into model inputs: pairs as two segments, labels as ids (SEQ_CLS) or words (seq2seq)."""

    tokenizer: object
    task_type: str
    max_length: int
    max_target_length: int

    def inputs(self, texts: Sequence[tuple[str, ...]], task_id: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs of unlabelled texts (one or two per example): what prediction needs."""
        columns = list(zip(*texts))
        enc = self.tokenizer(*[list(c) for c in columns], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        # PEFT ignores token_type_ids under prompt tuning (the prompt shifts every position) and warns.
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if task_id is not None:
            batch["task_ids"] = torch.full((len(texts),), task_id, dtype=torch.long)
        return batch

    def __call__(self, examples: Sequence[Example], label_words: Sequence[str] | None = None,
                 task_id: int | None = None, label_offset: int = 0) -> dict[str, torch.Tensor]:
        batch = self.inputs([ex.texts for ex in examples], task_id)
        if self.task_type == "SEQ_CLS":
            batch["labels"] = torch.tensor([ex.label + label_offset for ex in examples])
        else:
            words = [label_words[ex.label] for ex in examples]
            target = self.tokenizer(words, padding=True, truncation=True, max_length=self.max_target_length,
                                    return_tensors="pt")
            batch["labels"] = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
        return batch


def batch_stream(examples: Sequence[Example], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> Iterator[list[Example]]:
    """Endless seeded epochs over this worker's shard (DDP workers see disjoint examples)."""
    shard = list(examples)[rank::world_size]
    if not shard:
        raise ValueError(f"no training examples for worker {rank} of {world_size}")
    rng = random.Random(seed)
    while True:
        order = shard[:]
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            if len(chunk) == batch_size or len(order) < batch_size:
                yield chunk


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_slice: slice | None = None) -> torch.Tensor:
    """Cross-entropy over one task's labels (a slice of a head shared by several tasks)."""
    if label_slice is not None:
        logits = logits[:, label_slice]
        labels = labels - label_slice.start
    return F.cross_entropy(logits, labels)


def task_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], task_type: str,
              label_slice: slice | None = None) -> torch.Tensor:
    if task_type == "SEQ_CLS":
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return classification_loss(model(**inputs).logits, batch["labels"], label_slice)
    return model(**batch).loss


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slower there than fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


class LaggedLoss:
    """Each step's loss, read one step late. On a GPU, reading a loss waits for the step to finish;
    read at once, it leaves the GPU idle while the CPU encodes the next batch and queues its kernels.
    So the value is copied to host memory behind the step and read once the next step is queued."""

    def __init__(self, on_value: Callable[[int, float], None]):
        self.on_value = on_value
        self.pending: tuple[int, torch.Tensor, torch.cuda.Event | None] | None = None

    def push(self, step: int, loss: torch.Tensor) -> None:
        self.settle()
        value, ready = loss.detach(), None
        if value.is_cuda:
            value = value.to("cpu", non_blocking=True)  # into pinned memory, ready when the event is
            ready = torch.cuda.Event()
            ready.record()
        self.pending = (step, value, ready)

    def settle(self) -> None:
        """Read the pending loss; a non-finite one raises FloatingPointError naming its step."""
        if self.pending is None:
            return
        step, value, ready = self.pending
        self.pending = None
        if ready is not None:
            ready.synchronize()
        loss = value.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}: training diverged; lower the learning rate")
        self.on_value(step, loss)


def fit(model: torch.nn.Module, loss_fn: Callable[[int], torch.Tensor], *, steps: int, lr: float,
        head_lr: float, weight_decay: float, eval_every: int, evaluate: Callable[[], dict[str, float]],
        on_step: Callable[[int, float], None] = lambda step, loss: None,
        on_eval: Callable[[int, dict[str, float], dict], None] = lambda step, metrics, state: None,
        dropout: DropoutSetting, optimizer: OptimizerName, schedule: ScheduleName, warmup_ratio: float,
        start_step: int = 0, optimizer_state: dict | None = None) -> dict[str, float]:
    """Train the parameters that require grad; evaluate every ``eval_every`` steps and at the end.

    ``on_step`` gets each step's loss, once the next step is queued; ``on_eval`` gets the eval metrics
    with ``train_loss_avg`` (the mean loss since the previous eval) and the optimizer/schedule state to
    checkpoint. Resuming at ``start_step`` with that state continues the same schedule. A non-finite
    loss stops training with FloatingPointError rather than silently training on NaNs: one step later
    (see ``LaggedLoss``), and always before the next evaluation, so no diverged weights are evaluated
    or checkpointed.

    The classifier head gets its own learning rate: prompt tuning wants lr ~0.3, which makes a
    linear head diverge. ``dropout``, ``optimizer``, ``schedule`` and ``warmup_ratio`` are the spec's
    fields of the same names (see ``orchestrator.method.optimization``).
    """
    set_dropout(model, dropout)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in named]
    head = [p for n, p in named if any(f".{h}." in f".{n}" for h in HEAD_NAMES)]
    rest = [p for n, p in named if not any(f".{h}." in f".{n}" for h in HEAD_NAMES)]
    groups = [g for g in ({"params": rest, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]
    opt = make_optimizer(groups, optimizer, weight_decay)
    lr_schedule = make_schedule(opt, schedule, steps, warmup_ratio)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state["optimizer"])
        lr_schedule.load_state_dict(optimizer_state["schedule"])
    metrics: dict[str, float] = {}
    window: list[float] = []
    if start_step >= steps:  # resumed after the last step: report the final state once more
        model.eval()
        metrics = evaluate()
        on_eval(steps, metrics, {"optimizer": opt.state_dict(), "schedule": lr_schedule.state_dict()})
        return metrics
    losses = LaggedLoss(lambda step, value: (window.append(value), on_step(step, value)))
    model.train()
    for step in range(start_step + 1, steps + 1):
        loss = loss_fn(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        lr_schedule.step()
        opt.zero_grad(set_to_none=True)
        losses.push(step, loss)
        if step % eval_every == 0 or step == steps:
            losses.settle()  # a diverged step stops training before its weights are evaluated or checkpointed
            model.eval()
            metrics = {"train_loss_avg": sum(window) / len(window), **evaluate()}
            window.clear()
            on_eval(step, metrics, {"optimizer": opt.state_dict(), "schedule": lr_schedule.state_dict()})
            model.train()
    return metrics


@dataclass
class Predictions:
    """What a model predicts for a list of texts."""

    ids: list[int]  # class ids; for seq2seq the generated word's index in label_words, -1 when it is none of them
    texts: list[str]  # seq2seq: each generated output as decoded (SEQ_CLS: empty)
    probs: torch.Tensor | None = None  # SEQ_CLS when asked: softmax over the task's labels, one row per text


@torch.no_grad()
def predict_texts(model: torch.nn.Module, texts: Sequence[tuple[str, ...]], encoder: Encoder,
                  label_words: Sequence[str], task_id: int | None = None, label_slice: slice | None = None,
                  batch_size: int = 64, probabilities: bool = False) -> Predictions:
    """Predictions for unlabelled texts; evaluation and the served model both come through here, so
    a served model answers exactly what the pipeline scored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    index = {w.strip().lower(): i for i, w in enumerate(label_words)}
    # Batches of texts of similar length pad less (0.75-1.04x the time on the demo's validation sets,
    # where evaluating costs about as much as training). Results go back in input order.
    order = sorted(range(len(texts)), key=lambda i: sum(map(len, texts[i])))
    ids, words, probs = [], [], []
    for i in range(0, len(order), batch_size):
        batch = to_device(encoder.inputs([texts[j] for j in order[i:i + batch_size]], task_id), device)
        with autocast(device):
            if encoder.task_type == "SEQ_CLS":
                logits = model(**batch).logits.float()
                if label_slice is not None:
                    logits = logits[:, label_slice]
                ids.extend(logits.argmax(-1).tolist())
                if probabilities:
                    probs.append(logits.softmax(-1).cpu())
            else:
                generated = model.generate(**batch, max_new_tokens=encoder.max_target_length, do_sample=False,
                                           num_beams=1)
                decoded = encoder.tokenizer.batch_decode(generated, skip_special_tokens=True)
                words.extend(decoded)
                ids.extend(index.get(t.strip().lower(), -1) for t in decoded)
    model.train(was_training)
    position = sorted(range(len(order)), key=order.__getitem__)  # input index -> place in the sorted order
    out = Predictions([ids[k] for k in position], [words[k] for k in position] if words else [])
    if probs:
        out.probs = torch.cat(probs)[position]
    return out


def predict(model: torch.nn.Module, examples: Sequence[Example], encoder: Encoder, label_words: Sequence[str],
            task_id: int | None = None, label_slice: slice | None = None, batch_size: int = 64) -> list[int]:
    """Class ids; for seq2seq the generated word's index in ``label_words`` (-1 when it is none of them)."""
    return predict_texts(model, [ex.texts for ex in examples], encoder, label_words, task_id, label_slice,
                         batch_size).ids


def evaluate(model: torch.nn.Module, data: TaskData, split: str, encoder: Encoder, task_id: int | None = None,
             label_slice: slice | None = None) -> dict[str, float]:
    """``{eval_<metric>: value}`` on one split ("validation" for tuning, "test" only for the report)."""
    examples = getattr(data, split)
    preds = predict(model, examples, encoder, data.label_words, task_id, label_slice)
    value = compute_metric(data.metric, preds, [ex.label for ex in examples])
    prefix = "eval" if split == "validation" else "test"
    return {f"{prefix}_{data.metric}": value}
