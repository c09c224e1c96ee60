"""The smoke pipeline end to end on a real local Ray, in both task types, checked through MLflow;
then the same store again: cached stages are reused, and nothing secret was ever logged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.pipeline import run_smoke
from helpers.specs import SMOKE as SMOKE_PATH
from mlflow.tracking import MlflowClient
from peft import PeftModel

from orchestrator.data import load_task
from orchestrator.method import models
from orchestrator.method.train import Encoder, evaluate
from orchestrator.spec import load_spec
from orchestrator.tracking import PARENT_TAG, STAGE_TAG, TASK_TAG

SMOKE = str(SMOKE_PATH)
# Fake secrets in the environment of the driver and (through Ray) every worker, set before Ray starts.
SECRETS = {"HF_TOKEN": "hf_SENTINEL0secret0token", "MLFLOW_TRACKING_PASSWORD": "SENTINEL-mlflow-password",
           "AWS_SECRET_ACCESS_KEY": "SENTINEL/aws/secret/key"}
os.environ.update(SECRETS)

VARIANTS = {
    "seq_cls": [],
    "seq2seq": ["--set", "model.name_or_path=tiny:t5", "--set", "model.task_type=SEQ_2_SEQ_LM"],
}


@pytest.fixture(scope="module")
def seq_cls_store(local_ray, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("seq_cls")
    rc, out = run_smoke(tmp_path)
    assert rc == 0, out
    return tmp_path, out


def runs_of(uri: str, name: str = "mpt-smoke"):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_smoke_pipeline_builds_the_run_tree(local_ray, seq_cls_store, tmp_path_factory, variant):
    if variant == "seq_cls":
        tmp_path, out = seq_cls_store
    else:
        tmp_path = tmp_path_factory.mktemp(variant)
        rc, out = run_smoke(tmp_path, *VARIANTS[variant])
        assert rc == 0, out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert "Best per target and method" in out and "mlflow ui --backend-store-uri" in out

    spec = load_spec(SMOKE, [v for v in VARIANTS[variant] if v != "--set"])
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == len(runs) - 1
    by_stage = {s: [r for r in children if r.data.tags[STAGE_TAG] == s] for s in ("source", "distill", "target")}
    assert sorted(r.data.tags[TASK_TAG] for r in by_stage["source"]) == sorted(spec.sources)
    assert len(by_stage["distill"]) == 1
    space = spec.target.search_space.root
    grid = len(space["rank"]["grid"]) * len(space["lr"]["grid"])
    assert len(by_stage["target"]) == grid + len(space["lr"]["grid"])  # + vanilla_pt
    assert {r.info.status for r in runs} == {"FINISHED"}
    # the compare view lines params up: one set of names per stage
    assert len({frozenset(r.data.params) for r in by_stage["target"]}) == 1
    assert {"lr", "rank", "num_virtual_tokens", "trainable_params"} <= set(by_stage["target"][0].data.params)

    source = by_stage["source"][0]
    losses = client.get_metric_history(source.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, spec.source.steps + 1))
    metric = f"eval_{spec.task(spec.targets[0]).metric}"
    assert client.get_metric_history(source.info.run_id, metric)
    assert [a.path for a in client.list_artifacts(source.info.run_id, "teacher")] == \
        [f"teacher/teacher_{source.data.tags[TASK_TAG]}.safetensors"]
    assert "shared_prompt.safetensors" in {a.path for a in client.list_artifacts(by_stage["distill"][0].info.run_id)}
    assert "report/results.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}

    # the best MPT trial's adapter, reloaded as a user would, scores its logged metric again
    (best,) = [r for r in by_stage["target"] if r.data.tags.get("mpt.best") and r.data.params["method"] == "mpt"]
    adapter = client.download_artifacts(best.info.run_id, "best_adapter", str(tmp_path / "dl"))
    data = load_task(spec.task(spec.targets[0]), spec.seed)
    model_dir = models.resolve_model_dir(spec.model)
    base = models.load_base_model(model_dir, spec.model.task_type, data.num_labels, spec.seed)
    model = PeftModel.from_pretrained(base, adapter)
    encoder = Encoder(models.load_tokenizer(model_dir), spec.model.task_type, spec.model.max_length,
                      spec.model.max_target_length)
    with torch.no_grad():
        again = evaluate(model, data, "validation", encoder, task_id=0)[metric]
    logged = client.get_metric_history(best.info.run_id, metric)
    assert again == pytest.approx(logged[-1].value)
    assert client.get_metric_history(best.info.run_id, "test_" + metric.removeprefix("eval_"))


@pytest.mark.slow
def test_nothing_secret_is_logged(seq_cls_store, tmp_path):
    store, _ = seq_cls_store
    client, runs = runs_of(f"sqlite:///{store}/mlflow.db")
    texts = []
    for run in runs:
        texts += [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
        local = client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id))
        texts += [p.read_bytes().decode("latin-1") for p in Path(local).rglob("*") if p.is_file()]
    assert len(texts) > 100  # params, tags and artifact files were all read
    for secret in SECRETS.values():
        assert not any(secret in text for text in texts), f"{secret} leaked"


@pytest.mark.slow
def test_a_second_run_reuses_every_finished_stage(seq_cls_store):
    store, _ = seq_cls_store
    uri = f"sqlite:///{store}/mlflow.db"
    _, before = runs_of(uri)
    rc, out = run_smoke(store)
    assert rc == 0, out
    assert "reused 4 stage(s) from earlier runs: distill, source:nli, source:sentiment, target:review_polarity" in out
    _, after = runs_of(uri)
    new = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    assert len(new) == 1 and PARENT_TAG not in new[0].data.tags and new[0].info.status == "FINISHED"
    assert "Best per target and method" in out


@pytest.mark.slow
def test_changing_a_target_search_space_retrains_only_that_target(seq_cls_store):
    store, _ = seq_cls_store
    uri = f"sqlite:///{store}/mlflow.db"
    _, before = runs_of(uri)
    rc, out = run_smoke(store, "--set", "target.search_space={rank: {grid: [1]}, lr: {grid: [0.1]}}")
    assert rc == 0, out
    assert "reused 3 stage(s) from earlier runs: distill, source:nli, source:sentiment" in out
    _, after = runs_of(uri)
    new = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    stages = sorted(r.data.tags.get(STAGE_TAG, "parent") for r in new)
    assert stages == ["parent", "target", "target"]  # one MPT trial + one vanilla_pt baseline
