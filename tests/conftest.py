"""The one fixture that owns a local Ray for the integration tests (per module, so that the
multi-node cluster tests never run beside it), and the environment every test runs in. ``helpers``
(the loopback cluster, data fixtures) is importable from every test folder through pytest's
``pythonpath`` (pyproject.toml)."""

from __future__ import annotations

import os

import pytest

# Every port of a local Ray binds 127.0.0.1 only: without this Ray's GCS and raylet listen on every
# interface, whatever the node IP. Ray reads it once, when it is first imported, so it is set here,
# before any test module imports Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
