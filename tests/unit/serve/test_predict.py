"""The ``predict`` verb's checks, before any compute: an unknown model, alias or store, a model that
is not one of ours, missing columns, empty files, unreadable formats and outputs each exit 2 with a
message naming the argument, and no Ray is started."""

from __future__ import annotations

import contextlib
import io
import json
import random
import sys

import mlflow
import pandas as pd
import pytest
from helpers.models import small
from helpers.served import registered, replicas
from mlflow.tracking import MlflowClient

from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.serve.pyfunc import PREDICTION, download
from orchestrator.serve.registry import register
from orchestrator.tracking import VALIDATION_TAG


class NotOurs(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory, bert_dir):
    """A SQLite store with our pair-task model as mpt-topic_match@champion and a foreign model."""
    tmp = tmp_path_factory.mktemp("predict_checks")
    uri, _ = registered(tmp, bert_dir, small("topic_match"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mpt").experiment_id
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


def mixed_parts(files: int = 24, seed: int = 7) -> list[list[dict]]:
    """Rows with an ``id`` and texts of 1 to 400 words in shuffled order, cut into files that shrink
    (22 rows down to 2): later blocks are quicker, so without ordering they overtake earlier ones."""
    rng = random.Random(seed)
    words = "the chef cooked pasta while rain fell all day on a quiet town near the sea".split()
    sizes = [max(2, 22 - i) for i in range(files)]
    lengths = [rng.choice([1, 2, 3, 40, 120, 400]) for _ in range(sum(sizes))]
    rows = [{"id": i, "text": " ".join(rng.choices(words, k=n)), "text_pair": " ".join(rng.choices(words, k=n % 7 + 1))}
            for i, n in enumerate(lengths)]
    starts = [sum(sizes[:i]) for i in range(files)]
    return [rows[start:start + size] for start, size in zip(starts, sizes)]


def test_two_workers_write_the_rows_in_input_order(store, tmp_path):
    """Several blocks, read by parallel tasks and predicted by a pool of two replicas: the output is the
    input, row for row, each with its own prediction (without Ray Data's preserve_order the blocks come
    back as they finish, which on a 2-core machine is out of order in most runs)."""
    import ray

    _, uri = store
    parts = mixed_parts()
    (tmp_path / "in").mkdir()
    for n, part in enumerate(parts):  # one file per block: a single file would be one block, one actor task
        write(tmp_path / "in" / f"part{n:03d}.jsonl", part, "jsonl")
    rows = pd.DataFrame([r for part in parts for r in part])
    # A Ray of our own, so that the replicas can be counted before it goes. 4 logical CPUs on a 2-core
    # machine: Ray Data reads small files in 2 tasks per CPU, so 8 blocks (not 4) that may finish out of
    # order, and two replicas of half a CPU fit beside the read tasks.
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        rc, err = predict(uri, "models:/mpt-topic_match@champion", tmp_path / "in", tmp_path / "out.jsonl",
                          "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "4", "--probabilities")
        started = replicas()
    finally:
        ray.shutdown()
    assert rc == 0, err
    # the pool grew to its two replicas (the second is started once the first has a backlog)
    assert len(started) == 2, f"{len(started)} replica(s) started"
    got = pd.read_json(tmp_path / "out.jsonl", lines=True, dtype=False)
    assert got["id"].tolist() == rows["id"].tolist(), "rows out of input order"
    assert got[["text", "text_pair"]].equals(rows[["text", "text_pair"]])
    # each row's prediction, computed without Ray in one call over the rows in input order
    model = mlflow.pyfunc.load_model(download("models:/mpt-topic_match/1", uri, str(tmp_path / "model")))
    expected = model.predict(rows[["text", "text_pair"]], params={"probabilities": True})
    probs = ["prob_no", "prob_yes"]
    assert (got[probs] - expected[probs]).abs().max().max() < 1e-5
    assert got[PREDICTION].tolist() == expected[PREDICTION].tolist()
