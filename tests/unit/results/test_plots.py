"""The report's figures (orchestrator/results/plots.py) drawn from tiny tables shaped as
``report.build_report`` passes them: one PNG per target and budget (one for the ASHA steps), named
after the target, of the size the figure asks for, and no figure left open."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.results import plots, stats
from orchestrator.results.report import COMPARISON_COLUMNS, RESULT_COLUMNS

NAN = math.nan


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def results_rows() -> pd.DataFrame:
    """Two targets (one at a few-shot budget), two pipeline runs, one method at one seed (no interval)."""
    rows = []
    for task, shots in (("review_polarity", "full"), ("topic_match", "4")):
        for run in ("run-a", "run-b"):
            for method, mean in (("mpt", 0.8), ("vanilla_pt", 0.7), ("head_only", 0.6)):
                one_seed = method == "head_only" and run == "run-b"
                rows.append({"pipeline_run": run, "task": task, "shots": shots, "method": method, "metric": "accuracy",
                             "n_seeds": 1 if one_seed else 3, "mean": mean, "sd": NAN if one_seed else 0.02,
                             "low": NAN if one_seed else mean - 0.05, "high": NAN if one_seed else mean + 0.05})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def comparison_rows(runs: tuple[str, ...] = ("run-a",)) -> pd.DataFrame:
    """MPT minus two methods per target: one judged, one at one seed (NaN interval, detectable, P(>))."""
    rows = []
    for task, shots in (("review_polarity", "full"), ("topic_match", "4")):
        for run in runs:
            rows.append({"pipeline_run": run, "task": task, "shots": shots, "method": "vanilla_pt", "metric": "accuracy",
                         "n_seeds": 3, "diff": 0.1, "low": 0.02, "high": 0.18, "p_improvement": 0.89,
                         "detectable": 0.07, "seeds_needed": 2.0, "shared_prompt": "one for all seeds",
                         "verdict": "better"})
            rows.append({"pipeline_run": run, "task": task, "shots": shots, "method": "head_only", "metric": "accuracy",
                         "n_seeds": 1, "diff": 0.2, "low": NAN, "high": NAN, "p_improvement": NAN,
                         "detectable": NAN, "seeds_needed": NAN, "shared_prompt": "", "verdict": stats.ONE_SEED})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def curve_points() -> pd.DataFrame:
    """The chosen configs' validation curves, as ``_summarise`` builds them (mean over seeds per step)."""
    return pd.DataFrame([{"step": step, "value": 0.5 + 0.01 * step, "pipeline_run": run, "task": task,
                          "shots": shots, "method": method, "metric": "accuracy"}
                         for task, shots in (("review_polarity", "full"), ("topic_match", "4"))
                         for run in ("run-a", "run-b") for method in ("mpt", "vanilla_pt")
                         for step in (10, 20, 30)])


def budgets() -> pd.DataFrame:
    return pd.DataFrame([{"pipeline_run": "run-a", "task": "review_polarity", "shots": "full", "trained": 120, "grid": 400},
                         {"pipeline_run": "run-a", "task": "topic_match", "shots": "4", "trained": 90, "grid": 400}])


@pytest.fixture(autouse=True)
def no_figure_left_open():
    import matplotlib.pyplot as plt  # here, not at collection: plots picks the backend (Agg)

    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "every figure is closed once saved"


def test_bars_one_png_per_target_and_budget(tmp_path):
    paths = plots.bars(results_rows(), tmp_path)
    assert [p.name for p in paths] == ["bars_review_polarity.png", "bars_topic_match_4shot.png"]
    assert sorted(tmp_path.iterdir()) == sorted(paths)
    for path in paths:
        assert path.stat().st_size > 0
        assert png_size(path) == (600, 400)  # figsize (6, 4) at 100 dpi: three methods fit the narrowest width


def test_bars_widen_with_the_number_of_methods(tmp_path):
    rows = pd.DataFrame([{"pipeline_run": "r", "task": "sentiment", "shots": "full", "method": f"m{i}",
                          "metric": "f1", "n_seeds": 2, "mean": 0.5, "low": 0.4, "high": 0.6} for i in range(6)],
                        columns=RESULT_COLUMNS)
    (path,) = plots.bars(rows, tmp_path)
    assert png_size(path) == (900, 400)  # 1.5 inches per method


def test_differences_one_png_per_target_growing_with_its_rows(tmp_path):
    (one_run,) = [p for p in plots.differences(comparison_rows(), tmp_path) if "review_polarity" in p.name]
    assert one_run.name == "diffs_review_polarity.png" and png_size(one_run) == (700, 220)  # 1.2 + 0.5 per row
    two_runs = tmp_path / "two"
    two_runs.mkdir()
    paths = plots.differences(comparison_rows(("run-a", "run-b")), two_runs)
    assert [p.name for p in paths] == ["diffs_review_polarity.png", "diffs_topic_match_4shot.png"]
    assert all(p.stat().st_size > 0 and png_size(p) == (700, 320) for p in paths)


def test_curves_one_png_per_target(tmp_path):
    paths = plots.curves(curve_points(), tmp_path)
    assert [p.name for p in paths] == ["curves_review_polarity.png", "curves_topic_match_4shot.png"]
    assert all(p.stat().st_size > 0 and png_size(p) == (700, 400) for p in paths)


def test_asha_steps_one_png_for_all_targets_and_none_without_budgets(tmp_path):
    assert plots.asha_steps(pd.DataFrame(), tmp_path) == [] and list(tmp_path.iterdir()) == []
    (path,) = plots.asha_steps(budgets(), tmp_path)
    assert path == tmp_path / "asha_steps.png" and path.stat().st_size > 0
    assert png_size(path) == (600, 400)  # two targets: the narrowest width


def test_file_names_keep_only_safe_characters(tmp_path):
    rows = results_rows()
    rows["task"] = rows["task"].replace({"review_polarity": "glue/rte v1"})
    names = [p.name for p in plots.bars(rows, tmp_path)]
    assert names == ["bars_glue-rte-v1.png", "bars_topic_match_4shot.png"]
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())


def test_write_all_draws_every_figure_and_curves_only_when_given(tmp_path):
    paths = plots.write_all(results_rows(), comparison_rows(), None, budgets(), tmp_path)
    assert [p.name for p in paths] == ["bars_review_polarity.png", "bars_topic_match_4shot.png",
                                       "diffs_review_polarity.png", "diffs_topic_match_4shot.png", "asha_steps.png"]
    with_curves = plots.write_all(results_rows(), comparison_rows(), curve_points(), budgets(), tmp_path)
    assert with_curves[:len(paths)] == paths
    assert [p.name for p in with_curves[len(paths):]] == ["curves_review_polarity.png", "curves_topic_match_4shot.png"]
    assert sorted(tmp_path.iterdir()) == sorted(with_curves)
