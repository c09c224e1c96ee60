"""The two entry points: load a task's data by its kind, or check it without raising.

Kept apart from the package ``__init__`` so that importing :mod:`orchestrator.data` stays a list
of names, and apart from the readers so that the embedded path never touches pandas or datasets.
"""

from __future__ import annotations

from typing import Sequence

from ..spec.schema import SpecIssue, TaskSpec
from .fewshot import budget_problem
from .readers import read_hf, read_local
from .splits import build
from .synthetic import load_embedded
from .types import TaskData, TaskDataError, issue


def load_task(spec: TaskSpec, seed: int) -> TaskData:
    """Load one task's data, or raise :class:`TaskDataError` listing what is wrong and the fix."""
    if spec.kind == "embedded":
        return load_embedded(spec, seed)
    if spec.kind == "hf":
        parts, class_names = read_hf(spec)
    else:
        parts, class_names = read_local(spec), None
    return build(spec, seed, parts, class_names)


def check_task(spec: TaskSpec, seed: int = 0, budgets: Sequence[int | str] = ()) -> list[SpecIssue]:
    """Load the task and return its problems ([] if fine), including the few-shot ``budgets`` (of
    ``target.shots``) that one of its classes cannot fill; never raises for data problems."""
    try:
        data = load_task(spec, seed)
    except TaskDataError as err:
        return list(err.issues)
    except Exception as err:  # noqa: BLE001 - a validator reports, it does not crash
        return [issue(spec, "", f"could not load the data: {type(err).__name__}: {err}",
                      "check the dataset, its files and the column names")]
    return [SpecIssue(field="target.shots", value=b, message=f"target {spec.name}: {problem}",
                      fix="use a smaller budget, or give that task more training examples")
            for b in budgets if (problem := budget_problem(data, b))]
