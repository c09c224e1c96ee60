"""The report of finished pipeline runs, read from MLflow alone: how each method scores over seeds,
whether MPT's difference from each other method outlasts retraining and the test sample
(``stats.compare``), what the seeds could have detected, and whether runs of one spec at other
seeds reach the same verdicts.

What it reads is the contract of docs/design.md: parent runs (the spec as params), target trial
runs (tags ``METHOD_TAG``, ``BEST_TAG``; params ``seed``, ``shots``, the config; ``eval_<metric>``
and ``train_loss`` histories) and the chosen trials' ``PREDICTIONS_ARTIFACT``. ``build_report`` is
what both the ``report`` verb and the end of ``run`` call.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from ..spec.methods import REFERENCE, family
from ..tracking import (BEST_TAG, METHOD_TAG, PARENT_TAG, PIPELINE_TAG, PREDICTIONS_ARTIFACT, REPORT_DIR, REUSED_PREFIX,
                        STAGE_TAG, STOPPED_TAG, TARGET_RESULTS, TASK_TAG)
from . import plots, stats
from .runs import search_all

REUSED_TARGET = f"{REUSED_PREFIX}target:"  # on a parent run: the earlier parent run whose target results it reused
SEED_PARAMS = ("seed", "seeds")  # what replicas of one spec differ in
RESULT_COLUMNS = ["pipeline_run", "task", "shots", "method", "metric", "n_seeds", "mean", "sd", "low", "high", "rank",
                  "lr", "head_lr", "trainable_params", "steps_trained", "wall_time_s"]
COMPARISON_COLUMNS = ["pipeline_run", "task", "shots", "method", "metric", "n_seeds", "diff", "low", "high",
                      "p_improvement", "detectable", "seeds_needed", "shared_prompt", "verdict"]
REPLICATION_COLUMNS = ["task", "shots", "method", "runs", "verdicts", "agreement"]
PER_SEED, ONE_PROMPT = "retrained per seed", "one for all seeds"  # the shared_prompt column
CONTRADICTION = "CONTRADICTION"
HEADING = ("MPT minus each method on test: {n} comparison(s), each at 95% on its own (not corrected for "
           "the others: with no real difference anywhere, about {expected:.1f} of them would still read better "
           "or worse).\nThe interval covers retraining (seed to seed) and the test sample; P(>) is the share of "
           "seed pairs MPT wins; `detectable` the difference these seeds find 80% of the time.")


@dataclass
class Report:
    runs: pd.DataFrame  # one row per parent run: id, run tag, wall time, the spec values that differ
    results: pd.DataFrame  # one row per (pipeline run, task, shots, method): the chosen config over seeds
    comparison: pd.DataFrame  # MPT minus each other method: paired difference, interval, verdict
    replication: pd.DataFrame  # per target and method, the verdicts of runs that differ only in their seeds
    out_dir: Path
    files: list[Path]
    client: MlflowClient = field(repr=False)


def _trial_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The parent's target trials. A target the pipeline reused from an earlier run (tag
    ``REUSED_TARGET`` + task) has its trials under that run. A sweep the pipeline resumed after a
    crash kept the trials that had finished before it, under the crashed run: the rows the pipeline
    recorded for its targets name them."""
    query = f"tags.`{STAGE_TAG}` = 'target' AND tags.`{PARENT_TAG}` = "
    reused = {tag.removeprefix(REUSED_TARGET): run_id for tag, run_id in parent.data.tags.items()
              if tag.startswith(REUSED_TARGET)}
    runs = [r for r in search_all(client, parent.info.experiment_id, query + f"'{parent.info.run_id}'")
            if r.data.tags[TASK_TAG] not in reused]
    for task, earlier in reused.items():
        runs += search_all(client, parent.info.experiment_id, query + f"'{earlier}' AND tags.`{TASK_TAG}` = '{task}'")
    known = {r.info.run_id for r in runs}
    return runs + [client.get_run(run_id) for run_id in sorted(_recorded_trial_ids(client, parent) - known)]


def _recorded_trial_ids(client: MlflowClient, parent: Run) -> set[str]:
    """The trial run ids in the target rows recorded on the parent (``cache.record_target``)."""
    ids = set()
    with tempfile.TemporaryDirectory() as tmp:
        for item in client.list_artifacts(parent.info.run_id, TARGET_RESULTS):
            rows = json.loads(Path(client.download_artifacts(parent.info.run_id, item.path, tmp)).read_text())
            ids |= {row["mlflow_run_id"] for row in rows if row.get("mlflow_run_id")}
    return ids


