"""The one fixture that owns a local Ray for the integration tests (per module, so that the
multi-node cluster tests never run beside it)."""

from __future__ import annotations

import os

import pytest

# Every Ray port binds 127.0.0.1 only (DESIGN.md, "Ray 2.60 facts"); set before Ray starts.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
