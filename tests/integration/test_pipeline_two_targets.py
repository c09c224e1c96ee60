"""One pipeline with two targets at once, every baseline, and tasks of all three kinds: sources from
local CSV files (``kind: local``) and from a dataset directory in hub layout (``kind: hf``), targets
from the embedded suite and from local JSONL files. Checked through MLflow: every trial trained its
own target (the two targets have different label counts, so a trial's head gives it away), trials
that ASHA stopped end FINISHED with the README's tag, and the local and hf tasks ran end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.data import write_hub_layout, write_split_files
from helpers.pipeline import run_smoke
from helpers.specs import SMOKE
from mlflow.tracking import MlflowClient

from orchestrator.data import load_task
from orchestrator.spec.schema import TaskSpec
from orchestrator.spec.loading import load_spec
from orchestrator.tracking import PARENT_TAG, STAGE_TAG, STOPPED_TAG, TASK_TAG

pytestmark = pytest.mark.slow

SPLITS = ("train", "validation", "test")
TARGETS = ["review_polarity", "topic"]  # 2 and 4 labels


def rows(task: str, columns: list[str]) -> dict[str, dict[str, list]]:
    """An embedded task written out as plain rows (label names, not ids), per split."""
    data = load_task(TaskSpec(name=task, max_train_examples=200, max_eval_examples=40), 0)
    return {split: {**{c: [ex.texts[i] for ex in getattr(data, split)] for i, c in enumerate(columns)},
                    "label": [data.label_names[ex.label] for ex in getattr(data, split)]} for split in SPLITS}


def write_spec(tmp: Path) -> Path:
    write_split_files(tmp / "sentiment_csv", rows("sentiment", ["text"]), "csv")
    write_hub_layout(tmp / "nli_hub", rows("nli", ["premise", "hypothesis"]))
    write_split_files(tmp / "topic_jsonl", rows("topic", ["text"]), "jsonl")
    spec = yaml.safe_load(SMOKE.read_text())
    spec["name"] = "mpt-two-targets"
    spec["tasks"] = [
        {"name": "sentiment", "kind": "local", "dataset": str(tmp / "sentiment_csv")},
        {"name": "nli", "kind": "hf", "dataset": str(tmp / "nli_hub"), "text_fields": ["premise", "hypothesis"]},
        {"name": "review_polarity", "kind": "embedded", "max_train_examples": 200, "max_eval_examples": 40},
        {"name": "topic", "kind": "local", "dataset": str(tmp / "topic_jsonl")},
    ]
    spec["targets"] = TARGETS
    # one trial at a time per sweep: ASHA sees the trials in grid order, so which one it stops is
    # the same on every run
    spec["target"].update(baselines=["vanilla_pt", "head_only", "single_source"], max_concurrent_trials=1,
                          search_space={"rank": {"grid": [1, 2]}, "lr": {"grid": [0.3]}})
    # The frozen model's dropout on and linear decay (1 warmup step of 12): with dropout off, the tiny
    # model's trials score the same at every rung and ASHA, which cuts only what is strictly worse,
    # stops none. These settings give the trials different values, so the early stop is exercised.
    for stage in ("source", "distill", "target"):
        spec[stage].update(dropout="on", schedule="linear", warmup_ratio=0.05)
    # both of the test Ray's 2 CPUs to the distillation: no baseline trial fits beside it
    spec["distill"]["resources"] = {"num_workers": 2, "cpus_per_worker": 1}
    path = tmp / "two_targets.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def store(local_ray, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_targets")
    spec_path = write_spec(tmp)
    rc, out = run_smoke(tmp, spec=spec_path)
    assert rc == 0, out
    spec = load_spec(spec_path)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], max_results=1000)
    return spec, client, runs, out


def trainable_params(method: str, rank: int, num_labels: int, l: int, d: int = 32) -> int:
    """Prompt (l x d), MPT's u, v (r x (l + d)) and the head (d x C + C) of the tiny model."""
    prompt = 0 if method == "head_only" else l * d + (rank * (l + d) if method == "mpt" else 0)
    return prompt + d * num_labels + num_labels