def _trials(client: MlflowClient, parent: Run) -> pd.DataFrame:
    rows = []
    for run in _trial_runs(client, parent):
        p, tags = run.data.params, run.data.tags
        complete = run.info.status == "FINISHED" and tags.get(STOPPED_TAG) != "true"
        # only a trial that stopped short needs its history read to know how far it trained
        steps = int(p["steps"]) if complete else max(
            (m.step for m in client.get_metric_history(run.info.run_id, "train_loss")), default=0)
        rows.append({"run_id": run.info.run_id, "task": tags[TASK_TAG], "method": tags[METHOD_TAG],
                     "seed": int(p["seed"]), "shots": p.get("shots", "full"), "rank": p.get("rank", ""),
                     "lr": p.get("lr"), "head_lr": p.get("head_lr"), "budget": int(p["steps"]),
                     "trainable_params": p.get("trainable_params"), "steps_trained": steps,
                     "wall_time_s": ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000,
                     "best": tags.get(BEST_TAG) == "true",
                     "test": {k.removeprefix("test_"): v for k, v in run.data.metrics.items() if k.startswith("test_")}})
    trials = pd.DataFrame(rows)
    trials["family"] = trials["method"].map(family)
    return trials


def _predictions(client: MlflowClient, run_id: str, tmp: Path) -> dict:
    path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(tmp / run_id))
    return json.loads(Path(path).read_text())


def _summarise(client: MlflowClient, tag: str, trials: pd.DataFrame, tmp: Path):
    """Per chosen config: the results row, its seeds' predictions, and its validation curve."""
    rows, predictions, curves = [], {}, []
    for (task, shots, method), chosen in trials[trials["best"]].groupby(["task", "shots", "method"]):
        chosen = chosen.sort_values("seed")
        metric, _ = next(iter(chosen["test"].iloc[0].items()))
        spread = stats.interval([t[metric] for t in chosen["test"]])
        first = chosen.iloc[0]
        rows.append({"pipeline_run": tag, "task": task, "shots": shots, "method": method, "metric": metric,
                     "n_seeds": len(chosen), "mean": spread.mean, "sd": spread.sd, "low": spread.low,
                     "high": spread.high, "rank": first["rank"], "lr": first["lr"], "head_lr": first["head_lr"],
                     "trainable_params": first["trainable_params"], "steps_trained": int(chosen["steps_trained"].sum()),
                     "wall_time_s": float(chosen["wall_time_s"].sum())})
        predictions[(task, shots, method)] = {s: _predictions(client, r, tmp) for s, r in zip(chosen["seed"], chosen["run_id"])}
        history = pd.DataFrame([(m.step, m.value) for r in chosen["run_id"]
                                for m in client.get_metric_history(r, f"eval_{metric}")], columns=["step", "value"])
        curve = history.groupby("step", as_index=False)["value"].mean()
        curves.append(curve.assign(pipeline_run=tag, task=task, shots=shots, method=method, metric=metric))
    return rows, predictions, curves


def _compare(tag: str, results: list[dict], predictions: dict, shared_prompt: str) -> list[dict]:
    rows = []
    for mpt in (r for r in results if r["method"] == REFERENCE):
        for other in (r for r in results if (r["task"], r["shots"]) == (mpt["task"], mpt["shots"])
                      and family(r["method"]) != REFERENCE):
            a, b = (predictions[(r["task"], r["shots"], r["method"])] for r in (mpt, other))
            seeds = sorted(set(a) & set(b))  # paired by seed: a seed only one method ran has no partner
            diff = stats.compare(a[seeds[0]]["labels"], [a[s]["predictions"] for s in seeds],
                                 [b[s]["predictions"] for s in seeds], mpt["metric"])
            rows.append({"pipeline_run": tag, "task": mpt["task"], "shots": mpt["shots"], "method": other["method"],
                         "metric": mpt["metric"], "n_seeds": len(seeds), "diff": diff.observed, "low": diff.low,
                         "high": diff.high, "p_improvement": diff.p_improvement, "detectable": diff.detectable,
                         "seeds_needed": diff.seeds_needed, "shared_prompt": shared_prompt if len(seeds) > 1 else "",
                         "verdict": diff.verdict})
    return rows


def _shared_prompt(parent: Run) -> str:
    """Whether the seeds retrained the sources and the shared prompt (``seed_scope``; runs logged
    before it existed trained them once)."""
    return PER_SEED if parent.data.params.get("seed_scope", "targets") == "pipeline" else ONE_PROMPT


