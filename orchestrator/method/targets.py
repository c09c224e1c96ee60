"""The model a target trial trains, by its method's model kind and starting point
(``orchestrator/spec/methods.py``), and how it is saved and loaded again.

MPT's target model (kind ``multitask``) starts from a P* with u v^T = 1 (PEFT's own N(0, 0.02) start would
scale the transferred prompt to almost nothing): the distilled one, the mean of the teacher prompts
(where distillation starts, so ``no_distill`` measures what distillation adds) or the joint student.
A ``prompt`` starts random or from one teacher's prompt (SPoT); a ``head`` is the linear probe of
the frozen model. Every method gets a fresh classifier head for SEQ_CLS: a target's labels are its own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..spec.methods import method_of, source_of
from . import models
from .distill import SHARED_PROMPT_FILE, SharedPrompt, Teacher

HEAD_FILE = "head.safetensors"


def build_target_model(method: str, rank: int, model_dir: str, task_type: str, num_virtual_tokens: int,
                       num_labels: int, seed: int, shared: SharedPrompt | None, teachers: dict[str, Teacher],
                       workdir: Path, joint: SharedPrompt | None = None) -> torch.nn.Module:
    """The model ``method`` trains (its forward takes ``task_ids=task_id_of(method)``)."""
    base = models.load_base_model(model_dir, task_type, num_labels, seed)
    entry = method_of(method)
    if entry.model == "multitask":
        start = shared if entry.starts_from == "shared_prompt" else joint if entry.starts_from == "joint_student" \
            else mean_of_teachers(teachers)
        # PEFT reads P* from a file (ONLY_SOURCE_SHARED), so the starting prompt is written for it
        path = start.save(workdir / SHARED_PROMPT_FILE)
        return models.multitask_model(base, task_type, num_virtual_tokens, 1, rank, str(path))
    if entry.model == "head":
        return models.head_only_model(base)
    init = teachers[source_of(method)].prompt if entry.starts_from == "teacher_prompt" else None
    return models.prompt_tuning_model(base, task_type, num_virtual_tokens, init_prompt=init)


def mean_of_teachers(teachers: dict[str, Teacher]) -> SharedPrompt:
    """P* as the distillation starts it (the teachers' mean prompt), with no distillation at all."""
    return SharedPrompt({"prompt_embeddings": torch.stack([t.prompt for t in teachers.values()]).mean(0)}, {})


def task_id_of(method: str) -> int | None:
    """The ``task_ids`` value a trained target model's forward needs: MPT's one task, else none."""
    return 0 if method_of(method).model == "multitask" else None


def save_trial_model(model: torch.nn.Module, method: str, out: Path) -> None:
    """PEFT's own format (PeftModel.from_pretrained loads it); the linear probe saves just its head."""
    if method_of(method).model == "head":
        head = models.head_module(model)
        save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
                  str(out / HEAD_FILE))
    else:
        model.save_pretrained(str(out))


def load_trial_model(method: str, model_dir: str, task_type: str, num_labels: int, seed: int,
                     saved_dir: str, revision: str | None = None) -> torch.nn.Module:
    """A trial's saved model, loaded the way a user would (PeftModel.from_pretrained for prompts)."""
    from peft import PeftModel

    base = models.load_base_model(model_dir, task_type, num_labels, seed, revision)
    if method_of(method).model == "head":
        models.head_module(base).load_state_dict(load_file(str(Path(saved_dir) / HEAD_FILE)))
        return base
    return PeftModel.from_pretrained(base, saved_dir)
