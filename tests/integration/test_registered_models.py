"""Shipping the result, after one smoke run with two targets (one a pair task) and the baselines
registered: the champion loads with ``mlflow.pyfunc`` in a fresh process and scores exactly the
logged test metric; its version carries the run's tags; every run lists its datasets; the
``predict`` verb labels CSV and JSONL rows on Ray Data; ``mlflow models serve`` answers with the
same labels; the registration works against an ``mlflow server``; and a worse second run leaves the
champion where it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from helpers.mlflow_server import mlflow_server, start_model_server, stop_mlflow_server
from helpers.processes import NO_PHONE_HOME
from helpers.sockets import listening_sockets, non_loopback
from helpers.pipeline import run_cli, run_smoke
from helpers.specs import SMOKE
from mlflow.tracking import MlflowClient

from orchestrator.data import load_task
from orchestrator.serve.registry import CHAMPION, champion, register
from orchestrator.serve.pyfunc import PREDICTION, download
from orchestrator.spec.loading import load_spec
from orchestrator.tracking import (FINGERPRINT_TAG, METHOD_TAG, METRIC_TAG, PARENT_TAG, PIPELINE_TAG, STAGE_TAG, TASK_TAG,
                                   TEST_TAG, VALIDATION_TAG)

TARGETS = ["review_polarity", "topic_match"]
# The second run: review_polarity again, one MPT trial (rank 1), no baselines: a second version.
SECOND = ["--rerun", "target", "--set", "targets=[review_polarity]", "--set", "target.baselines=[]",
         "--set", "target.search_space={rank: {grid: [1]}, lr: {grid: [0.3]}}"]

# Loads the champion in a process that has never seen the pipeline, scores each target's test split.
FRESH = """
import json, sys
import mlflow, pandas as pd
from orchestrator.data import load_task
from orchestrator.method.metrics import compute_metric
from orchestrator.spec.loading import load_spec
spec = load_spec(sys.argv[1])
out = {}
for task in spec.targets:
    model = mlflow.pyfunc.load_model(f"models:/mpt-smoke-{task}@champion")
    card = model.metadata.metadata["mpt_orchestrator"]
    data = load_task(spec.task(task), spec.seed)
    frame = pd.DataFrame([dict(zip(card["text_columns"], ex.texts)) for ex in data.test])
    labels = model.predict(frame)["prediction"].tolist()
    preds = [data.label_names.index(label) for label in labels]
    out[task] = {"labels": labels, "value": compute_metric(data.metric, preds, [ex.label for ex in data.test])}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def smoke(local_ray, tmp_path_factory):
    """One pipeline: the smoke spec with both embedded targets and registry.baselines on."""
    tmp = tmp_path_factory.mktemp("registry")
    raw = yaml.safe_load(SMOKE.read_text())
    raw["tasks"].append({"name": "topic_match", "kind": "embedded", "max_train_examples": 200, "max_eval_examples": 40})
    raw["targets"] = TARGETS
    raw["registry"] = {"baselines": True}
    spec = tmp / "two_targets.yaml"
    spec.write_text(yaml.safe_dump(raw))
    rc, out = run_smoke(tmp, spec=spec)
    assert rc == 0, out
    return tmp, f"sqlite:///{tmp}/mlflow.db", spec, out


@pytest.fixture(scope="module")
def fresh(smoke):
    """The champions' test labels and metric, computed in a fresh interpreter."""
    tmp, uri, spec, _ = smoke
    env = {**os.environ, **NO_PHONE_HOME, "MLFLOW_TRACKING_URI": uri}
    res = subprocess.run([sys.executable, "-c", FRESH, str(spec)], cwd=tmp, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def best_trial(client: MlflowClient, uri_runs, task: str, method: str = "mpt"):
    (run,) = [r for r in uri_runs if r.data.tags.get("mpt.best") and r.data.tags.get(TASK_TAG) == task
              and r.data.tags.get(METHOD_TAG) == method]
    return run


def all_runs(uri: str):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name("mpt-smoke").experiment_id], max_results=1000)