def _replication(parents: list[Run], comparison: pd.DataFrame) -> pd.DataFrame:
    """Runs whose specs differ only in their seeds replicate one another: per target, budget and
    method their verdicts should agree. ``better`` in one and ``worse`` in another is a
    contradiction; a verdict in one and none in another is what low power gives, and is shown as such."""
    groups: dict[str, list[str]] = {}
    for p in parents:
        spec = sorted((k, v) for k, v in p.data.params.items() if k not in SEED_PARAMS)
        groups.setdefault(repr(spec), []).append(p.data.tags[PIPELINE_TAG])
    rows = []
    for tags in (t for t in groups.values() if len(t) > 1):
        shown = comparison[comparison["pipeline_run"].isin(tags)]
        for (task, shots, method), rows_of in shown.groupby(["task", "shots", "method"], sort=True):
            verdicts = dict(zip(rows_of["pipeline_run"], rows_of["verdict"]))
            found = set(verdicts.values())
            agreement = (CONTRADICTION if {"better", "worse"} <= found else "agree" if len(found) == 1
                         else "differ (one found what the other could not: not a contradiction)")
            rows.append({"task": task, "shots": shots, "method": method, "runs": ", ".join(verdicts),
                         "verdicts": "; ".join(f"{run}: {v}" for run, v in verdicts.items()), "agreement": agreement})
    return pd.DataFrame(rows, columns=REPLICATION_COLUMNS)


def _runs_table(parents: list[Run]) -> pd.DataFrame:
    params = [p.data.params for p in parents]
    differing = sorted(k for k in set().union(*params) if len({ps.get(k) for ps in params}) > 1)
    return pd.DataFrame([{"parent_run_id": p.info.run_id, "pipeline_run": p.data.tags[PIPELINE_TAG],
                          "wall_time_s": p.data.metrics.get("wall_time_s"),
                          "differences": ", ".join(f"{k}={ps.get(k, '(unset)')}" for k in differing)}
                         for p, ps in zip(parents, params)])


def build_report(client: MlflowClient, experiment_id: str, parent_run_ids: list[str], out_dir: Path) -> Report:
    """Read the parent runs' target trials, write summary.md, results.csv, comparison.csv and the
    plots into ``out_dir``, and return the tables."""
    parents = [client.get_run(r) for r in parent_run_ids]
    results, comparison, curves, budgets = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for parent in parents:
            tag = parent.data.tags[PIPELINE_TAG]
            trials = _trials(client, parent)
            rows, predictions, run_curves = _summarise(client, tag, trials, Path(tmp))
            results += rows
            comparison += _compare(tag, rows, predictions, _shared_prompt(parent))
            curves += run_curves
            mpt = trials[trials["family"] == REFERENCE]
            budgets += [{"pipeline_run": tag, "task": task, "shots": shots, "trained": int(g["steps_trained"].sum()),
                         "grid": int(g["budget"].sum())} for (task, shots), g in mpt.groupby(["task", "shots"])]
    comparison = pd.DataFrame(comparison, columns=COMPARISON_COLUMNS)
    report = Report(_runs_table(parents), pd.DataFrame(results, columns=RESULT_COLUMNS), comparison,
                    _replication(parents, comparison), Path(out_dir), [], client)
    report.out_dir.mkdir(parents=True, exist_ok=True)
    report.files = _write_tables(report) + plots.write_all(report.results, report.comparison,
                                                           pd.concat(curves) if curves else None,
                                                           pd.DataFrame(budgets), report.out_dir)
    return report


def _write_tables(report: Report) -> list[Path]:
    out = report.out_dir
    report.results.to_csv(out / "results.csv", index=False)
    report.comparison.to_csv(out / "comparison.csv", index=False)
    files = [out / "summary.md", out / "results.csv", out / "comparison.csv"]
    lines = ["# Report", "", "## Runs", ""]
    lines += [f"- `{r.pipeline_run}` (parent run `{r.parent_run_id}`, {r.wall_time_s or float('nan'):.0f} s): "
              + (f"differs in {r.differences}" if r.differences else "no spec differences") for r in report.runs.itertuples()]
    lines += ["", "## Test metric over seeds (chosen config, 95% t interval)", "", _markdown(report.results), "",
              "## MPT minus each method", "", _heading(report.comparison), "", _markdown(report.comparison), "",
              *[f"- {line}" for line in readings(report.comparison)], ""]
    if len(report.runs) > 1:
        report.replication.to_csv(out / "replication.csv", index=False)
        files.append(out / "replication.csv")
        lines += ["## Replication: runs that differ only in their seeds", "", _markdown(report.replication)
                  if not report.replication.empty else "(no two runs share a spec apart from their seeds)", ""]
    (out / "summary.md").write_text("\n".join(lines))
    return files


