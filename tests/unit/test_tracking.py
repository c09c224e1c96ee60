"""The pure parts of orchestrator/tracking.py: the MLflow contract's names spelled out there alone,
credentials redacted from any text, the line of a (Ray-wrapped) error that says what went wrong, and
a task split as an MLflow dataset input."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from helpers.models import small
from mlflow.tracking import MlflowClient

import orchestrator
from orchestrator.spec.schema import TaskSpec
from orchestrator.tracking import DATASET_CONTEXT, RunLogger, StageFailed, dataset_input, redact, root_cause


QUOTED_TAG = re.compile(r"[\"'`]mpt\.")  # a tag name or prefix written out: "mpt.x", f"mpt.{...}", `mpt.x`


def test_every_tag_name_of_the_contract_is_written_in_tracking_alone():
    package = Path(orchestrator.__file__).parent
    contract = package / "tracking.py"
    assert QUOTED_TAG.search(contract.read_text())  # the pattern finds the names where they live
    elsewhere = [f"{path.relative_to(package)}:{number}: {line.strip()}"
                 for path in sorted(package.rglob("*.py")) if path != contract
                 for number, line in enumerate(path.read_text().splitlines(), 1) if QUOTED_TAG.search(line)]
    assert elsewhere == [], "use the constants of orchestrator/tracking.py:\n" + "\n".join(elsewhere)


def test_redact_a_uri_with_userinfo():
    assert redact("http://user:pass@host:5000/x") == "http://***@host:5000/x"


def test_redact_finds_the_password_alone_in_a_text():
    uri = "https://bob:s3cr3t-pw@mlflow.example:443"
    text = f"could not reach {uri}/api/2.0 (the server said: bad password s3cr3t-pw for user bob)"
    out = redact(text, uri)
    assert "s3cr3t-pw" not in out and "bob" not in out
    assert out.startswith("could not reach https://***@mlflow.example:443/api/2.0")


def test_redact_query_string_values():
    uri = "s3://bucket/p?X-Amz-Signature=abcdef&token=secret123"
    out = redact(uri)
    assert "abcdef" not in out and "secret123" not in out
    assert out == "s3://bucket/p?X-Amz-Signature=***&token=***"
    assert "secret123" not in redact(f"upload to {uri} failed: token secret123 expired", uri)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000/api/2.0/mlflow", "sqlite:////tmp/mlflow.db", "databricks",
                                 "s3://bucket/ray_results", "file:///mnt/efs/ray_results"])
def test_a_uri_without_secrets_is_unchanged(uri):
    assert redact(uri) == uri
    assert redact(f"failed: {uri}", uri) == f"failed: {uri}"


def test_redact_leaves_short_userinfo_parts_alone_elsewhere_in_the_text():
    # a one-letter user or password would otherwise mask every such letter of the message
    assert redact("http://u:p@host:5000/api/path") == "http://***@host:5000/api/path"


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