@pytest.mark.slow
def test_the_champion_in_a_fresh_process_scores_the_logged_test_metric(smoke, fresh):
    _, uri, _, _ = smoke
    client, runs = all_runs(uri)
    for task in TARGETS:
        best = best_trial(client, runs, task)
        logged = best.data.metrics["test_accuracy"]
        assert fresh[task]["value"] == logged  # exactly: the same predictions, not merely close
        version = champion(client, f"mpt-smoke-{task}")
        assert float(version.tags[TEST_TAG]) == logged and len(fresh[task]["labels"]) == 40


@pytest.mark.slow
def test_each_version_carries_the_run_that_made_it(smoke):
    _, uri, spec_path, out = smoke
    client, runs = all_runs(uri)
    spec = load_spec(spec_path)
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert "Registered models" in out and "models:/mpt-smoke-topic_match/1" in out
    for task in TARGETS:
        best = best_trial(client, runs, task)
        (found,) = client.search_model_versions(f"name = 'mpt-smoke-{task}'")
        version = client.get_model_version(found.name, found.version)  # a search leaves out the aliases
        assert version.run_id == best.info.run_id and version.aliases == [CHAMPION]
        assert version.tags[PIPELINE_TAG] == parent.data.tags[PIPELINE_TAG]
        assert version.tags[METHOD_TAG] == "mpt" and version.tags[METRIC_TAG] == "accuracy"
        assert float(version.tags[VALIDATION_TAG]) == best.data.metrics["eval_accuracy"]
        assert version.tags[FINGERPRINT_TAG] == best.data.tags[FINGERPRINT_TAG]
        assert {a.path for a in client.list_artifacts(best.info.run_id)} >= {"model", "best_adapter"}
        # registry.baselines: the baseline's best trial under a name of its own
        (baseline,) = client.search_model_versions(f"name = 'mpt-smoke-{task}-vanilla_pt'")
        assert baseline.run_id == best_trial(client, runs, task, "vanilla_pt").info.run_id
    assert len(spec.targets) == 2


@pytest.mark.slow
def test_every_run_lists_the_datasets_it_used(smoke):
    _, uri, _, _ = smoke
    _, runs = all_runs(uri)

    def inputs(run) -> set[tuple[str, str, int]]:
        out = set()
        for item in run.inputs.dataset_inputs:
            context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
            assert len(item.dataset.digest) == 16 and json.loads(item.dataset.source)["seed"] == 0
            out.add((item.dataset.name, context, json.loads(item.dataset.profile)["num_rows"]))
        return out

    by_stage = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get(STAGE_TAG), []).append(run)
    for run in by_stage["source"]:
        task = run.data.tags[TASK_TAG]
        assert inputs(run) == {(task, "train", 200), (task, "validation", 40)}
    (distill,) = by_stage["distill"]
    assert inputs(distill) == {(t, s, n) for t in ("sentiment", "nli") for s, n in (("train", 200), ("validation", 40))}
    for run in by_stage["target"]:
        task = run.data.tags[TASK_TAG]
        expected = {(task, "train", 200), (task, "validation", 40)}
        assert inputs(run) == (expected | {(task, "test", 40)} if run.data.tags.get("mpt.best") else expected)