def _heading(comparison: pd.DataFrame) -> str:
    judged = int((comparison["verdict"] != stats.ONE_SEED).sum())
    return HEADING.format(n=judged, expected=0.05 * judged)


def readings(comparison: pd.DataFrame) -> list[str]:
    """Each comparison in words: the verdict, how sure the seeds are, and what they could have seen."""
    out = []
    for r in comparison.itertuples():
        name = f"{r.task}{'' if r.shots == 'full' else f' ({r.shots} shots)'}, MPT - {r.method} ({r.pipeline_run})"
        if r.verdict == stats.ONE_SEED:
            out.append(f"{name}: {r.diff:+.3f} at one seed: no verdict (a verdict needs at least 2 seeds)")
            continue
        line = (f"{name}: {r.verdict} at {r.n_seeds} seeds, {r.diff:+.3f} [{r.low:+.3f}, {r.high:+.3f}], "
                f"P(MPT > {r.method}) = {r.p_improvement:.2f}")
        if np.isnan(r.detectable):
            line += "; the difference is the same at every seed and on every example (0: the same predictions)"
        elif r.verdict == stats.NO_DIFFERENCE:
            needed = (f"about {r.seeds_needed:.0f} seeds would detect {abs(r.diff):.3f}" if np.isfinite(r.seeds_needed)
                      else f"no number of seeds would detect {abs(r.diff):.3f} on this test set")
            line += f"; only a difference above {r.detectable:.3f} could have been detected; {needed}"
        if r.shared_prompt == ONE_PROMPT:
            line += "; given the one shared prompt all seeds started from (seed_scope: targets)"
        out.append(line)
    return out


def _markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(none)"
    shown = table.map(lambda v: f"{v:.4f}" if isinstance(v, float) else str(v))
    return "\n".join(["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
                     + ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)])


def metric_name(prefix: str, row) -> str:
    """``<prefix>_<method>_<task>[_<shots>]``, with what MLflow refuses in a metric name (``:``) as ``-``."""
    name = f"{prefix}_{row['method']}_{row['task']}" + ("" if row["shots"] == "full" else f"_{row['shots']}")
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "-", name)


def log_to_parent(report: Report, parent_run_id: str) -> None:
    """The report's files under ``report/`` of the parent run, and its comparisons as metrics."""
    client = report.client
    client.log_artifacts(parent_run_id, str(report.out_dir), REPORT_DIR)
    tag = report.runs.set_index("parent_run_id").loc[parent_run_id, "pipeline_run"]
    metrics = {}
    for _, row in report.comparison[report.comparison["pipeline_run"] == tag].iterrows():
        for prefix, column in (("diff", "diff"), ("diff_low", "low"), ("diff_high", "high"),
                               ("diff_p_improvement", "p_improvement"), ("diff_detectable", "detectable")):
            if np.isfinite(row[column]):  # one seed has no interval
                metrics[metric_name(prefix, row)] = float(row[column])
    now = int(pd.Timestamp.now().timestamp() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])


def format_verdicts(report: Report) -> str:
    """The comparison as a console table, each comparison in words, and the replication across runs."""
    if report.comparison.empty:
        return "No comparison: no run has both MPT and another method chosen on the same task."
    table = report.comparison
    shown = table.assign(
        diff=table["diff"].map("{:+.3f}".format),
        interval=[f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "" for lo, hi in zip(table["low"], table["high"])],
        **{"P(>)": table["p_improvement"].map(lambda p: f"{p:.2f}" if np.isfinite(p) else ""),
           "detectable": table["detectable"].map(lambda d: f"{d:.3f}" if np.isfinite(d) else "")})
    columns = ["pipeline_run", "task", "shots", "method", "n_seeds", "diff", "interval", "P(>)", "detectable",
               "shared_prompt", "verdict"]
    lines = [_heading(table), shown[columns].to_string(index=False), "", *readings(table)]
    if len(report.runs) > 1:
        lines += ["", "Replication (runs that differ only in their seeds):",
                  report.replication.drop(columns="runs").to_string(index=False)
                  if not report.replication.empty else "  none: no two runs share a spec apart from their seeds"]
        lines += [f"{CONTRADICTION}: {r.task} ({r.shots}), MPT against {r.method}: {r.verdicts}. The verdicts cannot "
                  "both hold; distrust both, and run more seeds." for r in report.replication.itertuples()
                  if r.agreement == CONTRADICTION]
    return "\n".join(lines)
