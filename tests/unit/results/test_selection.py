"""The pure functions of orchestrator/results/selection.py: the method family, the configuration chosen per
family and budget, the reloaded model's values attached to it, the results table and its summary."""

from __future__ import annotations

import pytest

from orchestrator.results.selection import TABLE_COLUMNS, attach_test, family, results_table, select_best, summary


def row(method: str, value: float | None, *, task: str = "review_polarity", status: str = "completed",
        checkpoint: object = "ckpt", **extra) -> dict:
    """One trial as the target stage reports it (``checkpoint`` stands in for a tune.Checkpoint)."""
    return {"task": task, "method": method, "rank": 1 if method == "mpt" else None, "lr": 0.1, "head_lr": 0.01,
            "batch_size": 8, "metric": "eval_accuracy", "value": value, "steps": 10, "trainable_params": 100,
            "status": status, "error": "", "mlflow_run_id": f"run-{method}-{value}", "checkpoint": checkpoint,
            "seed": 0, "shots": "full", "config": f"{method}:{value}", **extra}


@pytest.mark.parametrize("method, fam", [("mpt", "mpt"), ("head_only", "head_only"), ("vanilla_pt", "vanilla_pt"),
                                         ("single_source:nli", "single_source"),
                                         ("single_source:a:b", "single_source")])
def test_family(method, fam):
    assert family(method) == fam


def test_select_best_is_the_best_validation_value_per_family():
    rows = [row("mpt", 0.6), row("mpt", 0.8), row("mpt", 0.7),
            row("single_source:sentiment", 0.5), row("single_source:nli", 0.65),
            row("head_only", 0.55)]
    best = select_best(rows)
    assert {b["method"]: b["value"] for b in best} == {"mpt": 0.8, "single_source:nli": 0.65, "head_only": 0.55}
    assert all(any(b is r for r in rows) for b in best)  # the rows themselves, not copies


def test_select_best_chooses_a_configuration_on_its_mean_over_seeds_and_returns_every_seed():
    """The lucky seed of a worse configuration does not win; each budget gets its own choice."""
    steady = [row("mpt", v, seed=s, config="rank=1") for s, v in ((0, 0.70), (1, 0.71), (2, 0.69))]
    lucky = [row("mpt", v, seed=s, config="rank=2") for s, v in ((0, 0.90), (1, 0.50), (2, 0.55))]
    few = [row("mpt", v, seed=s, config="rank=2", shots=4) for s, v in ((0, 0.6), (1, 0.6), (2, 0.6))]
    best = select_best(steady + lucky + few)
    assert sorted((b["shots"], b["config"], b["seed"]) for b in best if b["shots"] == "full") == \
        [("full", "rank=1", 0), ("full", "rank=1", 1), ("full", "rank=1", 2)]
    assert sorted(b["seed"] for b in best if b["shots"] == 4) == [0, 1, 2]


def test_select_best_skips_failed_trials_and_those_without_a_checkpoint_or_a_value():
    rows = [row("mpt", 0.99, status="failed"), row("mpt", 0.98, checkpoint=None), row("mpt", None),
            row("mpt", 0.4, status="early_stopped"), row("vanilla_pt", 0.9, status="failed")]
    best = select_best(rows)
    assert [(b["method"], b["value"]) for b in best] == [("mpt", 0.4)]  # an early-stopped trial still counts
    assert select_best([row("mpt", 0.5, status="failed")]) == []


def test_attach_test_marks_the_chosen_rows_with_the_reloaded_values():
    rows = [row("mpt", 0.6), row("mpt", 0.8), row("vanilla_pt", 0.7)]
    bests = [rows[1], rows[2]]
    evaluations = [{"eval_accuracy": 0.8, "test_accuracy": 0.75}, {"eval_accuracy": 0.7, "test_accuracy": 0.6}]
    out = attach_test(rows, bests, evaluations)
    assert [r["best"] for r in out] == [False, True, True]
    assert [r["test_value"] for r in out] == [None, 0.75, 0.6]
    assert [r["reloaded_value"] for r in out] == [None, 0.8, 0.7]
    assert all("checkpoint" not in r for r in out)
    assert "checkpoint" in rows[0]  # the input rows are left as they were


def test_attach_test_matches_by_identity_not_by_equal_values():
    twin = row("mpt", 0.8)
    rows = [twin, dict(twin)]  # equal, but only the first was chosen
    out = attach_test(rows, [rows[0]], [{"eval_accuracy": 0.8, "test_accuracy": 0.7}])
    assert [r["best"] for r in out] == [True, False]


def table_rows() -> list[dict]:
    rows = [row("vanilla_pt", 0.7), row("mpt", 0.6), row("mpt", 0.8), row("mpt", 0.9, task="a_task"),
            row("head_only", 0.5, task="a_task")]
    chosen = [rows[0], rows[2], rows[3], rows[4]]
    evaluations = [{"eval_accuracy": v["value"], "test_accuracy": v["value"] - 0.1} for v in chosen]
    return attach_test(rows, chosen, evaluations)


def test_results_table_orders_columns_and_sorts_by_task_method_then_best_value():
    table = results_table(table_rows())
    assert list(table.columns) == TABLE_COLUMNS + ["reloaded_value"]
    assert list(zip(table["task"], table["method"], table["value"])) == [
        ("a_task", "head_only", 0.5), ("a_task", "mpt", 0.9),
        ("review_polarity", "mpt", 0.8), ("review_polarity", "mpt", 0.6), ("review_polarity", "vanilla_pt", 0.7)]
    assert list(table.index) == list(range(5))


def test_results_table_adds_missing_columns():
    table = results_table([{"task": "t", "method": "mpt", "value": 0.5, "extra": 1}])
    assert list(table.columns) == TABLE_COLUMNS + ["extra"]
    assert table.loc[0, "rank"] is None and table.loc[0, "test_value"] is None and table.loc[0, "extra"] == 1


def test_summary_is_one_row_per_task_and_family_best_first():
    rows = table_rows()
    rows.append(attach_test([row("single_source:nli", 0.75)], [], [])[0])  # not chosen: not in the summary
    table = results_table(rows)
    best = summary(table)
    assert list(best.columns) == ["task", "shots", "method", "metric", "seeds", "value", "test_value",
                                  "trainable_params", "rank", "lr"]
    assert set(best["seeds"]) == {1}
    assert list(zip(best["task"], best["method"], best["value"])) == [
        ("a_task", "mpt", 0.9), ("a_task", "head_only", 0.5),
        ("review_polarity", "mpt", 0.8), ("review_polarity", "vanilla_pt", 0.7)]
    assert [round(v, 6) for v in best["test_value"]] == [0.8, 0.4, 0.7, 0.6]


def test_summary_maps_single_source_methods_to_their_family():
    rows = [row("single_source:nli", 0.7)]
    table = results_table(attach_test(rows, rows, [{"eval_accuracy": 0.7, "test_accuracy": 0.65}]))
    assert list(summary(table)["method"]) == ["single_source"]
