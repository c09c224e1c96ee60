"""orchestrator.serve.registry against a real SQLite MLflow store: versions and their tags, and the
``champion`` alias, which moves only to a strictly better validation value of the same metric."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.serve.registry import CHAMPION, champion, model_name, register, should_register
from orchestrator.spec.schema import RegistrySpec, SpecError
from orchestrator.tracking import METHOD_TAG, METRIC_TAG, VALIDATION_TAG
from orchestrator.spec.loading import parse_spec


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("reg", artifact_location=(tmp_path / "mlartifacts").as_uri())
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")  # the alias rule does not look inside the model
    return uri, client, experiment, model


def add_version(store, value: float, metric: str = "accuracy"):
    uri, client, experiment, model = store
    run = client.create_run(experiment)
    version, moved, why = register(uri, run.info.run_id, "reg-task", model,
                                   {VALIDATION_TAG: repr(value), METRIC_TAG: metric, METHOD_TAG: "mpt"})
    return version, moved, why


def test_the_champion_moves_only_to_a_strictly_better_validation_value(store):
    _, client, _, _ = store
    assert champion(client, "reg-task") is None
    first, moved, why = add_version(store, 0.6)
    assert moved and why == "first version"
    assert champion(client, "reg-task").version == first.version

    worse, moved, why = add_version(store, 0.55)
    assert not moved and "alias left" in why
    tie, moved, _ = add_version(store, 0.6)
    assert not moved
    assert champion(client, "reg-task").version == first.version  # neither a worse run nor a tie takes it

    better, moved, _ = add_version(store, 0.65)
    assert moved and champion(client, "reg-task").version == better.version
    assert [int(v.version) for v in (first, worse, tie, better)] == [1, 2, 3, 4]
    # every version is logged with its tags and points at the run's model artifact
    stored = client.get_model_version("reg-task", worse.version)
    assert stored.tags[VALIDATION_TAG] == "0.55" and stored.source.endswith("/model")
    assert {a.path for a in client.list_artifacts(stored.run_id)} == {"model"}


def test_another_metric_is_not_comparable(store):
    _, client, _, _ = store
    first, _, _ = add_version(store, 0.3, metric="f1")
    _, moved, why = add_version(store, 0.9, metric="accuracy")
    assert not moved and "not comparable" in why
    assert client.get_model_version_by_alias("reg-task", CHAMPION).version == first.version


def test_names_from_the_templates():
    registry = RegistrySpec()
    assert model_name(registry, "mpt-demo", "review_polarity", "mpt") == "mpt-demo-review_polarity"
    assert model_name(registry, "mpt-demo", "topic_match", "single_source:nli") == "mpt-demo-topic_match-single_source"
    assert should_register(registry, "mpt") and not should_register(registry, "vanilla_pt")
    assert should_register(RegistrySpec(baselines=True), "vanilla_pt")
    assert not should_register(RegistrySpec(enabled=False), "mpt")


@pytest.mark.parametrize("field, template, needle", [
    ("name", "{experiment}-{target}", "unknown placeholder"),
    ("name", "{experiment}/{task}", "letters, digits"),
    ("baseline_name", "{experiment}-{task}", "must contain {method}"),
    ("name", "{experiment", "not a valid name template"),
])
def test_bad_name_templates_are_spec_errors(field, template, needle):
    raw = {"name": "x", "tasks": [{"name": "a"}, {"name": "b"}], "sources": ["a"], "targets": ["b"],
           "registry": {field: template}}
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    (issue,) = err.value.issues
    assert issue.field == f"registry.{field}" and needle in issue.message
