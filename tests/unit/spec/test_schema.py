"""The spec's own validation (orchestrator/spec/schema.py): the defaults, each field's bounds and
allowed values, search spaces, task names, target resources, seeds, budgets and baselines. Reading
files, overrides and how the issues are collected are tests/unit/spec/test_loading.py."""

from __future__ import annotations

import copy

import pytest

from orchestrator.spec.loading import parse_spec


def test_minimal_spec_fills_defaults(minimal_spec):
    spec = parse_spec(copy.deepcopy(minimal_spec))
    assert spec.model.task_type == "SEQ_CLS" and spec.distill.rank == 1
    assert spec.tracking_uri().startswith("sqlite:////") and spec.experiment_name() == "t"


@pytest.mark.parametrize("path,value", [
    ("distill__rank", 0), ("prompt__num_virtual_tokens", -3), ("model__max_length", 0),
    ("source__lr", 0), ("distill__lr", -0.1), ("target__steps", 0), ("distill__temperature", 0),
])
def test_non_positive_numbers_are_rejected(path, value, errors_of, with_):
    (issue,) = errors_of(with_(**{path: value}))
    assert issue.field == path.replace("__", ".") and issue.value == value and ">" in issue.fix


@pytest.mark.parametrize("stage", ["source", "distill", "target"])
@pytest.mark.parametrize("settings", [
    {"optimizer": "adafactor", "schedule": "cosine", "warmup_ratio": 0.0, "dropout": "off"},
    {"optimizer": "adamw", "schedule": "constant", "warmup_ratio": 0.5, "dropout": 0.0},
    {"optimizer": "adamw", "schedule": "linear", "warmup_ratio": 0.1, "dropout": 0.3},
])
def test_every_stage_takes_the_optimisation_settings(stage, settings, with_):
    spec = parse_spec(with_(**{f"{stage}__{k}": v for k, v in settings.items()}))
    assert getattr(spec, stage).optimization() == settings


@pytest.mark.parametrize("key,value,needle", [
    ("optimizer", "sgd", "'adamw' or 'adafactor'"), ("schedule", "cos", "'constant', 'linear' or 'cosine'"),
    ("warmup_ratio", 1.0, "< 1"), ("warmup_ratio", -0.1, ">= 0"), ("warmup_ratio", "some", "float"),
    ("dropout", 1.0, "[0, 1)"), ("dropout", -0.1, "[0, 1)"), ("dropout", "none", "'on', 'off'"),
    ("dropout", True, "'on', 'off'"), ("dropout", "0.1", "[0, 1)"),
])
def test_bad_optimisation_settings_name_the_field_and_the_valid_values(key, value, needle, errors_of, with_):
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
def test_search_space_errors(space, needle, errors_of, with_):
    issues = errors_of(with_(target__search_space=space))
    assert any(i.field == "target.search_space" and needle in i.message for i in issues), issues


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "", ".hidden", "x" * 65])
def test_task_names_cannot_escape_their_folder(name, errors_of, with_):
    raw = with_(tasks=[{"name": name}, {"name": "sentiment"}, {"name": "review_polarity"}])
    assert any(i.field == "tasks.0.name" for i in errors_of(raw))


def test_multi_worker_target_trials_are_rejected(errors_of, with_):
    (issue,) = errors_of(with_(target__resources={"num_workers": 2}))
    assert issue.field == "target.resources" and "one worker" in issue.message


def test_seed_means_one_seed_and_seeds_lead_with_their_first(with_):
    assert parse_spec(with_(seed=7)).seed_list() == [7]
    spec = parse_spec(with_(seed=7, seeds=[3, 4, 5]))
    assert spec.seed_list() == [3, 4, 5] and spec.seed == 3  # data, sources and distillation use the first


@pytest.mark.parametrize("seeds, needle", [([], "is empty"), ([1, 1], "lists a seed twice"), (["a"], "int")])
def test_bad_seeds_are_named(seeds, needle, errors_of, with_):
    (issue,) = [i for i in errors_of(with_(seeds=seeds)) if i.field.startswith("seeds")]
    assert needle in str(issue)


@pytest.mark.parametrize("shots, needle", [([], "is empty"), ([0], "> 0"), ([4, 4], "twice"), (["all"], "full")])
def test_bad_budgets_are_named(shots, needle, errors_of, with_):
    issues = errors_of(with_(target__shots=shots))
    assert all(i.field.startswith("target.shots") for i in issues) and needle in " ".join(map(str, issues))


def test_ablations_are_baselines(with_):
    spec = parse_spec(with_(target__baselines=["no_distill", "joint_multitask", "single_source"]))
    assert spec.target.baseline_methods(["sentiment"]) == ["no_distill", "joint_multitask", "single_source:sentiment"]


def test_the_logged_spec_holds_no_credentials(with_):
    """What the parent run logs as its spec and params: no tracking section, and the storage URI and
    the cluster address without their credentials (their place kept, so the spec still reads)."""
    raw = with_(tracking__uri="http://mpt:SENTINEL-pw@127.0.0.1:5000",
                storage_path="s3://bucket/ray_results?token=SENTINEL-tok",
                cluster__address="ray://mpt:SENTINEL-ray@127.0.0.1:10001")
    dumped = parse_spec(raw).public_dump()
    assert "tracking" not in dumped and "SENTINEL" not in repr(dumped)
    assert dumped["storage_path"] == "s3://bucket/ray_results?token=***"
    assert dumped["cluster"]["address"] == "ray://***@127.0.0.1:10001"
