"""``plan`` announces exactly the trials that run: for every shipped spec, and for baseline sweeps
with head_only and single_source, the count ``plan`` prints and ``SearchSpace.trial_count`` equal
the trials Tune's own variant generator (``BasicVariantGenerator``, what ``Tuner.fit`` uses) makes
of the param spaces the target stage builds. No Ray cluster is started. And the offline verbs on a
spec: every shipped pipeline validates and plans, ``validate`` lists every problem, ``run`` refuses a
bad spec, or a resource request no node can hold, before any compute (exit code 2); and the
``mpt-orchestrator`` console script is the same CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers.specs import PIPELINES, ROOT, SMOKE
from ray.tune.experiment import Experiment
from ray.tune.search import BasicVariantGenerator

from orchestrator.cli import EXIT_BAD_INPUT, main, plan_lines
from orchestrator.spec.schema import PipelineSpec, SearchSpace
from orchestrator.spec.loading import load_spec

DEMO = ROOT / "pipelines" / "demo.yaml"
TARGETS_LINE = re.compile(r"^3\. targets: (\d+) Ray Tune sweeps in parallel, (\d+) MPT trial\(s\) each .*"
                          r"\+ (\d+) baseline trial\(s\)")


def noop(config: dict) -> None:
    pass


def tune_trials(space: dict, storage: Path) -> list[dict]:
    """The trials Tune makes of ``space`` (at Tune's num_samples 1, as the target stage runs it: the
    space holds the samples): their settings, one dict per trial."""
    experiment = Experiment(f"plan-{uuid.uuid4().hex[:8]}", noop, config=space, num_samples=1,
                            storage_path=str(storage))
    generator = BasicVariantGenerator()
    generator.add_configurations([experiment])
    trials = []
    while (trial := generator.next_trial()) is not None:
        trials.append(SearchSpace.trial_settings(trial.config))
    # not generator.total_samples: Tune's own estimate misses the grids nested in a baselines sweep's
    # grid over methods (it counts 8 where 20 trials run); the trials it makes are what runs
    assert generator.is_finished()
    return trials


def announced(spec: PipelineSpec) -> tuple[int, int, int]:
    """(targets, MPT trials per target, baseline trials per target) as ``plan`` prints them."""
    lines = [line for line in plan_lines(spec) if line.startswith("3. targets:")]
    assert len(lines) == 1, plan_lines(spec)
    match = TARGETS_LINE.match(lines[0])
    assert match, lines[0]
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


def what_tune_runs(spec: PipelineSpec, storage: Path) -> tuple[list[dict], list[dict]]:
    """The MPT sweeps' and the baselines sweeps' trials over every budget, from the spaces the target
    stage builds."""
    stage, seeds = spec.target, spec.seed_list()
    methods = stage.baseline_methods(spec.sources)
    mpt, baselines = [], []
    for shots in stage.budgets():
        mpt += tune_trials(stage.search_space.tune_space(["mpt"], stage.defaults(), seeds, shots, stage.num_samples),
                           storage)
        baselines += tune_trials(stage.search_space.tune_space(methods, stage.defaults(), seeds, shots,
                                                               stage.num_samples), storage) if methods else []
    return mpt, baselines


def check_plan_matches_tune(spec: PipelineSpec, storage: Path) -> tuple[int, int]:
    mpt, baselines = what_tune_runs(spec, storage)
    stage, seeds, budgets = spec.target, len(spec.seed_list()), len(spec.target.budgets())
    methods = stage.baseline_methods(spec.sources)
    assert stage.search_space.trial_count(["mpt"], stage.num_samples, seeds) * budgets == len(mpt)
    assert stage.search_space.trial_count(methods, stage.num_samples, seeds) * budgets == len(baselines)
    assert announced(spec) == (len(spec.targets), len(mpt), len(baselines))
    assert {t["method"] for t in mpt} == {"mpt"}
    assert {t["method"] for t in baselines} == set(methods)
    return len(mpt), len(baselines)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_plan_announces_what_tune_runs_for_every_shipped_spec(path, tmp_path):
    mpt, _ = check_plan_matches_tune(load_spec(path), tmp_path)
    assert mpt > 0


def test_baselines_with_head_only_and_single_source(tmp_path):
    spec = load_spec(SMOKE, ["target.search_space={rank: {grid: [1, 2]}, lr: {grid: [0.1, 0.3]}, "
                             "head_lr: {grid: [0.01, 0.05]}}",
                             "target.baselines=[vanilla_pt, head_only, single_source]", "target.num_samples=2"])
    assert check_plan_matches_tune(spec, tmp_path) == (2 * 2 * 2 * 2, 2 * (4 + 2 * 4 + 2))  # rank x lr x head_lr x samples
    _, baselines = what_tune_runs(spec, tmp_path)
    assert Counter(t["method"] for t in baselines) == {"vanilla_pt": 8, "single_source:sentiment": 8,
                                                        "single_source:nli": 8, "head_only": 4}


def test_the_plan_says_what_each_seed_retrains_and_what_a_verdict_holds_for():
    per_seed = "\n".join(plan_lines(load_spec(SMOKE, ["seeds=[0, 1]"])))
    assert "seeds [0, 1] (each its own sources and distillation" in per_seed
    assert "seed_scope pipeline: steps 1 and 2 run once per seed (2 x)" in per_seed
    shared = "\n".join(plan_lines(load_spec(SMOKE, ["seeds=[0, 1]", "seed_scope=targets"])))
    assert "the verdicts hold for that one shared prompt only" in shared
    assert "(one seed: differences, no verdict)" in "\n".join(plan_lines(load_spec(SMOKE)))


def test_the_linear_probe_is_not_counted_once_per_prompt_lr(tmp_path):
    """2 sources, a 2-point lr grid: 2 vanilla_pt + 2 x 2 single_source + 1 head_only."""
    spec = load_spec(DEMO, ["seeds=[0]",
                            "target.search_space={rank: {grid: [1, 2]}, lr: {grid: [0.03, 0.1]}}",
                            "target.baselines=[vanilla_pt, head_only, single_source]"])
    assert check_plan_matches_tune(spec, tmp_path) == (4, 7)
    assert "+ 7 baseline trial(s)" in "\n".join(plan_lines(spec))


@pytest.mark.parametrize("space, num_samples", [
    ("{rank: {grid: [1]}, lr: {loguniform: [0.01, 0.3]}}", 3),  # no grid: num_samples trials per method
    ("{rank: {choice: [1, 2]}, lr: {grid: [0.1, 0.3, 1.0]}, batch_size: 8}", 2),
    ("{rank: {grid: [1, 2]}, lr: 0.1, head_lr: {grid: [0.01, 0.05]}, weight_decay: {uniform: [0.0, 0.1]}}", 1),
])
@pytest.mark.parametrize("baselines", [[], ["head_only"], ["single_source"], ["head_only", "single_source"],
                                       ["vanilla_pt", "head_only", "single_source"]])
def test_plan_matches_tune_for_other_spaces_and_baselines(space, num_samples, baselines, tmp_path):
    spec = load_spec(SMOKE, [f"target.search_space={space}", f"target.baselines=[{', '.join(baselines)}]",
                             f"target.num_samples={num_samples}"])
    check_plan_matches_tune(spec, tmp_path)


def test_every_configuration_runs_at_every_seed_and_budget(tmp_path):
    """Seeds and budgets multiply the trials; the ablations search rank like MPT, since they train its model."""
    spec = load_spec(SMOKE, ["seeds=[0, 1, 2]", "target.shots=[4, 8]",
                             "target.search_space={rank: {grid: [1, 2]}, lr: {grid: [0.1, 0.3]}}",
                             "target.baselines=[no_distill, joint_multitask, head_only]"])
    assert check_plan_matches_tune(spec, tmp_path) == (4 * 3 * 2, (4 + 4 + 1) * 3 * 2)
    mpt, baselines = what_tune_runs(spec, tmp_path)
    assert Counter((t["seed"], t["shots"]) for t in mpt) == {(s, b): 4 for s in (0, 1, 2) for b in (4, 8)}
    assert {t["rank"] for t in baselines if t["method"] == "no_distill"} == {1, 2}
    assert "every configuration at 3 seed(s) [0, 1, 2]" in "\n".join(plan_lines(spec))


def test_a_random_configuration_is_drawn_once_and_run_at_every_seed_by_every_method(tmp_path):
    """Tune draws a random domain afresh for every trial; the stage draws it once per sample, so a
    configuration's seeds train the same lr, and the baselines get MPT's lrs."""
    overrides = ["seeds=[0, 1, 2]", "target.num_samples=2", "target.baselines=[vanilla_pt, head_only]",
                 "target.search_space={rank: {grid: [1, 2]}, lr: {loguniform: [0.01, 0.3]}}"]
    spec = load_spec(SMOKE, overrides)
    mpt, baselines = what_tune_runs(spec, tmp_path)
    seeds_of = Counter(SearchSpace.configuration(t) for t in mpt)
    assert len(seeds_of) == 2 * 2 and set(seeds_of.values()) == {3}  # rank x draws, each at 3 seeds
    lrs = {t["lr"] for t in mpt}
    assert len(lrs) == 2 and all(0.01 <= lr <= 0.3 for lr in lrs)
    assert {t["lr"] for t in baselines if t["method"] == "vanilla_pt"} == lrs
    assert Counter(t["method"] for t in baselines) == {"vanilla_pt": 2 * 3, "head_only": 2 * 3}
    assert all("lr" not in t for t in baselines if t["method"] == "head_only")
    again, _ = what_tune_runs(load_spec(SMOKE, overrides), tmp_path)
    assert {t["lr"] for t in again} == lrs  # drawn from the spec's seed: the same on a second run


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_pipeline_validates_and_plans(path, capsys):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run") or first.startswith("# Run (on a cluster"), "spec must start with its command"
    assert main(["validate", str(path)]) == 0
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1. sources" in out and "3. targets" in out


def test_validate_exits_non_zero_listing_every_problem(tmp_path, capsys, with_):
    raw = with_(distill__rank=0, source__lr=-1)
    raw["tasks"][0]["kind"] = "local"
    raw["tasks"][0]["dataset"] = str(tmp_path / "missing")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "distill.rank" in err and "source.lr" in err
    raw["distill"]["rank"], raw["source"]["lr"] = 1, 0.1
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == EXIT_BAD_INPUT  # now the data problem shows
    assert "tasks.sentiment" in capsys.readouterr().err


def test_run_refuses_a_missing_model_before_any_compute(tmp_path, capsys, with_):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(with_(model__name_or_path=str(tmp_path / "no-model"))))
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == EXIT_BAD_INPUT
    assert "model.name_or_path" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def test_run_refuses_a_request_no_node_can_hold_before_any_compute(tmp_path, capsys, monkeypatch, bert_dir):
    """Without an address the pre-flight weighs the local machine, as Ray would see it, and starts nothing."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/ray_bootstrap_config.yaml: no node types to add
    if ray.is_initialized():  # a Ray left by another test would be the cluster weighed, and hide one started here
        ray.shutdown()
    rc = main(["run", str(SMOKE), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--set",
               f"model.name_or_path={bert_dir}", "--set", f"storage_path={tmp_path}/ray_results",
               "--set", "source.resources.cpus_per_worker=100000"])
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT, err
    assert "source.resources" in err and "{CPU: 100000}" in err and "PENDING forever" in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ray_results").exists()


