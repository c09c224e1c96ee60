"""The target sweeps' search spaces, expanded by Tune's own variant generator (no Ray cluster needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ray.tune.search.variant_generator import generate_variants

from orchestrator.spec.schema import SearchSpace, TargetStage

from orchestrator.spec.loading import load_spec

SMOKE = str(Path(__file__).resolve().parents[3] / "pipelines" / "smoke.yaml")


def trials(space: dict) -> list[dict]:
    return [SearchSpace.trial_settings(config) for _, config in generate_variants(space)]


def mpt_space(stage: TargetStage) -> dict:
    return stage.search_space.tune_space(["mpt"], stage.defaults(), [0], "full")


def baselines_space(stage: TargetStage, sources: list[str]) -> dict | None:
    """The baselines sweep's space, or None when there is no baselines sweep (as the target stage does)."""
    methods = stage.baseline_methods(sources)
    return stage.search_space.tune_space(methods, stage.defaults(), [0], "full") if methods else None


def test_mpt_grid_is_the_cross_product_of_rank_and_lr():
    spec = load_spec(SMOKE, ["target.search_space={rank: {grid: [1, 2]}, lr: {grid: [0.1, 0.3]}}"])
    mpt = mpt_space(spec.target)
    assert sorted((t["rank"], t["lr"]) for t in trials(mpt)) == [(1, 0.1), (1, 0.3), (2, 0.1), (2, 0.3)]
    assert {t["method"] for t in trials(mpt)} == {"mpt"}


def test_prompt_baselines_search_the_same_lrs_and_the_linear_probe_runs_once():
    spec = load_spec(SMOKE, ["target.search_space={rank: {grid: [1]}, lr: {grid: [0.1, 0.3]}, head_lr: {grid: [0.01, 0.05]}}",
                             "target.baselines=[vanilla_pt, head_only, single_source]"])
    baselines = baselines_space(spec.target, ["sentiment", "nli"])
    runs = trials(baselines)
    count = Counter(t["method"] for t in runs)
    # 2 lrs x 2 head_lrs per prompt method; the probe has no prompt lr, so 2 head_lrs only
    assert count == {"vanilla_pt": 4, "single_source:sentiment": 4, "single_source:nli": 4, "head_only": 2}
    assert {(t["lr"], t["head_lr"]) for t in runs if t["method"] == "vanilla_pt"} == \
        {(0.1, 0.01), (0.1, 0.05), (0.3, 0.01), (0.3, 0.05)}
    assert all("lr" not in t and "rank" not in t for t in runs if t["method"] == "head_only")


def test_no_baselines_no_baseline_sweep():
    spec = load_spec(SMOKE, ["target.baselines=[]"])
    assert spec.target.baseline_methods(["sentiment"]) == []
    assert baselines_space(spec.target, ["sentiment"]) is None
    assert spec.target.search_space.trial_count([], spec.target.num_samples) == 0
