"""Fixtures of the method's unit tests: tiny models built once per session from a config (no network)."""

from __future__ import annotations

import pytest

from orchestrator.method import models
from orchestrator.spec.schema import ModelSpec


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> str:
    return models.resolve_model_dir(ModelSpec(name_or_path="tiny:bert"), tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> str:
    return models.resolve_model_dir(ModelSpec(name_or_path="tiny:t5"), tmp_path_factory.mktemp("models"))
