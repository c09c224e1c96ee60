"""Comparisons over seeds, end to end on one store: a smoke pipeline at 2 seeds with the two
ablations (``seed_scope: targets``) ends with an interval per target and method and a verdict per
comparison, printed and logged as conditional on its one shared prompt; the same command again with
``--no-cache`` logs every metric identically; a second run (another distillation lambda, a 4-shot
budget, the default ``seed_scope: pipeline``) reuses the first seed's joint_multitask student and
sources, trains the second seed's own, and draws balanced few-shot sets, per seed, shared by the
methods; ``report`` on both runs lists what differs between them."""

from __future__ import annotations

import json
from collections import defaultdict

import pandas as pd
import pytest
from helpers.pipeline import run_cli, run_smoke
from helpers.specs import SMOKE
from mlflow.tracking import MlflowClient

from orchestrator.results.report import ONE_PROMPT, PER_SEED
from orchestrator.pipeline.cache import fingerprints
from orchestrator.spec.loading import load_spec
from orchestrator.results.stats import compare
from orchestrator.tracking import METHOD_TAG, PARENT_TAG, STAGE_TAG, TASK_TAG

pytestmark = pytest.mark.slow

EXPERIMENT = "mpt-smoke"
METHODS = {"mpt", "no_distill", "joint_multitask"}
# one configuration per method, so each method's chosen trials are exactly its two seeds; FIFO, since
# which trials ASHA cuts depends on which reports first, and the rerun must repeat every step
COMMON = ["--set", "seeds=[0, 1]", "--set", "target.baselines=[no_distill, joint_multitask]",
          "--set", "target.search_space={rank: {grid: [1]}, lr: {grid: [0.3]}}", "--set", "target.scheduler.type=fifo"]
FIRST = ["--set", "seed_scope=targets"]
SECOND = ["--set", "distill.lambda=0.5", "--set", "target.shots=[4]"]


