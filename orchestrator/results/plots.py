"""The report's figures (matplotlib, Agg backend: no display on a cluster driver), one file each."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(task: str, shots: str) -> str:
    return task if shots == "full" else f"{task}_{shots}shot"


def _file(out_dir: Path, kind: str, task: str, shots: str) -> Path:
    return out_dir / re.sub(r"[^A-Za-z0-9_.-]", "-", f"{kind}_{_label(task, shots)}.png")


def bars(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per target: each method's mean test metric over seeds, the 95% t interval as error bars."""
    plt, paths = _pyplot(), []
    for (task, shots), rows in results.groupby(["task", "shots"]):
        methods, runs = sorted(rows["method"].unique()), sorted(rows["pipeline_run"].unique())
        width = 0.8 / len(runs)
        fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(methods)), 4))
        for i, run in enumerate(runs):
            by_method = rows[rows["pipeline_run"] == run].set_index("method").reindex(methods)
            # one seed has no interval (NaN): the bar stands without an error bar
            errors = np.nan_to_num([by_method["mean"] - by_method["low"], by_method["high"] - by_method["mean"]])
            ax.bar(np.arange(len(methods)) + i * width, by_method["mean"], width, yerr=errors, capsize=3, label=run)
        ax.set_xticks(np.arange(len(methods)) + width * (len(runs) - 1) / 2, methods, rotation=15)
        ax.set_ylabel(f"test {rows['metric'].iloc[0]} (mean over seeds, 95% CI)")
        ax.set_title(_label(task, shots))
        ax.legend(title="pipeline run", fontsize="small")
        paths.append(_save(plt, fig, _file(out_dir, "bars", task, shots)))
    return paths


def differences(comparison: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per target: MPT minus each method with its 95% interval (over retraining and the test sample),
    the band of differences the seeds could not have detected (80% power) shaded, and P(MPT > method)."""
    plt, paths = _pyplot(), []
    for (task, shots), rows in comparison.groupby(["task", "shots"]):
        rows = rows.sort_values(["method", "pipeline_run"]).reset_index(drop=True)
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(rows)))
        y = np.arange(len(rows))
        errors = np.nan_to_num([rows["diff"] - rows["low"], rows["high"] - rows["diff"]])
        ax.errorbar(rows["diff"], y, xerr=errors, fmt="o", capsize=3)
        for i, r in rows.iterrows():
            if np.isfinite(r["detectable"]):
                ax.fill_betweenx([i - 0.3, i + 0.3], -r["detectable"], r["detectable"], color="lightgray", zorder=0)
            ax.annotate(f"{r['verdict']}" + (f", P(>) {r['p_improvement']:.2f}" if np.isfinite(r["p_improvement"]) else ""),
                        (r["diff"], i), xytext=(0, 7), textcoords="offset points", ha="center", fontsize="small")
        ax.axvline(0, color="black", linewidth=0.8)
        several_runs = rows["pipeline_run"].nunique() > 1
        ax.set_yticks(y, [f"{r.method} ({r.pipeline_run})" if several_runs else r.method for r in rows.itertuples()])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlabel(f"MPT minus method, test {rows['metric'].iloc[0]} (95% interval; gray: not detectable at "
                      "80% power)", fontsize="small")
        ax.set_title(_label(task, shots))
        paths.append(_save(plt, fig, _file(out_dir, "diffs", task, shots)))
    return paths


def curves(curve_points: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per target: the validation metric against the step, per method, mean over the chosen config's seeds."""
    plt, paths = _pyplot(), []
    for (task, shots), points in curve_points.groupby(["task", "shots"]):
        several_runs = points["pipeline_run"].nunique() > 1
        fig, ax = plt.subplots(figsize=(7, 4))
        for (run, method), line in points.groupby(["pipeline_run", "method"]):
            ax.plot(line["step"], line["value"], marker=".", label=f"{method} ({run})" if several_runs else method)
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation {points['metric'].iloc[0]}")
        ax.set_title(f"{_label(task, shots)}: chosen config, mean over seeds")
        ax.legend(fontsize="small")
        paths.append(_save(plt, fig, _file(out_dir, "curves", task, shots)))
    return paths


def asha_steps(budgets: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Steps all MPT trials trained against what the full grid would have (trials x budget)."""
    if budgets.empty:
        return []
    plt = _pyplot()
    names = [f"{_label(r.task, r.shots)}\n{r.pipeline_run}" for r in budgets.itertuples()]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    ax.bar(x - 0.2, budgets["grid"], 0.4, label="full grid (trials x budget)", color="lightgray")
    ax.bar(x + 0.2, budgets["trained"], 0.4, label="trained (ASHA)")
    ax.set_xticks(x, names, fontsize="small")
    ax.set_ylabel("steps, all MPT trials")
    ax.legend(fontsize="small")
    return [_save(plt, fig, out_dir / "asha_steps.png")]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(results: pd.DataFrame, comparison: pd.DataFrame, curve_points: pd.DataFrame | None,
              budgets: pd.DataFrame, out_dir: Path) -> list[Path]:
    paths = bars(results, out_dir) + differences(comparison, out_dir) + asha_steps(budgets, out_dir)
    return paths + (curves(curve_points, out_dir) if curve_points is not None else [])
