"""Pyfunc models of this project built without a pipeline: a tiny target model, untrained, saved the
way ``registry.register_best`` saves a best trial (for the unit tests of serving, registry and the
``predict`` verb's checks)."""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from orchestrator.data import TaskData
from orchestrator.method.distill import SharedPrompt
from orchestrator.method.targets import build_target_model, save_trial_model
from orchestrator.serve.pyfunc import ModelCard, input_example, save
from orchestrator.serve.registry import register
from orchestrator.tracking import VALIDATION_TAG

from .models import L

D = 32  # hidden size of the tiny models


def card(data: TaskData, base: str = "tiny:bert", task_type: str = "SEQ_CLS", method: str = "mpt") -> ModelCard:
    columns = ["text", "text_pair"] if data.is_pair else ["text"]
    return ModelCard(task=data.name, method=method, base_model=base, revision=None, task_type=task_type,
                     label_names=list(data.label_names), label_words=list(data.label_words), text_columns=columns,
                     max_length=32, max_target_length=4, num_virtual_tokens=L, seed=0, metric=data.metric)


def trial_dir(tmp: Path, model_dir: str, data: TaskData, task_type: str = "SEQ_CLS", method: str = "mpt") -> Path:
    """An untrained target model of ``method`` saved as a trial saves it."""
    torch.manual_seed(3)
    shared = SharedPrompt({"prompt_embeddings": torch.randn(L, D), "prefix_task_cols": torch.randn(1, L, 1),
                           "prefix_task_rows": torch.randn(1, 1, D)}, {})
    (tmp / "work").mkdir(parents=True, exist_ok=True)
    out = tmp / "trial"
    out.mkdir(exist_ok=True)
    model = build_target_model(method, 1, model_dir, task_type, L, data.num_labels, 0, shared, {}, tmp / "work")
    save_trial_model(model, method, out)
    return out


def pyfunc_dir(tmp: Path, model_dir: str, data: TaskData, base: str = "tiny:bert", task_type: str = "SEQ_CLS",
               method: str = "mpt") -> Path:
    """The saved trial as a pyfunc model directory, as registration logs it."""
    c = card(data, base, task_type, method)
    return save(tmp / "model", c, str(trial_dir(tmp, model_dir, data, task_type, method)), input_example(c, data))


def registered(tmp: Path, model_dir: str, data: TaskData) -> tuple[str, Path]:
    """A SQLite store under ``tmp`` with the untrained model of ``data``'s task registered as
    ``mpt-<task>@champion``, as the pipeline names it: (the store's URI, the model directory)."""
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("mpt", artifact_location=(tmp / "mlartifacts").as_uri())
    model = pyfunc_dir(tmp / "ours", model_dir, data)
    register(uri, client.create_run(experiment).info.run_id, f"mpt-{data.name}", model, {VALIDATION_TAG: "0.5"})
    return uri, model


def replicas() -> set[str]:
    """The model replicas (``predict``'s Ray Data actors) the connected Ray has given a process so far.
    Ray's private state table: the public state API also lists other Rays on the machine."""
    from ray._private import state

    return {a["ActorID"] for a in state.actors().values() if "BatchPredictor" in a["ActorClassName"] and a["Pid"]}
