"""orchestrator.method.train: the one training loop and the batch stream."""

from __future__ import annotations

import pytest
import torch
from helpers.models import L, encoder, small

from orchestrator.method import models
from orchestrator.method.train import batch_stream, evaluate, fit, task_loss
from orchestrator.spec.schema import TrainSpec

DEFAULTS = TrainSpec().optimization()


ADAFACTOR = {"optimizer": "adafactor", "schedule": "constant", "warmup_ratio": 0.0, "dropout": "off"}


@pytest.mark.parametrize("optimization", [DEFAULTS, ADAFACTOR], ids=["defaults", "adafactor"])
def test_fit_lowers_the_loss_and_reports_each_eval(bert_dir, optimization):
    data = small("sentiment")
    model = models.prompt_tuning_model(models.load_base_model(bert_dir, "SEQ_CLS", 2), "SEQ_CLS", L)
    enc = encoder(bert_dir)
    fixed = enc(data.train[:8], data.label_words)  # a batch a random tiny model can still memorise
    evals, losses = [], []

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return task_loss(model, fixed, "SEQ_CLS").item()

    before = eval_loss()
    fit(model, lambda step: task_loss(model, fixed, "SEQ_CLS"), steps=30, lr=0.3, head_lr=0.05, weight_decay=0.0,
        eval_every=10, evaluate=lambda: evaluate(model, data, "validation", enc),
        on_step=lambda s, v: losses.append(v), on_eval=lambda s, m, state: evals.append((s, m, state)),
        **optimization)
    after = eval_loss()
    assert len(losses) == 30 and [s for s, _, _ in evals] == [10, 20, 30]
    if optimization["schedule"] == "constant":  # the prompt and the head keep their own learning rates
        assert [g["lr"] for g in evals[-1][2]["optimizer"]["param_groups"]] == [0.3, 0.05]
    assert set(evals[-1][1]) == {"train_loss_avg", "eval_accuracy"}
    assert after < before - 0.05, (before, after)


def test_batch_stream_shards_are_disjoint():
    data = small("topic")
    a = {ex for batch in [next(batch_stream(data.train, 64, 0, 0, 2))] for ex in batch}
    b = {ex for batch in [next(batch_stream(data.train, 64, 0, 1, 2))] for ex in batch}
    assert a and b and not (a & b)


@pytest.mark.parametrize("bad_step,eval_every", [(3, 3), (2, 5)], ids=["at-an-eval", "between-evals"])
def test_a_non_finite_loss_stops_fit_before_the_next_eval(bad_step, eval_every):
    weight = torch.nn.Parameter(torch.ones(2))
    model = torch.nn.Module()
    model.weight = weight
    reported, evals = [], []

    def loss_fn(step: int) -> torch.Tensor:
        loss = (weight ** 2).sum()
        return loss * float("nan") if step == bad_step else loss

    with pytest.raises(FloatingPointError, match=f"loss is nan at step {bad_step}: training diverged"):
        fit(model, loss_fn, steps=10, lr=0.1, head_lr=0.1, weight_decay=0.0, eval_every=eval_every,
            evaluate=lambda: {"eval_x": float(weight.sum())}, on_step=lambda s, v: reported.append(s),
            on_eval=lambda s, m, state: evals.append(s), **DEFAULTS)
    assert reported == list(range(1, bad_step))  # every finite loss before it, in order
    assert evals == []  # the diverged weights were neither evaluated nor checkpointed
