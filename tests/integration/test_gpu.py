"""The GPU path of the method: models and batches on the CUDA device, bf16 autocast. Runs where a
CUDA device exists; CPU-only machines (this project's CI) skip it with the reason."""

from __future__ import annotations

import pytest
import torch

from orchestrator.data import load_task
from orchestrator.method import models
from orchestrator.method.train import Encoder, autocast, batch_stream, evaluate, fit, task_loss, to_device
from orchestrator.spec.schema import ModelSpec, TaskSpec, TrainSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here; the GPU path is tested where one is")


@pytest.mark.parametrize("kind,task_type", [("tiny:bert", "SEQ_CLS"), ("tiny:t5", "SEQ_2_SEQ_LM")])
def test_mpt_trains_and_evaluates_on_cuda_with_bf16_autocast(tmp_path, kind, task_type):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model_dir = models.resolve_model_dir(ModelSpec(name_or_path=kind), tmp_path)
    data = load_task(TaskSpec(name="sentiment", max_train_examples=64, max_eval_examples=32), 0)
    base = models.load_base_model(model_dir, task_type, data.num_labels)
    model = models.multitask_model(base, task_type, 4, 1, 2).to(device)
    encoder = Encoder(models.load_tokenizer(model_dir), task_type, 32, 4)
    stream = batch_stream(data.train, 8, 0)

    def loss_on(examples) -> torch.Tensor:
        batch = to_device(encoder(examples, data.label_words, task_id=0), device)
        with autocast(device):
            return task_loss(model, batch, task_type)

    def validation_loss() -> float:
        with torch.no_grad():
            return loss_on(data.validation).item()

    # A width-32 model from random weights stays at chance accuracy in any budget a test affords, so
    # "training moved the metric" is read on the validation loss, which it does move.
    before = validation_loss()
    losses = []
    metrics = fit(model, lambda step: loss_on(next(stream)), steps=30, lr=0.3, head_lr=0.01, weight_decay=0.0,
                  eval_every=30, evaluate=lambda: evaluate(model, data, "validation", encoder, task_id=0),
                  on_step=lambda step, loss: losses.append(loss), **TrainSpec().optimization())
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5]), losses
    assert validation_loss() < before
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_fit_reports_each_loss_as_computed_and_stops_on_a_non_finite_one_on_cuda():
    """fit reads each loss one step late, through a copy to host memory behind the step: every value
    must still be its own step's, in order, and a NaN must still stop training before an eval."""
    device = torch.device("cuda")
    weight = torch.nn.Parameter(torch.randn(512, 512, device=device) / 20)
    model = torch.nn.Module()
    model.weight = weight
    computed, reported, evals = [], [], []

    def loss_fn(step: int) -> torch.Tensor:
        loss = (torch.randn(256, 512, device=device) @ weight).pow(2).mean()
        computed.append(loss.detach().clone())
        return loss * float("nan") if step == 12 else loss

    with pytest.raises(FloatingPointError, match="loss is nan at step 12"):
        fit(model, loss_fn, steps=20, lr=0.01, head_lr=0.01, weight_decay=0.0, eval_every=5, evaluate=dict,
            on_step=lambda s, v: reported.append((s, v)), on_eval=lambda s, m, state: evals.append(s),
            **TrainSpec().optimization())
    assert reported == [(s, c.item()) for s, c in enumerate(computed[:11], 1)]
    assert evals == [5, 10]
