"""A spec file to a spec (orchestrator/spec/loading.py): YAML read safely, ``--set`` overrides, and
every problem (unknown keys, wrong types, task roles that do not add up) collected into one
SpecError, whatever the input."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.spec.schema import SpecError
from orchestrator.spec.loading import apply_overrides, load_spec, parse_spec


def test_unknown_key_names_the_nearest_valid_one(errors_of, with_):
    (issue,) = errors_of(with_(distill__temprature=2.0))
    assert issue.field == "distill.temprature" and "temperature" in issue.fix


def test_wrong_types_and_missing_fields_are_all_reported_at_once(errors_of, minimal_spec):
    raw = copy.deepcopy(minimal_spec)
    del raw["name"]
    raw["seed"] = "zero"
    raw["source"] = {"steps": "many"}
    fields = {i.field for i in errors_of(raw)}
    assert {"name", "seed", "source.steps"} <= fields


def test_duplicate_task_names(errors_of, with_):
    raw = with_(tasks=[{"name": "sentiment"}, {"name": "sentiment"}, {"name": "review_polarity"}])
    assert any(i.field == "tasks" and "duplicate" in i.message for i in errors_of(raw))


def test_target_that_is_a_source_needs_explicit_permission(errors_of, with_):
    raw = with_(targets=["sentiment"])
    (issue,) = errors_of(raw)
    assert issue.field == "targets" and "leak" in issue.message and "allow_source_target_overlap" in issue.fix
    raw["allow_source_target_overlap"] = True
    assert parse_spec(raw).targets == ["sentiment"]


def test_unknown_role_names_suggest_the_task(errors_of, with_):
    (issue,) = errors_of(with_(sources=["sentimnt"]))
    assert issue.field == "sources" and "sentiment" in issue.fix


def test_malformed_yaml_gives_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntasks: [a, b\nsources: [a]\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "malformed YAML at line" in str(info.value)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(path)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_overrides_set_nested_values_and_list_items(minimal_spec):
    raw = apply_overrides(copy.deepcopy(minimal_spec), ["distill.rank=3", "tasks.1.max_train_examples=50",
                                                   "target.search_space={rank: {grid: [1]}, lr: 0.1}"])
    spec = parse_spec(raw)
    assert spec.distill.rank == 3 and spec.tasks[1].max_train_examples == 50
    assert spec.target.search_space.root == {"rank": {"grid": [1]}, "lr": 0.1}


@pytest.mark.parametrize("override", ["no-equals-sign", "tasks.9.name=x", "name.sub=1"])
def test_bad_overrides_are_spec_errors(override, minimal_spec):
    with pytest.raises(SpecError):
        apply_overrides(copy.deepcopy(minimal_spec), [override])


def test_seeds_from_the_command_line(tmp_path, minimal_spec):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(minimal_spec))
    assert load_spec(path, ["seeds=[0, 1]"]).seed_list() == [0, 1]


json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
keys = st.sampled_from(["name", "seed", "model", "prompt", "tasks", "sources", "targets", "source", "distill",
                        "target", "tracking", "storage_path", "cluster", "bogus", "allow_source_target_overlap"])
paths = st.lists(st.sampled_from(["name", "seed", "distill", "rank", "lambda", "target", "search_space", "lr",
                                  "tasks", "0", "1", "sources", "model", "task_type", "steps", "x"]),
                 min_size=1, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(keys, json_values, max_size=4),
       overrides=st.lists(st.tuples(paths, json_scalars.map(str)), max_size=3))
def test_any_spec_or_override_gives_a_spec_or_our_error(changes, overrides, minimal_spec):
    raw = {**copy.deepcopy(minimal_spec), **changes}
    try:
        parse_spec(apply_overrides(raw, [f"{p}={v}" for p, v in overrides]))
    except SpecError as err:
        assert err.issues and all(i.field and i.message for i in err.issues)
