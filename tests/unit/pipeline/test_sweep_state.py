"""A real Tune sweep's saved state, whole and cut short as a driver killed mid-write leaves it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from ray import tune

from orchestrator.pipeline.sweep_state import SET_ASIDE, resumable, unreadable_state_files


def trainable(config):
    tune.report({"score": config["x"]})


def sweep(storage: Path) -> tune.ResultGrid:
    return tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])},
                      run_config=tune.RunConfig(name="sweep", storage_path=str(storage), verbose=0)).fit()


@pytest.fixture(scope="module")
def saved(local_ray, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("storage")
    assert not sweep(storage).errors
    return storage / "sweep"


def state_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.json"))


def test_a_whole_state_resumes_and_is_left_as_it_is(saved):
    before = {p: p.read_bytes() for p in state_files(saved)}
    assert any(p.name.startswith("experiment_state-") for p in before)
    assert not unreadable_state_files(str(saved))
    assert resumable(str(saved), "the sweep")
    assert {p: p.read_bytes() for p in state_files(saved)} == before


def test_a_state_cut_short_is_set_aside_and_a_new_sweep_runs_under_the_same_name(saved, tmp_path, caplog):
    broken = tmp_path / "storage" / "sweep"
    broken.parent.mkdir()
    shutil.copytree(saved, broken)
    (state,) = broken.glob("experiment_state-*.json")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    assert tune.Tuner.can_restore(str(broken))  # what Tune asks: the file is there, so it would try to read it
    uri = f"{broken.as_uri()}?token=SENTINEL-tok"  # a storage URI as a user may give it

    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        assert not resumable(uri, "[target:t] sweep s")
    assert unreadable_state_files(uri) == []
    assert not state_files(broken) and (broken / (state.name + SET_ASIDE)).exists()  # kept, not deleted
    assert [p.name for p in broken.glob("*/result.json")]  # the trials' own files stay
    (record,) = caplog.records
    assert "[target:t] sweep s cannot resume" in record.message and state.name in record.message
    assert "SENTINEL-tok" not in record.message

    assert not sweep(broken.parent).errors  # the new sweep takes the name and saves a state that resumes
    assert resumable(str(broken), "the sweep")
