"""The pipeline spec: loading, overrides, every validation error, the shipped pipelines, the CLI's
offline verbs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.spec.schema import SpecError
from orchestrator.spec.loading import apply_overrides, load_spec, parse_spec

PIPELINES = sorted(Path(__file__).resolve().parents[2].joinpath("pipelines").glob("*.yaml"))

MINIMAL = {
    "name": "t",
    "model": {"name_or_path": "tiny:bert"},
    "tasks": [{"name": "sentiment"}, {"name": "review_polarity"}],
    "sources": ["sentiment"],
    "targets": ["review_polarity"],
}


def errors_of(raw) -> list:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return info.value.issues


def with_(**changes):
    raw = copy.deepcopy(MINIMAL)
    for path, value in changes.items():
        node = raw
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


def test_minimal_spec_fills_defaults():
    spec = parse_spec(copy.deepcopy(MINIMAL))
    assert spec.model.task_type == "SEQ_CLS" and spec.distill.rank == 1
    assert spec.tracking_uri().startswith("sqlite:////") and spec.experiment_name() == "t"


def test_unknown_key_names_the_nearest_valid_one():
    (issue,) = errors_of(with_(distill__temprature=2.0))
    assert issue.field == "distill.temprature" and "temperature" in issue.fix


def test_wrong_types_and_missing_fields_are_all_reported_at_once():
    raw = copy.deepcopy(MINIMAL)
    del raw["name"]
    raw["seed"] = "zero"
    raw["source"] = {"steps": "many"}
    fields = {i.field for i in errors_of(raw)}
    assert {"name", "seed", "source.steps"} <= fields


@pytest.mark.parametrize("path,value", [
    ("distill__rank", 0), ("prompt__num_virtual_tokens", -3), ("model__max_length", 0),
    ("source__lr", 0), ("distill__lr", -0.1), ("target__steps", 0), ("distill__temperature", 0),
])
def test_non_positive_numbers_are_rejected(path, value):
    (issue,) = errors_of(with_(**{path: value}))
    assert issue.field == path.replace("__", ".") and issue.value == value and ">" in issue.fix


@pytest.mark.parametrize("stage", ["source", "distill", "target"])
@pytest.mark.parametrize("settings", [
    {"optimizer": "adafactor", "schedule": "cosine", "warmup_ratio": 0.0, "dropout": "off"},
    {"optimizer": "adamw", "schedule": "constant", "warmup_ratio": 0.5, "dropout": 0.0},
    {"optimizer": "adamw", "schedule": "linear", "warmup_ratio": 0.1, "dropout": 0.3},
])
def test_every_stage_takes_the_optimisation_settings(stage, settings):
    spec = parse_spec(with_(**{f"{stage}__{k}": v for k, v in settings.items()}))
    assert getattr(spec, stage).optimization() == settings


@pytest.mark.parametrize("key,value,needle", [
    ("optimizer", "sgd", "'adamw' or 'adafactor'"), ("schedule", "cos", "'constant', 'linear' or 'cosine'"),
    ("warmup_ratio", 1.0, "< 1"), ("warmup_ratio", -0.1, ">= 0"), ("warmup_ratio", "some", "float"),
    ("dropout", 1.0, "[0, 1)"), ("dropout", -0.1, "[0, 1)"), ("dropout", "none", "'on', 'off'"),
    ("dropout", True, "'on', 'off'"), ("dropout", "0.1", "[0, 1)"),
])
def test_bad_optimisation_settings_name_the_field_and_the_valid_values(key, value, needle):
    (issue,) = errors_of(with_(**{f"distill__{key}": value}))
    assert issue.field == f"distill.{key}" and issue.value == value and needle in str(issue), str(issue)


@pytest.mark.parametrize("space,needle", [
    ({}, "empty"),
    ({"rank": {"grid": [0]}, "lr": 0.1}, "positive integer"),
    ({"rank": 1, "lr": {"grid": [-1]}}, "must be > 0"),
    ({"rank": 1, "lr": {"loguniform": [0.3, 0.1]}}, "low < high"),
    ({"rank": 1, "lr": [0.1, 0.3]}, "ambiguous"),
    ({"rnak": 1}, "did you mean 'rank'"),
    ({"rank": {"grid": []}}, "non-empty"),
])
def test_search_space_errors(space, needle):
    issues = errors_of(with_(target__search_space=space))
    assert any(i.field == "target.search_space" and needle in i.message for i in issues), issues


def test_duplicate_task_names():
    raw = with_(tasks=[{"name": "sentiment"}, {"name": "sentiment"}, {"name": "review_polarity"}])
    assert any(i.field == "tasks" and "duplicate" in i.message for i in errors_of(raw))


def test_target_that_is_a_source_needs_explicit_permission():
    raw = with_(targets=["sentiment"])
    (issue,) = errors_of(raw)
    assert issue.field == "targets" and "leak" in issue.message and "allow_source_target_overlap" in issue.fix
    raw["allow_source_target_overlap"] = True
    assert parse_spec(raw).targets == ["sentiment"]


def test_unknown_role_names_suggest_the_task():
    (issue,) = errors_of(with_(sources=["sentimnt"]))
    assert issue.field == "sources" and "sentiment" in issue.fix


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "", ".hidden", "x" * 65])
def test_task_names_cannot_escape_their_folder(name):
    raw = with_(tasks=[{"name": name}, {"name": "sentiment"}, {"name": "review_polarity"}])
    assert any(i.field == "tasks.0.name" for i in errors_of(raw))


def test_multi_worker_target_trials_are_rejected():
    (issue,) = errors_of(with_(target__resources={"num_workers": 2}))
    assert issue.field == "target.resources" and "one worker" in issue.message


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


def test_overrides_set_nested_values_and_list_items():
    raw = apply_overrides(copy.deepcopy(MINIMAL), ["distill.rank=3", "tasks.1.max_train_examples=50",
                                                   "target.search_space={rank: {grid: [1]}, lr: 0.1}"])
    spec = parse_spec(raw)
    assert spec.distill.rank == 3 and spec.tasks[1].max_train_examples == 50
    assert spec.target.search_space.root == {"rank": {"grid": [1]}, "lr": 0.1}


@pytest.mark.parametrize("override", ["no-equals-sign", "tasks.9.name=x", "name.sub=1"])
def test_bad_overrides_are_spec_errors(override):
    with pytest.raises(SpecError):
        apply_overrides(copy.deepcopy(MINIMAL), [override])


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_pipeline_validates_and_plans(path, capsys):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run") or first.startswith("# Run (on a cluster"), "spec must start with its command"
    assert main(["validate", str(path)]) == 0
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1. sources" in out and "3. targets" in out


def test_validate_exits_non_zero_listing_every_problem(tmp_path, capsys):
    raw = with_(distill__rank=0, source__lr=-1)
    raw["tasks"][0]["kind"] = "local"
    raw["tasks"][0]["dataset"] = str(tmp_path / "missing")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "distill.rank" in err and "source.lr" in err
    raw["distill"]["rank"], raw["source"]["lr"] = 1, 0.1
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == EXIT_BAD_INPUT  # now the data problem shows
    assert "tasks.sentiment" in capsys.readouterr().err


def test_run_refuses_a_missing_model_before_any_compute(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(with_(model__name_or_path=str(tmp_path / "no-model"))))
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == EXIT_BAD_INPUT
    assert "model.name_or_path" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


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
def test_any_spec_or_override_gives_a_spec_or_our_error(changes, overrides):
    raw = {**copy.deepcopy(MINIMAL), **changes}
    try:
        parse_spec(apply_overrides(raw, [f"{p}={v}" for p, v in overrides]))
    except SpecError as err:
        assert err.issues and all(i.field and i.message for i in err.issues)


def test_seed_means_one_seed_and_seeds_lead_with_their_first():
    assert parse_spec(with_(seed=7)).seed_list() == [7]
    spec = parse_spec(with_(seed=7, seeds=[3, 4, 5]))
    assert spec.seed_list() == [3, 4, 5] and spec.seed == 3  # data, sources and distillation use the first


def test_seeds_from_the_command_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert load_spec(path, ["seeds=[0, 1]"]).seed_list() == [0, 1]


@pytest.mark.parametrize("seeds, needle", [([], "is empty"), ([1, 1], "lists a seed twice"), (["a"], "int")])
def test_bad_seeds_are_named(seeds, needle):
    (issue,) = [i for i in errors_of(with_(seeds=seeds)) if i.field.startswith("seeds")]
    assert needle in str(issue)


@pytest.mark.parametrize("shots, needle", [([], "is empty"), ([0], "> 0"), ([4, 4], "twice"), (["all"], "full")])
def test_bad_budgets_are_named(shots, needle):
    issues = errors_of(with_(target__shots=shots))
    assert all(i.field.startswith("target.shots") for i in issues) and needle in " ".join(map(str, issues))


def test_ablations_are_baselines():
    spec = parse_spec(with_(target__baselines=["no_distill", "joint_multitask", "single_source"]))
    assert spec.target.baseline_methods(["sentiment"]) == ["no_distill", "joint_multitask", "single_source:sentiment"]