def test_the_console_script_is_the_same_cli(tmp_path):
    """``mpt-orchestrator`` (pyproject's [project.scripts], installed beside this interpreter) prints what
    ``python -m orchestrator`` prints and exits with the same codes."""
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]
    assert scripts == 'mpt-orchestrator = "orchestrator.cli:main"'  # what a fresh install makes the script of
    script = Path(sys.executable).parent / "mpt-orchestrator"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nmodel: {name_or_path: tiny:bert}\n")
    for args, code, needle in ((["plan", str(SMOKE)], 0, "1. sources"),
                               (["validate", str(bad)], EXIT_BAD_INPUT, "tasks")):
        as_script = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        as_module = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                                   cwd=tmp_path, timeout=120)
        assert (as_script.returncode, as_script.stdout, as_script.stderr) == \
            (as_module.returncode, as_module.stdout, as_module.stderr)
        assert as_script.returncode == code and needle in as_script.stdout + as_script.stderr, as_script.stderr


def test_plan_against_an_address_with_credentials_never_shows_them(tmp_path, capsys, monkeypatch):
    """An address that cannot be reached is one issue on cluster.address, its credentials hidden (Ray
    Client gives up after its 30 s timeout)."""
    import ray

    monkeypatch.chdir(tmp_path)
    if ray.is_initialized():  # connected, the pre-flight would weigh that Ray and never dial the address
        ray.shutdown()
    rc = main(["plan", str(SMOKE), "--address", "ray://mpt:SENTINEL-ray@127.0.0.1:1",
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert rc == EXIT_BAD_INPUT and "cluster.address" in out and "ray://***@127.0.0.1:1" in out, out
    assert "SENTINEL" not in out