@pytest.mark.slow
def test_predict_labels_csv_and_jsonl_rows_on_ray_data(smoke, fresh, tmp_path):
    tmp, uri, spec_path, _ = smoke
    spec = load_spec(spec_path)
    single = load_task(spec.task("review_polarity"), spec.seed)
    rows = [{"id": i, "text": ex.texts[0], "label": single.label_names[ex.label]} for i, ex in enumerate(single.test)]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    rc, out = run_cli(tmp, ["predict", "models:/mpt-smoke-review_polarity@champion", "--input",
                            str(tmp_path / "reviews.csv"), "--out", str(tmp_path / "preds.csv"), "--tracking-uri", uri])
    assert rc == 0, out
    got = pd.read_csv(tmp_path / "preds.csv")
    assert got[["id", "text", "label"]].equals(pd.DataFrame(rows))  # every input row, in order, kept whole
    assert got[PREDICTION].tolist() == fresh["review_polarity"]["labels"]
    assert "[predict] 40 rows ->" in out

    pair = load_task(spec.task("topic_match"), spec.seed)
    (tmp_path / "pairs").mkdir()
    for part, chunk in enumerate((pair.test[:25], pair.test[25:])):  # a directory of two files
        (tmp_path / "pairs" / f"part{part}.jsonl").write_text(
            "".join(json.dumps({"text": ex.texts[0], "text_pair": ex.texts[1]}) + "\n" for ex in chunk))
    rc, out = run_cli(tmp, ["predict", "models:/mpt-smoke-topic_match@champion", "--input", str(tmp_path / "pairs"),
                            "--out", str(tmp_path / "pairs.jsonl"), "--tracking-uri", uri, "--probabilities",
                            "--batch-size", "16"])
    assert rc == 0, out
    got = pd.read_json(tmp_path / "pairs.jsonl", lines=True)
    assert got["text_pair"].tolist() == [ex.texts[1] for ex in pair.test]
    assert got[PREDICTION].tolist() == fresh["topic_match"]["labels"]
    assert (got[["prob_no", "prob_yes"]].sum(axis=1) - 1).abs().max() < 1e-5


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_same_labels(smoke, fresh, tmp_path):
    tmp, uri, spec_path, _ = smoke
    spec = load_spec(spec_path)
    data = load_task(spec.task("topic_match"), spec.seed)
    url, proc = start_model_server("models:/mpt-smoke-topic_match@champion", uri, tmp_path)
    try:
        listeners = listening_sockets([proc.pid])
        assert listeners and non_loopback(listeners) == []
        body = {"dataframe_split": {"columns": ["text", "text_pair"], "data": [list(ex.texts) for ex in data.test]}}
        request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        assert stop_mlflow_server(proc) == []
    assert [p[PREDICTION] for p in answer["predictions"]] == fresh["topic_match"]["labels"]


@pytest.mark.slow
def test_registration_against_an_mlflow_server(smoke, tmp_path):
    """The champion's model logged and registered on a server (proxied artifacts), then loaded back."""
    _, uri, _, _ = smoke
    local = download("models:/mpt-smoke-review_polarity@champion", uri, str(tmp_path / "model"))
    frame = pd.DataFrame({"text": ["I expected a dull film, but it was wonderful.", "A dreadful meal."]})
    expected = mlflow.pyfunc.load_model(local).predict(frame)
    with mlflow_server(tmp_path / "server") as (server, _):
        client = MlflowClient(server)
        run = client.create_run(client.create_experiment("served"))
        version, moved, _ = register(server, run.info.run_id, "served-review_polarity", Path(local),
                                     {VALIDATION_TAG: "0.5", METRIC_TAG: "accuracy"})
        assert moved and str(version.version) == "1"
        path = download("models:/served-review_polarity@champion", server, str(tmp_path / "back"))
        assert mlflow.pyfunc.load_model(path).predict(frame).equals(expected)


@pytest.mark.slow
def test_a_second_run_moves_the_champion_only_on_a_strictly_better_validation(smoke):
    """End to end, whichever way the second run scores: the tiny model sits near chance, so which one
    is better depends on the recipe; tests/unit/serve/test_registry.py constructs both cases."""
    tmp, uri, spec, _ = smoke
    client = MlflowClient(uri)
    before = champion(client, "mpt-smoke-review_polarity")
    rc, out = run_smoke(tmp, *SECOND, spec=spec)
    assert rc == 0, out
    versions = {str(v.version): v for v in client.search_model_versions("name = 'mpt-smoke-review_polarity'")}
    assert sorted(versions) == ["1", "2"] and str(before.version) == "1"
    new, old = float(versions["2"].tags[VALIDATION_TAG]), float(before.tags[VALIDATION_TAG])
    assert str(champion(client, "mpt-smoke-review_polarity").version) == ("2" if new > old else "1")
