"""orchestrator.method.optimization through ``fit``: the frozen model's dropout and the schedules (Adafactor
trains in tests/unit/method/test_train.py)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.models import L, encoder, small

from orchestrator.method import models
from orchestrator.method.optimization import set_dropout, warmup_steps
from orchestrator.method.train import fit, task_loss

STEPS, LR = 20, 1.0
WARMUP = 4  # warmup_ratio 0.2 of 20 steps


def tiny_prompt_model(bert_dir: str):
    data = small("sentiment")
    model = models.prompt_tuning_model(models.load_base_model(bert_dir, "SEQ_CLS", 2), "SEQ_CLS", L)
    return model, encoder(bert_dir)(data.train[:8], data.label_words)


def losses_of(model, batch, dropout: str, torch_seed: int, steps: int = 5) -> list[float]:
    torch.manual_seed(torch_seed)
    losses: list[float] = []
    fit(model, lambda step: task_loss(model, batch, "SEQ_CLS"), steps=steps, lr=0.3, head_lr=0.05, weight_decay=0.0,
        eval_every=steps, evaluate=dict, on_step=lambda s, v: losses.append(v), dropout=dropout,
        optimizer="adamw", schedule="constant", warmup_ratio=0.0)
    return losses


@pytest.mark.parametrize("dropout, same", [("off", True), ("on", False)])
def test_dropout_off_makes_training_independent_of_the_random_state(bert_dir, dropout, same):
    runs = []
    for torch_seed in (1, 2):  # identical models and batches; only the dropout masks could differ
        model, batch = tiny_prompt_model(bert_dir)
        runs.append(losses_of(model, batch, dropout, torch_seed))
    assert (runs[0] == runs[1]) is same, runs


def test_dropout_rates_hold_through_fits_train_mode(bert_dir):
    model, batch = tiny_prompt_model(bert_dir)
    seen = []

    def loss_fn(step: int) -> torch.Tensor:
        seen.append((model.training, {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}))
        return task_loss(model, batch, "SEQ_CLS")

    fit(model, loss_fn, steps=3, lr=0.3, head_lr=0.05, weight_decay=0.0, eval_every=1, evaluate=dict,
        dropout="off", optimizer="adamw", schedule="constant", warmup_ratio=0.0)
    assert seen == [(True, {0.0})] * 3


def test_a_dropout_rate_reaches_every_dropout_of_t5_attention_included(t5_dir):
    model = models.load_base_model(t5_dir, "SEQ_2_SEQ_LM")
    set_dropout(model, 0.25)
    attention = [m for m in model.modules() if type(m).__name__ == "T5Attention"]
    assert attention and {m.dropout for m in attention} == {0.25}
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}


def expected_lr(schedule: str, step: int) -> float:
    """transformers' documented curves: linear warmup from 0, then constant / linear / cosine decay to 0."""
    if step < WARMUP:
        return LR * step / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return LR * {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_each_schedule_follows_the_documented_curve(schedule):
    weight = torch.nn.Linear(2, 1)
    lrs = {}

    def record(step: int, metrics: dict, state: dict) -> None:
        lrs[step] = state["schedule"]["_last_lr"][0]  # the lr the next step will use

    fit(weight, lambda step: weight(torch.ones(1, 2)).sum() ** 2, steps=STEPS, lr=LR, head_lr=LR, weight_decay=0.0,
        eval_every=1, evaluate=dict, on_eval=record, dropout="on", optimizer="adamw", schedule=schedule,
        warmup_ratio=WARMUP / STEPS)
    for step in (1, 2, 4, 8, 12, 16, 19, 20):
        assert lrs[step] == pytest.approx(expected_lr(schedule, step), abs=1e-9), (step, lrs[step])


def test_warmup_steps_are_the_ratio_of_the_steps_rounded_up():
    assert [warmup_steps(30, 0.1), warmup_steps(5, 0.1), warmup_steps(80, 0.0), warmup_steps(80, 0.25)] == [3, 1, 0, 20]
