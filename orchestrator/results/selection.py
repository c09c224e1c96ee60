"""The choice a run makes: per target, budget and method, the configuration whose trials are best on
validation averaged over seeds; and the table (pandas) of every target trial of a run."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..spec.methods import family
from ..tracking import REPORT_DIR, RunLogger

TABLE_COLUMNS = ["task", "shots", "method", "seed", "config", "rank", "lr", "head_lr", "batch_size", "metric", "value",
                 "test_value", "steps", "trainable_params", "status", "best", "error", "mlflow_run_id",
                 "registered_model"]


def best_configurations(trials: list[dict], group: Callable[[dict], Any]) -> dict[Any, tuple[float, list[dict]]]:
    """Per ``group(trial)``, the configuration (a trial's ``config``) whose trials have the best
    ``value`` averaged over seeds: that mean and those trials, the first configuration on a tie."""
    configs: dict[tuple, list[dict]] = defaultdict(list)
    for trial in trials:
        configs[(group(trial), trial.get("config"))].append(trial)
    best: dict[Any, tuple[float, list[dict]]] = {}
    for (key, _), same in configs.items():
        score = sum(t["value"] for t in same) / len(same)
        if key not in best or score > best[key][0]:
            best[key] = (score, same)
    return best


def select_best(rows: list[dict]) -> list[dict]:
    """Per method family and budget, the configuration whose trials have the best validation value
    averaged over seeds; returns its trial at every seed (those that left a checkpoint).

    A trial ASHA stopped counts with its last reported value, and is scored at its last checkpoint.
    """
    kept = [row for row in rows
            if row["status"] != "failed" and row.get("checkpoint") is not None and row["value"] is not None]
    best = best_configurations(kept, lambda row: (family(row["method"]), str(row.get("shots"))))
    return [row for _, trials in best.values() for row in trials]


def attach_test(rows: list[dict], bests: list[dict], evaluations: list[dict[str, float]]) -> list[dict]:
    """Mark the chosen trials (``bests`` are items of ``rows``) and add the reloaded model's values."""
    chosen = {id(b): e for b, e in zip(bests, evaluations)}
    out = []
    for row in rows:
        evaluation = chosen.get(id(row))
        row = {k: v for k, v in row.items() if k != "checkpoint"}
        row["best"] = evaluation is not None
        row["test_value"] = next((v for k, v in (evaluation or {}).items() if k.startswith("test_")), None)
        row["reloaded_value"] = next((v for k, v in (evaluation or {}).items() if k.startswith("eval_")), None)
        row["registered_model"] = (evaluation or {}).get("registered_model")
        out.append(row)
    return out


def results_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for col in TABLE_COLUMNS:
        if col not in table:
            table[col] = None
    table["shots"] = table["shots"].astype(str)  # "full" beside numbers
    return table[TABLE_COLUMNS + [c for c in table.columns if c not in TABLE_COLUMNS]] \
        .sort_values(["task", "shots", "method", "value", "seed"], ascending=[True, True, True, False, True],
                     ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per target, budget and method family: the chosen configuration's validation and test
    values averaged over its seeds (the intervals and verdicts are the analysis's)."""
    best = table[table["best"]].copy()
    best["method"] = best["method"].map(family)
    keys = ["task", "shots", "method", "metric", "trainable_params", "rank", "lr"]
    best[["rank", "lr"]] = best[["rank", "lr"]].astype(str)  # None for methods without them: kept as a group
    out = best.groupby(keys, dropna=False).agg(seeds=("seed", "count"), value=("value", "mean"),
                                               test_value=("test_value", "mean")).reset_index()
    return out[["task", "shots", "method", "metric", "seeds", "value", "test_value", "trainable_params", "rank", "lr"]] \
        .sort_values(["task", "shots", "value"], ascending=[True, True, False], ignore_index=True)


def publish(table: pd.DataFrame, parent: RunLogger) -> None:
    """Every trial (``trials.csv``) and the chosen configurations (``best.csv``) as artifacts of the
    parent run, and the chosen test values as its metrics (intervals, verdicts and plots: ``analysis``)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table.to_csv(tmp / "trials.csv", index=False)
        summary(table).to_csv(tmp / "best.csv", index=False)
        parent.log_artifact(tmp / "trials.csv", REPORT_DIR)
        parent.log_artifact(tmp / "best.csv", REPORT_DIR)
    metrics = {}
    for _, row in summary(table).iterrows():
        if row["test_value"] is not None and row["test_value"] == row["test_value"]:
            budget = "" if row["shots"] == "full" else f"_{row['shots']}shot"
            metrics[f"test_{row['method']}_{row['task']}{budget}"] = float(row["test_value"])
    parent.log_metrics(0, metrics)
