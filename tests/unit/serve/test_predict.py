"""The ``predict`` verb's checks, before any compute: an unknown model, alias or store, a model that
is not one of ours, missing columns, empty files, unreadable formats and outputs each exit 2 with a
message naming the argument, and no Ray is started."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import mlflow
import pandas as pd
import pytest
from helpers.models import small
from helpers.served import pyfunc_dir
from mlflow.tracking import MlflowClient

from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.serve.registry import register
from orchestrator.tracking import VALIDATION_TAG


class NotOurs(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory, bert_dir):
    """A SQLite store with our pair-task model as mpt-topic_match@champion and a foreign model."""
    tmp = tmp_path_factory.mktemp("predict_checks")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("mpt", artifact_location=(tmp / "mlartifacts").as_uri())
    ours = pyfunc_dir(tmp / "ours", bert_dir, small("topic_match"))
    register(uri, client.create_run(experiment).info.run_id, "mpt-topic_match", ours, {VALIDATION_TAG: "0.5"})
    foreign = tmp / "foreign"
    mlflow.pyfunc.save_model(str(foreign), python_model=NotOurs(), pip_requirements=["mlflow"])
    register(uri, client.create_run(experiment).info.run_id, "foreign", foreign, {VALIDATION_TAG: "0.5"})
    return tmp, uri


def ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@pytest.fixture(autouse=True)
def no_ray_before():
    """A Ray left by an earlier test would hide one a check started."""
    if ray_started():
        sys.modules["ray"].shutdown()


def predict(uri: str, model: str, input_path, out, *extra: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["predict", model, "--input", str(input_path), "--out", str(out), "--tracking-uri", uri, *extra])
    if rc == EXIT_BAD_INPUT:
        assert not ray_started(), "a check before compute started Ray"
    return rc, err.getvalue()


def write(path, rows: list[dict], fmt: str):
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame.to_parquet(path)
    return path


PAIR = [{"text": "The chef cooked pasta.", "text_pair": "Rain fell all day."}]


@pytest.mark.parametrize("model, needle", [
    ("models:/nope@champion", "no registered model named 'nope'"),
    ("models:/mpt-topic_match@staging", "model 'mpt-topic_match' has no alias 'staging'"),
    ("models:/mpt-topic_match/9", "cannot be loaded"),
    ("models:/foreign@champion", "is not an MPT model of this project"),
])
def test_bad_model_uris(store, tmp_path, model, needle):
    tmp, uri = store
    rc, err = predict(uri, model, write(tmp_path / "in.csv", PAIR, "csv"), tmp_path / "out.csv")
    assert rc == EXIT_BAD_INPUT and "MODEL_URI" in err and needle in err, err


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_missing_column_is_named_with_the_fix(store, tmp_path, fmt):
    _, uri = store
    path = write(tmp_path / f"in.{fmt}", [{"text": "one sentence only"}], fmt)
    rc, err = predict(uri, "models:/mpt-topic_match@champion", path, tmp_path / "out.csv")
    assert rc == EXIT_BAD_INPUT and "has no column 'text_pair'" in err and "['text', 'text_pair']" in err, err


@pytest.mark.parametrize("content", ["", "text,text_pair\n"])
def test_empty_csv_files(store, tmp_path, content):
    _, uri = store
    (tmp_path / "in.csv").write_text(content)
    rc, err = predict(uri, "models:/mpt-topic_match@champion", tmp_path / "in.csv", tmp_path / "out.csv")
    assert rc == EXIT_BAD_INPUT and "is empty (no rows)" in err, err


def test_empty_jsonl_and_bad_paths_are_all_reported_at_once(store, tmp_path):
    _, uri = store
    (tmp_path / "in.jsonl").write_text("\n\n")
    rc, err = predict(uri, "models:/mpt-topic_match@champion", tmp_path / "in.jsonl", tmp_path / "out.txt")
    assert rc == EXIT_BAD_INPUT and "is empty (no rows)" in err and "--out" in err and "unknown output format" in err
    rc, err = predict(uri, "models:/mpt-topic_match@champion", tmp_path / "none.csv", tmp_path / "out.csv")
    assert rc == EXIT_BAD_INPUT and "no such file or directory" in err
    (tmp_path / "in.txt").write_text("hello\n")
    rc, err = predict(uri, "models:/mpt-topic_match@champion", tmp_path / "in.txt", tmp_path / "out.csv")
    assert rc == EXIT_BAD_INPUT and "cannot be read" in err


def test_a_store_that_does_not_exist(tmp_path):
    rc, err = predict(f"sqlite:///{tmp_path}/none.db", "models:/x@champion", tmp_path / "in.csv", tmp_path / "o.csv")
    assert rc == EXIT_BAD_INPUT and "--tracking-uri" in err and "no MLflow store there" in err
    assert not (tmp_path / "none.db").exists()  # a typo does not create an empty store
