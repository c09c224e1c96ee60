"""Distillation of K teacher prompts into one multitask student (the part PEFT does not have).

``L = L_task + lambda * (L_logits + L_hidden)``, with
``L_logits = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` over label positions and
``L_hidden = MSE(h_t, h_s)`` over the last hidden states of the input tokens.

The teacher pass reuses the student's own frozen base model: ``torch.func.functional_call`` swaps in
the teacher's prompt (and head) for one forward without gradients, so distillation holds one copy of
the base model whatever K is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.func import functional_call

from ..data import TaskData
from .models import ADAPTER, head_module, prompt_tensor
from .train import classification_loss

SHARED_PROMPT_FILE = "shared_prompt.safetensors"
STUDENT_HEADS_FILE = "student_heads.safetensors"


@dataclass
class Teacher:
    """A trained source prompt, plus its classifier head for SEQ_CLS (None for text-to-text)."""

    task: str
    prompt: torch.Tensor
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"prompt_embeddings": self.prompt}
        if self.head_weight is not None:
            out["head.weight"] = self.head_weight
            out["head.bias"] = self.head_bias
        return out

    @classmethod
    def from_tensors(cls, task: str, tensors: dict[str, torch.Tensor]) -> Teacher:
        return cls(task, tensors["prompt_embeddings"], tensors.get("head.weight"), tensors.get("head.bias"))

    @classmethod
    def of(cls, task: str, model: torch.nn.Module) -> Teacher:
        """The teacher a prompt-tuned model holds now: its prompt and, for SEQ_CLS, its head."""
        head = head_module(model)
        return cls(task, prompt_tensor(model), None if head is None else head.weight.detach(),
                   None if head is None else head.bias.detach())


@dataclass
class SharedPrompt:
    """The distilled student: PEFT's MPT keys plus the per-source heads (SEQ_CLS)."""

    tensors: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]

    def save(self, path: Path) -> Path:
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path))
        return path


def label_slices(datas: list[TaskData]) -> list[slice]:
    """Each source task's block of label slots in the student's one head (the union of source labels)."""
    slices, start = [], 0
    for d in datas:
        slices.append(slice(start, start + d.num_labels))
        start += d.num_labels
    return slices


def init_student(student: torch.nn.Module, teachers: list[Teacher], slices: list[slice | None]) -> None:
    """Start at the teachers: P* = mean of their prompts (u v^T = 1), each head block = its teacher's head."""
    with torch.no_grad():
        student.prompt_encoder[ADAPTER].embedding.weight.copy_(torch.stack([t.prompt for t in teachers]).mean(0))
        head = head_module(student)
        if head is not None:
            for t, sl in zip(teachers, slices):
                head.weight[sl] = t.head_weight
                head.bias[sl] = t.head_bias


def student_tensors(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """P*, u and v under PEFT's own keys, so ``prompt_tuning_init_state_dict_path`` loads the file."""
    enc = student.prompt_encoder[ADAPTER]
    return {"prompt_embeddings": enc.embedding.weight.detach().cpu(),
            "prefix_task_cols": enc.prefix_task_cols.detach().cpu(),
            "prefix_task_rows": enc.prefix_task_rows.detach().cpu()}


def student_head_tensors(student: torch.nn.Module, names: list[str], slices: list[slice | None]) -> dict[str, torch.Tensor]:
    """Each source's block of the union head, keyed ``<task>.weight`` / ``<task>.bias`` ({} for seq2seq)."""
    head = head_module(student)
    if head is None:
        return {}
    out = {}
    for name, sl in zip(names, slices):
        out[f"{name}.weight"] = head.weight[sl].detach().cpu()
        out[f"{name}.bias"] = head.bias[sl].detach().cpu()
    return out


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_hidden: torch.Tensor,
                      teacher_hidden: torch.Tensor, hidden_mask: torch.Tensor, temperature: float,
                      logit_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_logits, L_hidden)``; logits ``[..., C]``, hidden ``[B, L, d]``, masks select positions."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    if logit_mask is not None:
        kl = kl[logit_mask]
    l_logits = temperature ** 2 * kl.mean()
    sq = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(-1)
    mask = hidden_mask.to(sq.dtype)
    l_hidden = (sq * mask).sum() / mask.sum().clamp(min=1)
    return l_logits, l_hidden


def teacher_overrides(student: torch.nn.Module, teacher: Teacher, label_slice: slice | None) -> dict[str, torch.Tensor]:
    """Parameters that turn the MPT student into teacher k for one forward: prompt P_k, u v^T = 1, head_k."""
    encoder = student.prompt_encoder[ADAPTER]
    prefix = f"prompt_encoder.{ADAPTER}."
    one = 1.0 / math.sqrt(encoder.num_ranks)
    overrides = {
        prefix + "embedding.weight": teacher.prompt.to(encoder.embedding.weight),
        prefix + "prefix_task_cols": torch.full_like(encoder.prefix_task_cols, one),
        prefix + "prefix_task_rows": torch.full_like(encoder.prefix_task_rows, one),
    }
    if teacher.head_weight is not None:
        head = head_module(student)
        names = {id(p): n for n, p in student.named_parameters()}
        weight = torch.zeros_like(head.weight)
        weight[label_slice] = teacher.head_weight.to(weight)
        bias = torch.zeros_like(head.bias)
        bias[label_slice] = teacher.head_bias.to(bias)
        overrides[names[id(head.weight)]] = weight
        overrides[names[id(head.bias)]] = bias
    return overrides


def _logits_and_hidden(outputs, task_type: str, num_virtual_tokens: int, label_slice: slice | None):
    if task_type == "SEQ_CLS":
        logits = outputs.logits if label_slice is None else outputs.logits[:, label_slice]
        hidden = outputs.hidden_states[-1]
    else:
        logits, hidden = outputs.logits, outputs.encoder_last_hidden_state
    return logits, hidden[:, num_virtual_tokens:]


def distill_step_loss(student: torch.nn.Module, batch: dict[str, torch.Tensor], overrides: dict[str, torch.Tensor],
                      *, task_type: str, num_virtual_tokens: int, label_slice: slice | None, lambda_: float,
                      temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The full loss of one single-task batch, and its parts for logging.

    ``student`` may be DDP-wrapped (its forward syncs gradients); the teacher pass runs on the
    unwrapped module, without gradients.
    """
    inner = getattr(student, "module", student)
    inputs = dict(batch) if task_type != "SEQ_CLS" else {k: v for k, v in batch.items() if k != "labels"}
    out_s = student(**inputs, output_hidden_states=True)
    with torch.no_grad():
        out_t = functional_call(inner, overrides, args=(), kwargs={**inputs, "output_hidden_states": True},
                                strict=False)
    logits_s, hidden_s = _logits_and_hidden(out_s, task_type, num_virtual_tokens, label_slice)
    logits_t, hidden_t = _logits_and_hidden(out_t, task_type, num_virtual_tokens, label_slice)
    if task_type == "SEQ_CLS":
        l_task = classification_loss(out_s.logits, batch["labels"], label_slice)
        logit_mask = None
    else:
        l_task = out_s.loss
        logit_mask = batch["labels"] != -100
    l_logits, l_hidden = distillation_loss(logits_s, logits_t, hidden_s, hidden_t, batch["attention_mask"],
                                           temperature, logit_mask)
    loss = l_task + lambda_ * (l_logits + l_hidden)
    return loss, {"loss_task": l_task.item(), "loss_logits": l_logits.item(), "loss_hidden": l_hidden.item()}