@pytest.fixture(scope="module")
def store(local_ray, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("comparison")
    first = run_smoke(tmp, *COMMON, *FIRST)
    assert first[0] == 0, first[1]
    again = run_smoke(tmp, *COMMON, *FIRST, "--no-cache")
    assert again[0] == 0, again[1]
    second = run_smoke(tmp, *COMMON, *SECOND)
    assert second[0] == 0, second[1]
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    first_run, rerun, second_run = sorted((r for r in runs if PARENT_TAG not in r.data.tags),
                                          key=lambda r: r.info.start_time)
    return tmp, client, runs, (first_run, second_run), (first[1], second[1]), rerun


def children(runs, parent, stage="target"):
    return [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id and r.data.tags.get(STAGE_TAG) == stage]


def test_every_method_is_reported_over_both_seeds_with_an_interval(store):
    tmp, client, runs, (first, _), _, _ = store
    results = pd.read_csv(client.download_artifacts(first.info.run_id, "report/results.csv", str(tmp / "a")))
    assert set(results["method"]) == METHODS and set(results["task"]) == {"review_polarity"}
    assert (results["n_seeds"] == 2).all()
    assert ((results["low"] <= results["mean"]) & (results["mean"] <= results["high"])).all()
    # the chosen trials: every method at both seeds, each with its test predictions on the test split
    chosen = [r for r in children(runs, first) if r.data.tags.get("mpt.best") == "true"]
    assert sorted((r.data.tags["mpt.method"], r.data.params["seed"]) for r in chosen) == \
        sorted((m, s) for m in METHODS for s in ("0", "1"))
    for run in chosen:
        saved = json.loads(open(client.download_artifacts(run.info.run_id, "predictions/test.json",
                                                          str(tmp / run.info.run_id))).read())
        assert len(saved["predictions"]) == len(saved["labels"]) == 40  # smoke's max_eval_examples
        accuracy = sum(p == y for p, y in zip(saved["predictions"], saved["labels"])) / 40
        assert accuracy == pytest.approx(run.data.metrics["test_accuracy"])


def test_mpt_against_each_ablation_has_a_verdict_printed_and_logged(store):
    tmp, client, runs, (first, _), (printed, _), _ = store
    comparison = pd.read_csv(client.download_artifacts(first.info.run_id, "report/comparison.csv", str(tmp / "c")))
    assert set(comparison["method"]) == {"no_distill", "joint_multitask"}
    assert ((comparison["low"] <= comparison["diff"]) & (comparison["diff"] <= comparison["high"])).all()
    # each difference, interval and verdict is the statistic of the chosen trials' saved test predictions
    saved = {(r.data.tags[METHOD_TAG], int(r.data.params["seed"])): json.loads(open(client.download_artifacts(
                 r.info.run_id, "predictions/test.json", str(tmp / "p" / r.info.run_id))).read())
             for r in children(runs, first) if r.data.tags.get("mpt.best") == "true"}
    metrics, seeds = client.get_run(first.info.run_id).data.metrics, (0, 1)
    for row in comparison.itertuples():
        expected = compare(saved[("mpt", 0)]["labels"], [saved[("mpt", s)]["predictions"] for s in seeds],
                           [saved[(row.method, s)]["predictions"] for s in seeds], row.metric)
        assert (row.diff, row.low, row.high) == pytest.approx((expected.observed, expected.low, expected.high))
        assert row.verdict == expected.verdict
        assert metrics[f"diff_{row.method}_review_polarity"] == pytest.approx(row.diff)
        assert row.verdict in printed
    assert "MPT minus each method on test: 2 comparison(s), each at 95% on its own" in printed
    assert set(comparison["shared_prompt"]) == {ONE_PROMPT}  # seed_scope targets: one prompt for both seeds
    assert "given the one shared prompt all seeds started from (seed_scope: targets)" in printed
    files = {a.path for a in client.list_artifacts(first.info.run_id, "report")}
    assert {"report/summary.md", "report/trials.csv", "report/best.csv", "report/bars_review_polarity.png"} <= files


def test_the_same_command_again_logs_every_metric_identically(store):
    """One spec, the same seeds, one machine, nothing reused: every step of every run repeats exactly."""
    _, client, runs, (first, _), _, rerun = store

    def logged(parent) -> dict:
        out = {("parent", k): v for k, v in client.get_run(parent.info.run_id).data.metrics.items()
               if k != "wall_time_s"}
        for run in (r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id):
            key = (run.data.tags[STAGE_TAG], run.data.tags.get(METHOD_TAG, ""), run.data.tags[TASK_TAG],
                   run.data.params.get("seed", ""))
            for name in run.data.metrics:
                history = client.get_metric_history(run.info.run_id, name)
                out[(*key, name)] = sorted((m.step, m.value) for m in history)
        return out

    before, after = logged(first), logged(rerun)
    assert {key[0] for key in before} == {"parent", "source", "distill", "target"}
    assert before == after


def test_the_pipeline_seeded_run_retrains_the_shared_prompt_per_seed_and_says_so(store):
    tmp, client, _, (_, second), (_, printed), _ = store
    comparison = pd.read_csv(client.download_artifacts(second.info.run_id, "report/comparison.csv", str(tmp / "s")))
    assert set(comparison["shared_prompt"]) == {PER_SEED}
    assert "[source:sentiment s1] done" in printed and "[distill s1] done" in printed
    assert "[source:sentiment s0]" not in printed  # seed 0's sources were reused, not trained


def test_the_second_run_reuses_the_first_seeds_joint_student_and_trains_the_second_seeds_own(store):
    _, _, runs, (first, second), (_, printed), _ = store
    assert "reused 3 stage(s) from earlier runs: distill:joint s0, source:nli s0, source:sentiment s0" in printed
    spec = load_spec(SMOKE, [a for a in COMMON + SECOND if a != "--set"])
    own, seed_1 = fingerprints(spec), fingerprints(spec.for_seed(1))

    def trained(stage: str) -> set[str]:
        return {r.data.tags["mpt.fingerprint"] for r in children(runs, second, stage)}

    assert trained("source") == {seed_1["source:nli"], seed_1["source:sentiment"]}
    assert trained("distill") == {own["distill"], seed_1["distill"], seed_1["distill:joint"]}
    assert sorted(r.data.params["lambda"] for r in children(runs, second, "distill")) == ["0.0", "0.5", "0.5"]
    (joint,) = [r for r in children(runs, first, "distill") if r.data.tags.get("mpt.method") == "joint_multitask"]
    assert joint.data.params["lambda"] == "0.0" and joint.data.tags["mpt.fingerprint"] == own["distill:joint"]


def test_few_shot_sets_are_balanced_drawn_per_seed_and_shared_by_the_methods(store):
    _, client, runs, (_, second), _, _ = store
    trials = children(runs, second)
    assert {r.data.params["shots"] for r in trials} == {"4"}
    digests = defaultdict(set)
    for run in trials:
        (train,) = [i for i in client.get_run(run.info.run_id).inputs.dataset_inputs
                    if {t.key: t.value for t in i.tags}.get("mlflow.data.context") == "train"]
        assert json.loads(train.dataset.profile)["num_rows"] == 4 * 2  # 4 per class, review_polarity has 2
        digests[run.data.params["seed"]].add(train.dataset.digest)
    assert all(len(d) == 1 for d in digests.values())  # one subset per seed, whatever the method
    assert digests["0"] != digests["1"]


def test_report_compares_the_two_runs_and_lists_what_differs(store):
    tmp, _, _, (first, second), _, _ = store
    rc, printed = run_cli(tmp, ["report", EXPERIMENT, "--runs", first.info.run_id, second.info.run_id,
                                "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--out", "study"])
    assert rc == 0, printed
    summary = (tmp / "study" / "summary.md").read_text()
    assert "distill.lambda=0.5" in summary and "target.shots=[4]" in summary
    results = pd.read_csv(tmp / "study" / "results.csv")
    assert set(results["shots"].astype(str)) == {"full", "4"}
    assert {"comparison.csv", "curves_review_polarity.png", "asha_steps.png"} <= {p.name for p in (tmp / "study").iterdir()}
