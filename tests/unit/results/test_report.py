"""The ``report`` verb against a real SQLite MLflow store laid out as the pipeline logs it: two
finished pipeline runs that differ in ``distill.lambda``, MPT and vanilla PT over two seeds with
constructed test predictions, so the verdicts are known; runs that differ only in their seeds
(replicas), whose verdicts agree or contradict; one seed; and each bad input exits 2 creating nothing."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.results.report import build_report, log_to_parent, metric_name
from orchestrator.cli import EXIT_BAD_INPUT, main

TASK = "review_polarity"
LABELS = [0, 1] * 20
WRONG = [1 - y for y in LABELS]
BUDGET = 50


def parent(client, experiment_id, tag, lambda_, status="FINISHED", seeds="[0, 1]", seed_scope="pipeline"):
    run_id = client.create_run(experiment_id, run_name=f"demo-{tag}").info.run_id
    params = {"target.steps": str(BUDGET), "distill.lambda": lambda_, "seeds": seeds, "seed_scope": seed_scope,
              "model.name_or_path": "tiny:bert"}
    client.log_batch(run_id, metrics=[Metric("wall_time_s", 120.0, 0, 0)],
                     params=[Param(k, v) for k, v in params.items()], tags=[RunTag("mpt.pipeline_run", tag)])
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def trial(client, experiment_id, parent_id, method, seed, lr, preds=None, stopped_at=None):
    """A target trial; ``preds`` makes it a chosen one, with test metric and predictions artifact."""
    run_id = client.create_run(experiment_id).info.run_id
    tags = {"mlflow.parentRunId": parent_id, "mpt.stage": "target", "mpt.task": TASK, "mpt.method": method}
    if preds is not None:
        tags["mpt.best"] = "true"
    if stopped_at:
        tags["mpt.stopped_by_scheduler"] = "true"
    params = {"method": method, "seed": str(seed), "shots": "full", "rank": "1" if method == "mpt" else "",
              "lr": str(lr), "head_lr": "0.001", "batch_size": "8", "weight_decay": "0.0", "steps": str(BUDGET),
              "task": TASK, "trainable_params": "1000"}
    last = stopped_at or BUDGET
    metrics = [Metric("train_loss", 1.0 / s, 0, s) for s in range(1, last + 1)]
    metrics += [Metric("eval_accuracy", 0.5 + s / 200, 0, s) for s in range(10, last + 1, 10)]
    if preds is not None:
        accuracy = sum(p == y for p, y in zip(preds, LABELS)) / len(LABELS)
        metrics.append(Metric("test_accuracy", accuracy, 0, BUDGET))
        client.log_text(run_id, json.dumps({"metric": "accuracy", "labels": LABELS, "predictions": preds}),
                        "predictions/test.json")
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Run "a" (lambda 0.5): MPT right on every example, vanilla PT wrong on every one; run "b"
    (lambda 1.0): both predict the same. MPT also has a config ASHA stopped at step 20 per seed."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("mpt-demo", artifact_location=(tmp / "mlartifacts").as_uri())
    ids = {}
    for tag, lambda_, vanilla in (("a", "0.5", WRONG), ("b", "1.0", LABELS)):
        ids[tag] = parent(client, experiment_id, tag, lambda_)
        for seed in (0, 1):
            trial(client, experiment_id, ids[tag], "mpt", seed, 0.3, preds=LABELS)
            trial(client, experiment_id, ids[tag], "mpt", seed, 0.03, stopped_at=20)
            trial(client, experiment_id, ids[tag], "vanilla_pt", seed, 0.3, preds=vanilla)
    ids["stage"] = client.create_run(experiment_id, tags={"mlflow.parentRunId": ids["a"], "mpt.stage": "source",
                                                          "mpt.pipeline_run": "a"}).info.run_id
    ids["running"] = parent(client, experiment_id, "c", "0.5", status="RUNNING")
    ids["foreign"] = parent(client, client.create_experiment("other"), "d", "0.5")
    parent(client, client.create_experiment("empty"), "e", "0.5", status="FAILED")
    replicas = client.create_experiment("mpt-replicas", artifact_location=(tmp / "replicas").as_uri())
    # MPT right everywhere (better) at seeds 0-1 and 4-5, wrong everywhere (worse) at 2-3; r3 differs in its
    # seed_scope too, so it replicates none of them; "one" ran a single seed
    for tag, seeds, mpt, scope in (("r1", (0, 1), LABELS, "pipeline"), ("r2", (2, 3), WRONG, "pipeline"),
                                   ("r4", (4, 5), LABELS, "pipeline"), ("r3", (0, 1), LABELS, "targets"),
                                   ("one", (0,), LABELS, "pipeline")):
        ids[tag] = parent(client, replicas, tag, "0.5", seeds=str(list(seeds)), seed_scope=scope)
        for seed in seeds:
            trial(client, replicas, ids[tag], "mpt", seed, 0.3, preds=mpt)
            trial(client, replicas, ids[tag], "vanilla_pt", seed, 0.3, preds=WRONG if mpt is LABELS else LABELS)
    return tmp, uri, ids


def report(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["report", *argv])
    return rc, out.getvalue(), err.getvalue()


def test_report_of_two_runs_writes_tables_plots_and_verdicts(store, tmp_path):
    _, uri, ids = store
    rc, out, err = report("mpt-demo", "--runs", ids["a"], ids["b"], "--tracking-uri", uri, "--out", str(tmp_path / "r"))
    assert rc == 0, err
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"summary.md", "results.csv", "comparison.csv", "asha_steps.png", f"bars_{TASK}.png",
            f"curves_{TASK}.png"} <= files
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "distill.lambda=0.5" in summary and "distill.lambda=1.0" in summary and "target.steps" not in summary
    comparison = pd.read_csv(tmp_path / "r" / "comparison.csv").set_index("pipeline_run")
    assert comparison.loc["a", "verdict"] == "better" and comparison.loc["a", "diff"] == 1.0
    assert comparison.loc["b", "verdict"] == "no detectable difference"
    assert (comparison.loc["b", ["diff", "low", "high"]] == 0).all()
    assert "better" in out and "no detectable difference" in out
    results = pd.read_csv(tmp_path / "r" / "results.csv")
    mpt = results[(results["pipeline_run"] == "a") & (results["method"] == "mpt")].iloc[0]
    assert (mpt["n_seeds"], mpt["mean"], mpt["sd"], mpt["lr"], mpt["steps_trained"]) == (2, 1.0, 0.0, 0.3, 2 * BUDGET)


def test_without_runs_the_latest_finished_pipeline_run_into_the_default_dir(store, monkeypatch):
    tmp, _, _ = store
    monkeypatch.chdir(tmp)  # the default store is ./mlflow.db, the default output ./report-<experiment>
    rc, out, err = report("mpt-demo")
    assert rc == 0, err
    comparison = pd.read_csv(tmp / "report-mpt-demo" / "comparison.csv")
    assert list(comparison["pipeline_run"]) == ["b"]


def test_log_to_parent_adds_files_and_difference_metrics(store, tmp_path):
    _, uri, ids = store
    client = MlflowClient(uri)
    built = build_report(client, client.get_experiment_by_name("mpt-demo").experiment_id, [ids["a"]],
                                  tmp_path / "r")
    log_to_parent(built, ids["a"])
    metrics = client.get_run(ids["a"]).data.metrics
    assert metrics[f"diff_vanilla_pt_{TASK}"] == 1.0 and metrics[f"diff_low_vanilla_pt_{TASK}"] == 1.0
    assert metrics[f"diff_p_improvement_vanilla_pt_{TASK}"] == 1.0
    assert {"report/summary.md", "report/comparison.csv"} <= {a.path for a in client.list_artifacts(ids["a"], "report")}
    budgets = built.results.set_index("method").loc["mpt", "steps_trained"]
    assert budgets == 2 * BUDGET  # the chosen config's seeds; the stopped config is not in it


def test_replicas_that_reach_opposite_verdicts_are_flagged_and_agreeing_ones_pass(store, tmp_path):
    _, uri, ids = store
    rc, out, err = report("mpt-replicas", "--runs", ids["r1"], ids["r2"], ids["r3"], "--tracking-uri", uri,
                          "--out", str(tmp_path / "r"))
    assert rc == 0, err
    (row,) = pd.read_csv(tmp_path / "r" / "replication.csv").itertuples()
    assert (row.method, row.runs, row.agreement) == ("vanilla_pt", "r1, r2", "CONTRADICTION")
    assert f"CONTRADICTION: {TASK} (full), MPT against vanilla_pt: r1: better; r2: worse" in out
    comparison = pd.read_csv(tmp_path / "r" / "comparison.csv").set_index("pipeline_run")
    assert comparison.loc["r1", "shared_prompt"] == "retrained per seed"
    assert comparison.loc["r3", "shared_prompt"] == "one for all seeds"
    assert "given the one shared prompt all seeds started from (seed_scope: targets)" in out
    rc, out, err = report("mpt-replicas", "--runs", ids["r1"], ids["r4"], "--tracking-uri", uri,
                          "--out", str(tmp_path / "agree"))
    assert rc == 0, err
    assert list(pd.read_csv(tmp_path / "agree" / "replication.csv")["agreement"]) == ["agree"]
    assert "CONTRADICTION" not in out


def test_one_seed_gets_a_difference_and_no_verdict(store, tmp_path):
    _, uri, ids = store
    rc, out, err = report("mpt-replicas", "--runs", ids["one"], "--tracking-uri", uri, "--out", str(tmp_path / "r"))
    assert rc == 0, err
    (row,) = pd.read_csv(tmp_path / "r" / "comparison.csv").itertuples()
    assert (row.diff, row.n_seeds, row.verdict) == (1.0, 1, "one seed: no verdict") and pd.isna(row.low)
    assert "at one seed: no verdict" in out and "no detectable difference" not in out
    assert "0 comparison(s)" in out  # the heading counts only the comparisons that got a verdict


def test_metric_names_keep_only_what_mlflow_accepts():
    row = {"method": "single_source:sentiment", "task": TASK, "shots": "8"}
    assert metric_name("diff", row) == f"diff_single_source-sentiment_{TASK}_8"


@pytest.mark.parametrize("case, needle", [
    ("unknown experiment", "EXPERIMENT"), ("no finished run", "has no finished pipeline run"),
    ("no such run", "no such run"), ("other experiment", "belongs to another experiment"),
    ("stage run", "is not a pipeline run"), ("running", "is RUNNING"), ("no store", "no MLflow store there"),
])
def test_bad_input_exits_2_naming_the_argument_and_creates_nothing(store, tmp_path, case, needle):
    _, uri, ids = store
    experiment, runs = {"unknown experiment": ("nope", []), "no finished run": ("empty", []),
                        "no such run": ("mpt-demo", ["0" * 32]), "other experiment": ("mpt-demo", [ids["foreign"]]),
                        "stage run": ("mpt-demo", [ids["stage"]]), "running": ("mpt-demo", [ids["running"]]),
                        "no store": ("mpt-demo", [])}[case]
    store_uri = f"sqlite:///{tmp_path}/absent.db" if case == "no store" else uri
    rc, _, err = report(experiment, *(["--runs", *runs] if runs else []), "--tracking-uri", store_uri,
                        "--out", str(tmp_path / "r"))
    assert rc == EXIT_BAD_INPUT and needle in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "absent.db").exists()
    if runs:
        assert "--runs" in err
