"""Assertions shared by the data-layer unit tests (tests/unit/data/)."""

from __future__ import annotations

import pytest

from orchestrator.data import TaskData, TaskDataError, check_task, load_task
from orchestrator.spec.schema import SpecIssue, TaskSpec

ROLES = ("train", "validation", "test")


def texts(data: TaskData, role: str) -> list[tuple[str, ...]]:
    return [e.texts for e in data.split(role)]


def the_error(spec: TaskSpec, seed: int = 0) -> TaskDataError:
    """load_task must fail, and check_task must report the same issues without raising."""
    with pytest.raises(TaskDataError) as info:
        load_task(spec, seed)
    issues = check_task(spec, seed)
    assert [str(i) for i in issues] == [str(i) for i in info.value.issues]
    assert all(isinstance(i, SpecIssue) and i.field.startswith(f"tasks.{spec.name}") for i in issues)
    assert all(i.fix for i in issues), "every issue names its fix"
    return info.value
