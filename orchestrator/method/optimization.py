"""The optimisation settings of a training run: the backbone's dropout, the optimizer and the schedule.

Pure PyTorch and transformers; ``fit`` applies them, the spec (``TrainSpec``) names them.
"""

from __future__ import annotations

import math

import torch

from ..spec.schema import DropoutSetting, OptimizerName, ScheduleName

# Attention modules that apply dropout functionally keep their rate as a float, not a module:
# T5Attention as `dropout`, Llama-style attention as `attention_dropout`.
ATTENTION_RATE_ATTRS = ("dropout", "attention_dropout")
SCHEDULE_NAMES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def set_dropout(model: torch.nn.Module, dropout: DropoutSetting) -> None:
    """Set every dropout rate of ``model``: "on" keeps the model's own rates, "off" sets them to 0,
    a float sets them all to that rate.

    Rates are changed rather than modules put in eval mode, because ``fit`` calls ``model.train()``
    after every evaluation and that would switch eval-mode dropout back on.
    """
    if dropout == "on":
        return
    rate = 0.0 if dropout == "off" else float(dropout)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = rate
        for attr in ATTENTION_RATE_ATTRS:
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, rate)


def make_optimizer(groups: list[dict], name: OptimizerName, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, or Adafactor driven by each group's lr and the schedule: without relative steps and
    parameter scaling, which would replace the spec's learning rates with Adafactor's own."""
    if name == "adafactor":
        from transformers.optimization import Adafactor  # imported here for the reason models.quiet_transformers gives

        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def warmup_steps(steps: int, warmup_ratio: float) -> int:
    # rounded first so that e.g. 30 * 0.1 (3.0000000000000004) gives 3 warmup steps, not 4
    return math.ceil(round(steps * warmup_ratio, 9))


def make_schedule(optimizer: torch.optim.Optimizer, name: ScheduleName, steps: int,
                  warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then constant, linear decay to 0 or cosine decay to 0."""
    from transformers import get_scheduler  # imported here for the reason models.quiet_transformers gives

    return get_scheduler(SCHEDULE_NAMES[name], optimizer, num_warmup_steps=warmup_steps(steps, warmup_ratio),
                         num_training_steps=steps)
