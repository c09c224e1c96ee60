"""Fixtures of the spec tests (the minimal spec and ``with_`` are in tests/unit/conftest.py)."""

from __future__ import annotations

import pytest

from orchestrator.spec.loading import parse_spec
from orchestrator.spec.schema import SpecError


@pytest.fixture(scope="session")
def errors_of():
    """``errors_of(raw)``: the issues of the SpecError that parsing ``raw`` raises (it must raise)."""

    def errors_of(raw) -> list:
        with pytest.raises(SpecError) as info:
            parse_spec(raw)
        return info.value.issues

    return errors_of
