"""Small pieces the method's unit tests share (plain functions; the tiny model dirs are the
``bert_dir`` / ``t5_dir`` fixtures of tests/unit/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.data import TaskData, load_task
from orchestrator.method import models
from orchestrator.method.distill import SharedPrompt
from orchestrator.method.train import Encoder
from orchestrator.spec.schema import TaskSpec

L = 4  # virtual tokens


def encoder(model_dir: str, task_type: str = "SEQ_CLS") -> Encoder:
    return Encoder(models.load_tokenizer(model_dir), task_type, 32, 4)


def small(name: str) -> TaskData:
    """An embedded suite task, cut to 64 training and 16 eval examples."""
    return load_task(TaskSpec(name=name, max_train_examples=64, max_eval_examples=16), 0)


def shared_prompt_file(tmp_path: Path, num_tasks: int = 3, rank: int = 2, d: int = 32) -> tuple[str, dict]:
    """A random distilled student saved under PEFT's MPT keys; its path and its tensors."""
    torch.manual_seed(1)
    tensors = {"prompt_embeddings": torch.randn(L, d), "prefix_task_cols": torch.randn(num_tasks, L, rank),
               "prefix_task_rows": torch.randn(num_tasks, rank, d)}
    path = SharedPrompt(tensors, {}).save(tmp_path / "shared_prompt.safetensors")
    return str(path), tensors