def test_every_trial_trained_its_own_target(store):
    spec, _, runs, _ = store
    trials = [r for r in runs if r.data.tags.get(STAGE_TAG) == "target"]
    methods = ["mpt", "mpt", "vanilla_pt", "head_only", "single_source:sentiment", "single_source:nli"]
    for task in TARGETS:
        mine = [r for r in trials if r.data.tags[TASK_TAG] == task]
        assert sorted(r.data.params["method"] for r in mine) == sorted(methods), task
        num_labels = load_task(spec.task(task), spec.seed).num_labels
        for r in mine:
            assert f"-target-{task}-" in r.data.tags["mpt.sweep"]  # its own target's sweep ran it ...
            method = r.data.params["method"]
            rank = int(r.data.params["rank"]) if method == "mpt" else 0
            # ... on its own target's data: the head it trained has that target's label count
            assert int(r.data.params["trainable_params"]) == \
                trainable_params(method.split(":")[0], rank, num_labels, spec.prompt.num_virtual_tokens), r.info.run_name
    assert {load_task(spec.task(t), spec.seed).num_labels for t in TARGETS} == {2, 4}


def test_trials_stopped_early_end_finished_with_the_readme_tag(store):
    spec, client, runs, _ = store
    assert {r.info.status for r in runs} == {"FINISHED"}
    trials = [r for r in runs if r.data.tags.get(STAGE_TAG) == "target"]
    stopped = [r for r in trials if r.data.tags.get(STOPPED_TAG) == "true"]
    assert stopped, "ASHA stopped no trial: the grid no longer exercises early stopping"
    for r in trials:
        metric = f"eval_{spec.task(r.data.tags[TASK_TAG]).metric}"
        last = max(m.step for m in client.get_metric_history(r.info.run_id, metric))
        assert (r in stopped) == (last < spec.target.steps), (r.info.run_name, last)
    assert {r.data.params["method"] for r in stopped} == {"mpt"}  # the baselines run FIFO
    readme = (Path(SMOKE).parents[1] / "README.md").read_text()
    assert f"`{STOPPED_TAG}`" in readme


def test_the_baselines_wait_for_a_distillation_that_holds_every_cpu(store):
    """Started beside it, the baseline sweeps would take the CPUs first and keep them (Tune reuses a
    trial's resources for the next trial), and the distillation would wait for all of them."""
    _, _, runs, out = store
    assert ("[pipeline] baseline sweeps beside the distillation: review_polarity none (it starts when the "
            "distillation ends), topic none (it starts when the distillation ends)") in out
    (distill,) = [r for r in runs if r.data.tags.get(STAGE_TAG) == "distill"]
    baselines = [r for r in runs if r.data.tags.get("mpt.sweep", "").endswith("-baselines")]
    assert len(baselines) == 2 * 4  # per target: vanilla_pt, head_only and single_source from each source
    assert min(r.info.start_time for r in baselines) >= distill.info.end_time


def test_local_and_hf_tasks_run_end_to_end(store, tmp_path):
    spec, client, runs, _ = store
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    kinds = {t.name: t.kind for t in spec.tasks}
    assert kinds == {"sentiment": "local", "nli": "hf", "review_polarity": "embedded", "topic": "local"}
    for r in runs:
        if r.data.tags.get(STAGE_TAG) == "source":
            task = r.data.tags[TASK_TAG]
            assert f"'kind': '{kinds[task]}'" in parent.data.params[f"tasks.{task}"]
            assert [a.path for a in client.list_artifacts(r.info.run_id, "teacher")] == \
                [f"teacher/teacher_{task}.safetensors"]
            assert client.get_metric_history(r.info.run_id, "eval_accuracy")
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "report/best.csv", str(tmp_path)))
    assert set(table["task"]) == set(TARGETS)
    assert table["test_value"].notna().all()
