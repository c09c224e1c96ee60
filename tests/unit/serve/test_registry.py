"""orchestrator.serve.registry against a real SQLite MLflow store: versions and their tags, the
``champion`` alias, which moves only to a strictly better validation value of the same metric, and a
hub base model pinned in the card to the commit it trained from."""

from __future__ import annotations

import shutil

import mlflow
import pandas as pd
import pytest
from helpers.models import encoder, small
from helpers.served import trial_dir
from helpers.specs import SMOKE
from mlflow.tracking import MlflowClient

from orchestrator.method.targets import load_trial_model, task_id_of
from orchestrator.method.train import predict
from orchestrator.pipeline.cache import fingerprints
from orchestrator.pipeline.stages.context import PipelineContext
from orchestrator.serve.pyfunc import PREDICTION, card_of_metadata, download
from orchestrator.serve.registry import CHAMPION, champion, model_name, register, register_best, should_register
from orchestrator.spec.loading import load_spec, parse_spec
from orchestrator.spec.schema import RegistrySpec, SpecError
from orchestrator.tracking import METHOD_TAG, METRIC_TAG, VALIDATION_TAG, TrackingContext


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


def test_a_hub_base_model_is_pinned_to_the_commit_it_trained_from(tmp_path, monkeypatch, bert_dir):
    """A best trial on a hub model registers a card holding the commit the local Hugging Face cache had
    (``hub_revision``); when the hub moves on (``refs/main`` names another commit, here one this machine
    never fetched), the registered model still loads that commit, offline, and predicts as it did."""
    from huggingface_hub import constants

    commit, moved = "a" * 40, "b" * 40
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--mpt-test--tiny-bert"
    shutil.copytree(bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("mpt-smoke", artifact_location=(tmp_path / "mlartifacts").as_uri())
    spec = load_spec(SMOKE, ["model.name_or_path=mpt-test/tiny-bert"])
    ctx = PipelineContext(spec, spec.model.name_or_path, TrackingContext(uri, experiment, "parent", "tag"),
                          str(tmp_path), "tag", fingerprints(spec))
    data = small("review_polarity")
    trial = trial_dir(tmp_path / "trial", bert_dir, data)
    version = register_best(ctx, "review_polarity", "mpt", data, str(trial), client.create_run(experiment).info.run_id,
                            {"eval_accuracy": 0.5, "test_accuracy": 0.5})
    model_dir = download(version, uri, str(tmp_path / "download"))
    assert card_of_metadata(mlflow.models.get_model_info(model_dir).metadata).revision == commit

    (repo / "refs" / "main").write_text(moved)
    texts = [ex.texts[0] for ex in data.test]
    got = mlflow.pyfunc.load_model(model_dir).predict(pd.DataFrame({"text": texts}))
    reference = predict(load_trial_model("mpt", bert_dir, "SEQ_CLS", data.num_labels, 0, str(trial)), data.test,
                        encoder(bert_dir), data.label_words, task_id_of("mpt"))
    assert got[PREDICTION].tolist() == [data.label_names[i] for i in reference]
