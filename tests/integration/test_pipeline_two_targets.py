"""One pipeline with two targets at once, every baseline, and tasks of all three kinds: sources from
local CSV files (``kind: local``) and from a dataset directory in hub layout (``kind: hf``), targets
from the embedded suite and from local JSONL files. Checked through MLflow: every trial trained its
own target (the two targets have different label counts, so a trial's head gives it away), trials
that ASHA stopped end FINISHED with the README's tag, and the local and hf tasks ran end to end on
the files' own rows.

The files hold data the embedded suite cannot produce: task, column and label names of their own
and odd row counts (embedded splits are 2000/400/400, capped here at 200/40), so a loader that
ignored ``kind`` and generated an embedded task would fail the dataset checks, not pass them."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from helpers.data import hub_split_file, write_hub_layout, write_split_files
from helpers.pipeline import run_smoke
from helpers.specs import SMOKE
from mlflow.tracking import MlflowClient

from orchestrator.data import load_task
from orchestrator.data.types import seed_int
from orchestrator.serve.pyfunc import card_of_metadata
from orchestrator.spec.schema import TaskSpec
from orchestrator.spec.loading import load_spec
from orchestrator.tracking import (BEST_TAG, DATASET_CONTEXT, MODEL_ARTIFACT, PARENT_TAG, PREDICTIONS_ARTIFACT,
                                   STAGE_TAG, STOPPED_TAG, TASK_TAG)

pytestmark = pytest.mark.slow

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class FileTask:
    """A task written to files from an embedded one: renamed, relabelled and cut to its own sizes."""

    name: str
    kind: str
    fmt: str                      # csv, jsonl, or hub (parquet in hub layout)
    embedded: str                 # where the texts come from
    text_fields: tuple[str, ...]
    label_field: str
    relabel: dict[str, str]       # embedded label name -> this task's
    sizes: dict[str, int]         # rows per split

    @property
    def label_names(self) -> list[str]:
        return sorted(self.relabel.values())  # string labels: the loader's ids are their sorted order

    def split_file(self, directory: Path, split: str) -> Path:
        return hub_split_file(directory, split) if self.fmt == "hub" else directory / f"{split}.{self.fmt}"


# odd sizes, different per task and per split, so a count names the split and task it came from
FILE_TASKS = [
    FileTask("mood", "local", "csv", "sentiment", ("review",), "feeling", {"negative": "gloomy", "positive": "upbeat"},
             {"train": 37, "validation": 11, "test": 13}),
    FileTask("inference", "hf", "hub", "nli", ("premise", "hypothesis"), "relation",
             {"entailment": "follows", "neutral": "unrelated", "contradiction": "conflicts"},
             {"train": 45, "validation": 15, "test": 17}),
    # a target: its validation is large enough for ASHA to tell its trials apart
    FileTask("subject", "local", "jsonl", "topic", ("headline",), "section",
             {"sports": "athletics", "food": "cuisine", "technology": "gadgets", "weather": "climate"},
             {"train": 157, "validation": 41, "test": 39}),
]
BY_NAME = {t.name: t for t in FILE_TASKS}
SOURCES = ["mood", "inference"]
TARGETS = ["review_polarity", "subject"]  # 2 and 4 labels


def rows(task: FileTask) -> dict[str, dict[str, list]]:
    """The first rows of task's embedded suite task (balanced prefixes), under its own names."""
    data = load_task(TaskSpec(name=task.embedded, max_train_examples=200, max_eval_examples=60), 0)
    out = {}
    for split in SPLITS:
        examples = getattr(data, split)[: task.sizes[split]]
        assert len(examples) == task.sizes[split]
        out[split] = {**{c: [ex.texts[i] for ex in examples] for i, c in enumerate(task.text_fields)},
                      task.label_field: [task.relabel[data.label_names[ex.label]] for ex in examples]}
    return out


def read_back(task: FileTask, directory: Path, split: str) -> pd.DataFrame:
    """A split as written, read with pandas alone (not the product's readers)."""
    path = task.split_file(directory, split)
    if task.fmt == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if task.fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_parquet(path)


def expected_digest(task: FileTask, frame: pd.DataFrame, split: str, seed: int) -> str:
    """The dataset digest MLflow should hold for a split: the product's definition (sha256 over each
    example's texts and label id, in the loader's seeded shuffle order) applied to the file's rows."""
    order = frame.sample(frac=1.0, random_state=seed_int(task.name, seed, "shuffle", split) % 2**32)
    digest = hashlib.sha256()
    for _, row in order.iterrows():
        texts = [str(row[c]) for c in task.text_fields]
        digest.update(json.dumps([texts, task.label_names.index(row[task.label_field])]).encode())
    return digest.hexdigest()[:16]


