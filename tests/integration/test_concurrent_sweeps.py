"""Two targets' Tune sweeps running at once in one Ray job each run their own trainable.

Tune looks a trainable up by name in a registry shared by the whole job, when it starts each trial.
Sweep A is held inside its first trial while sweep B registers and runs; A's second trial then starts
after B's registration, so it runs B's bound arguments unless the two sweeps' names differ.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from ray import tune

from orchestrator.pipeline.stages.target import sweep_trainable

pytestmark = pytest.mark.slow


def report_label(config: dict, label: str, gate: str) -> None:
    if config["hold"]:
        Path(gate, "held").touch()
        while not Path(gate, "release").exists():
            time.sleep(0.1)
    tune.report({"label": label})


def run_sweep(name: str, label: str, holds: list[bool], gate: str, storage: str) -> list[str]:
    trainable = sweep_trainable(report_label, name, {"cpu": 1}, label=label, gate=gate)
    grid = tune.Tuner(
        trainable, param_space={"hold": tune.grid_search(holds)},
        # one trial at a time, each in a fresh actor: every trial looks its trainable up anew
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    ).fit()
    return sorted(r.metrics["label"] for r in grid)


def test_concurrent_sweeps_keep_their_own_bound_arguments(local_ray, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this module
    gate, storage = str(tmp_path), str(tmp_path / "ray_results")
    sweep_a = ray.remote(num_cpus=0)(run_sweep).remote("sweep-a", "a", [True, False], gate, storage)
    deadline = time.monotonic() + 120
    while not (tmp_path / "held").exists():
        assert time.monotonic() < deadline, "sweep A's first trial never started"
        time.sleep(0.2)
    assert run_sweep("sweep-b", "b", [False], gate, storage) == ["b"]
    (tmp_path / "release").touch()
    assert ray.get(sweep_a, timeout=300) == ["a", "a"]
