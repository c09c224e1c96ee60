"""The pure parts of orchestrator/tracking.py: the MLflow contract's names spelled out there alone,
the line of a (Ray-wrapped) error that says what went wrong, and a task split as an MLflow dataset
input (credentials redacted from any text: tests/unit/runtime/test_redaction.py)."""

from __future__ import annotations

import ast
import json
import re
import threading
from pathlib import Path

import pytest
from helpers.models import small
from mlflow.tracking import MlflowClient

import orchestrator
from orchestrator.spec.schema import TaskSpec
from orchestrator.tracking import (DATASET_CONTEXT, ERROR_TAG, RunLogger, StageFailed, TrackingContext, child_run,
                                   dataset_input, root_cause)


QUOTED_TAG = re.compile(r"[\"'`]mpt\.")  # a tag name or prefix written out: "mpt.x", f"mpt.{...}", `mpt.x`


def test_every_tag_name_of_the_contract_is_written_in_tracking_alone():
    package = Path(orchestrator.__file__).parent
    contract = package / "tracking.py"
    assert QUOTED_TAG.search(contract.read_text())  # the pattern finds the names where they live
    elsewhere = [f"{path.relative_to(package)}:{number}: {line.strip()}"
                 for path in sorted(package.rglob("*.py")) if path != contract
                 for number, line in enumerate(path.read_text().splitlines(), 1) if QUOTED_TAG.search(line)]
    assert elsewhere == [], "use the constants of orchestrator/tracking.py:\n" + "\n".join(elsewhere)


ARTIFACT_CALLS = {"log_artifact": 1, "log_artifacts": 1, "download_artifacts": 1, "list_artifacts": 1, "log_tensors": 0}


def artifact_literals(path: Path) -> list[str]:
    """Artifact paths written out as a literal where a run's artifact is logged, listed or fetched."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ARTIFACT_CALLS:
            args = node.args[ARTIFACT_CALLS[node.func.attr]:][:2 if node.func.attr == "download_artifacts" else 1]
            found += [f"{path.name}:{node.lineno}" for a in args if isinstance(a, (ast.Constant, ast.JoinedStr))]
    return found


def test_artifact_paths_are_the_contract_s_constants(tmp_path):
    package = Path(orchestrator.__file__).parent
    elsewhere = [hit for path in sorted(package.rglob("*.py")) if path.name != "tracking.py"
                 for hit in artifact_literals(path)]
    assert elsewhere == [], "name the artifact path in orchestrator/tracking.py"
    sample = tmp_path / "sample.py"
    sample.write_text('run.log_artifact(f, "logs")\nclient.download_artifacts(run_id, f"x/{t}.json", d)\n')
    assert len(artifact_literals(sample)) == 2  # the scan sees a literal where there is one


RAY_ERROR = """ray::run_distill() (pid=4242, ip=127.0.0.1)
  File "/work/main/orchestrator/pipeline/stages/distill.py", line 90, in run_distill
    result = fit_trainer(ctx, distill_train_loop, config, stage.resources, "distill")
ray.exceptions.RayTaskError(StageFailed): ray::TrainController.run() (pid=4300, ip=127.0.0.1)
  File "/work/main/orchestrator/tracking.py", line 170, in child_run
    raise StageFailed(f"stage {stage}, task {task}: {cause}") from err
orchestrator.tracking.StageFailed: stage distill, task all: FloatingPointError: training diverged (loss nan at step 3)
"""


def test_root_cause_of_a_ray_wrapped_stage_failure():
    assert root_cause(RuntimeError(RAY_ERROR)) == \
        "stage distill, task all: FloatingPointError: training diverged (loss nan at step 3)"
    assert root_cause(StageFailed("stage source, task nli: out of memory")) == "stage source, task nli: out of memory"


def test_a_failing_stage_names_its_stage_task_and_cause_and_its_run_fails(tmp_path):
    """What the driver prints when a stage fails for good (``root_cause`` of the error that reaches it),
    for each stage as it names its task; the faults test sees it through a real pipeline (distill)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    ctx = TrackingContext(uri, client.create_experiment("e"), "parent", "run-tag")
    for stage, task in (("source", "nli"), ("target", "review_polarity"), ("distill", "sentiment+nli")):
        with pytest.raises(StageFailed) as failed, child_run(ctx, stage, task, f"{stage}-{task}", {}) as run:
            raise FloatingPointError("training diverged (loss nan at step 3)")
        assert root_cause(failed.value) == f"stage {stage}, task {task}: training diverged (loss nan at step 3)"
        logged = client.get_run(run.run_id)
        assert logged.info.status == "FAILED" and "training diverged" in logged.data.tags[ERROR_TAG]


def test_root_cause_of_other_errors():
    text = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: bad lr\n\n"
    assert root_cause(RuntimeError(text)) == "ValueError: bad lr"
    assert root_cause(RuntimeError("first line\nthe last line says it\n")) == "the last line says it"
    assert root_cause(KeyError()) == "KeyError"


def test_a_split_as_an_mlflow_dataset_input():
    data = small("topic_match")
    spec = TaskSpec(name="topic_match", max_train_examples=64, max_eval_examples=16)
    item = dataset_input(spec, data, "train", seed=0)
    assert item.dataset.name == "topic_match" and [(t.key, t.value) for t in item.tags] == [(DATASET_CONTEXT, "train")]
    assert item.dataset.source_type == "code" and json.loads(item.dataset.source)["task"] == "topic_match"
    assert json.loads(item.dataset.profile)["num_rows"] == 64
    assert [c["name"] for c in json.loads(item.dataset.schema)["mlflow_colspec"]] == ["text", "text_pair", "label"]
    # the digest follows the examples: the same split gives the same digest, another split another one
    assert item.dataset.digest == dataset_input(spec, data, "train", seed=0).dataset.digest
    assert item.dataset.digest != dataset_input(spec, data, "validation", seed=0).dataset.digest
    data.train[0], data.train[1] = data.train[1], data.train[0]
    assert item.dataset.digest != dataset_input(spec, data, "train", seed=0).dataset.digest

    hub = TaskSpec(name="rte", kind="hf", dataset="glue", config="rte", text_fields=["sentence1", "sentence2"])
    item = dataset_input(hub, data, "test", seed=0)
    assert item.dataset.source_type == "hugging_face" and json.loads(item.dataset.source) == \
        {"path": "glue", "config_name": "rte"}
    assert json.loads(item.dataset.schema)["mlflow_colspec"][0]["name"] == "sentence1"


def test_runs_that_start_together_all_get_their_datasets(tmp_path, caplog):
    """Concurrent trials insert the same dataset row; without the retry about one in seven lost the race
    (UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest) and failed."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e")
    data = small("sentiment")
    spec = TaskSpec(name="sentiment", max_train_examples=64, max_eval_examples=16)
    runs = [client.create_run(experiment).info.run_id for _ in range(16)]
    barrier = threading.Barrier(len(runs))
    errors = []

    def log(run_id: str) -> None:
        barrier.wait()
        try:
            RunLogger(uri, run_id).log_datasets(spec, data, ("train", "validation"), 0)
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=log, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and "not logged" not in caplog.text
    for run_id in runs:
        contexts = sorted(t.value for i in client.get_run(run_id).inputs.dataset_inputs for t in i.tags)
        assert contexts == ["train", "validation"]
