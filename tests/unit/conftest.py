"""Fixtures shared by the unit tests: tiny models built once per session from a config (no network),
and the smallest valid spec as raw YAML data (the spec tests and the CLI's verbs build theirs from it)."""

from __future__ import annotations

import copy

import pytest

from orchestrator.method import models
from orchestrator.spec.schema import ModelSpec


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> str:
    return models.resolve_model_dir(ModelSpec(name_or_path="tiny:bert"), tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> str:
    return models.resolve_model_dir(ModelSpec(name_or_path="tiny:t5"), tmp_path_factory.mktemp("models"))


MINIMAL = {
    "name": "t",
    "model": {"name_or_path": "tiny:bert"},
    "tasks": [{"name": "sentiment"}, {"name": "review_polarity"}],
    "sources": ["sentiment"],
    "targets": ["review_polarity"],
}


@pytest.fixture(scope="session")
def minimal_spec() -> dict:
    """The smallest valid spec, as the mapping a YAML file holds: copy it before changing it."""
    return MINIMAL


@pytest.fixture(scope="session")
def with_(minimal_spec):
    """``with_(distill__rank=3)``: a copy of the minimal spec with those changes (``__`` separates the
    keys of a nested field; missing mappings on the way are created)."""

    def with_(**changes):
        raw = copy.deepcopy(minimal_spec)
        for path, value in changes.items():
            node = raw
            *parents, leaf = path.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return raw

    return with_