def write_spec(tmp: Path) -> Path:
    for task in FILE_TASKS:
        if task.fmt == "hub":
            write_hub_layout(tmp / task.name, rows(task))
        else:
            write_split_files(tmp / task.name, rows(task), task.fmt)
    spec = yaml.safe_load(SMOKE.read_text())
    spec["name"] = "mpt-two-targets"
    spec["tasks"] = [
        *({"name": t.name, "kind": t.kind, "dataset": str(tmp / t.name), "text_fields": list(t.text_fields),
           "label_field": t.label_field} for t in FILE_TASKS[:2]),
        {"name": "review_polarity", "kind": "embedded", "max_train_examples": 200, "max_eval_examples": 40},
        *({"name": t.name, "kind": t.kind, "dataset": str(tmp / t.name), "text_fields": list(t.text_fields),
           "label_field": t.label_field} for t in FILE_TASKS[2:]),
    ]
    spec["sources"] = SOURCES
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
    methods = ["mpt", "mpt", "vanilla_pt", "head_only", *(f"single_source:{s}" for s in SOURCES)]
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
            "distillation ends), subject none (it starts when the distillation ends)") in out
    (distill,) = [r for r in runs if r.data.tags.get(STAGE_TAG) == "distill"]
    baselines = [r for r in runs if r.data.tags.get("mpt.sweep", "").endswith("-baselines")]
    assert len(baselines) == 2 * 4  # per target: vanilla_pt, head_only and single_source from each source
    assert min(r.info.start_time for r in baselines) >= distill.info.end_time


def test_local_and_hf_tasks_run_end_to_end(store, tmp_path):
    spec, client, runs, _ = store
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    kinds = {t.name: t.kind for t in spec.tasks}
    assert kinds == {"mood": "local", "inference": "hf", "review_polarity": "embedded", "subject": "local"}
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


def file_inputs(runs) -> list[tuple]:
    """(run, task, split, dataset) for every dataset input of a file task, in any run."""
    return [(r, d.dataset.name, {t.key: t.value for t in d.tags}[DATASET_CONTEXT], d.dataset)
            for r in runs for d in r.inputs.dataset_inputs if d.dataset.name in BY_NAME]


def test_the_file_tasks_trained_and_evaluated_exactly_the_files_rows(store):
    """Every run's dataset inputs of a local or hf task are the files' splits: their source, their
    row counts, their label names and a digest of their rows; and each run has the ones it used."""
    spec, _, runs, _ = store
    datasets = {d.dataset.name for r in runs for d in r.inputs.dataset_inputs}
    assert datasets == {*BY_NAME, "review_polarity"}  # nothing embedded under a file task's name, or beside it
    seen = Counter()
    for r, name, split, dataset in file_inputs(runs):
        task, directory = BY_NAME[name], Path(spec.task(name).dataset)
        frame = read_back(task, directory, split)
        assert len(frame) == task.sizes[split], (name, split)  # the file holds what rows() wrote
        where = r.info.run_name, name, split
        if task.kind == "hf":
            assert (dataset.source_type, json.loads(dataset.source)) == \
                ("hugging_face", {"path": str(directory), "config_name": None}), where
        else:
            assert (dataset.source_type, json.loads(dataset.source)) == \
                ("local", {"uri": directory.resolve().as_uri()}), where
        assert json.loads(dataset.profile) == {"num_rows": task.sizes[split], "split": split,
                                               "split_rule": "attempt", "labels": task.label_names}, where
        assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == [*task.text_fields, "label"], where
        assert dataset.digest == expected_digest(task, frame, split, spec.seed), where
        seen[r.data.tags[STAGE_TAG], name, split] += 1
    trials = [r for r in runs if r.data.tags.get(STAGE_TAG) == "target" and r.data.tags[TASK_TAG] == "subject"]
    chosen = [r for r in trials if r.data.tags.get(BEST_TAG) == "true"]
    assert len(chosen) == 4  # MPT and the three baselines, at one seed
    assert seen == {
        **{("source", s, split): 1 for s in SOURCES for split in ("train", "validation")},
        **{("distill", s, split): 1 for s in SOURCES for split in ("train", "validation")},
        ("target", "subject", "train"): len(trials), ("target", "subject", "validation"): len(trials),
        ("target", "subject", "test"): len(chosen),  # test is scored for the chosen trials only
    }


def test_the_chosen_trials_scored_the_files_test_rows_under_their_label_names(store, tmp_path):
    spec, client, runs, _ = store
    task = BY_NAME["subject"]
    frame = read_back(task, Path(spec.task(task.name).dataset), "test")
    expected = Counter(task.label_names.index(v) for v in frame[task.label_field])
    chosen = [r for r in runs if r.data.tags.get(TASK_TAG) == task.name and r.data.tags.get(BEST_TAG) == "true"]
    for r in chosen:
        scored = json.loads(Path(client.download_artifacts(r.info.run_id, PREDICTIONS_ARTIFACT,
                                                           str(tmp_path / r.info.run_id))).read_text())
        assert Counter(scored["labels"]) == expected, r.info.run_name
        assert len(scored["predictions"]) == task.sizes["test"], r.info.run_name
    # the registered MPT model answers in the files' label names and reads their text column
    (mpt,) = [r for r in chosen if r.data.params["method"] == "mpt"]
    mlmodel = client.download_artifacts(mpt.info.run_id, f"{MODEL_ARTIFACT}/MLmodel", str(tmp_path / "model"))
    card = card_of_metadata(mlflow.models.Model.load(mlmodel).metadata)
    assert (card.task, card.label_names, card.text_columns) == (task.name, task.label_names, list(task.text_fields))
