"""The ``predict`` verb on a real local Ray without GPUs, with a real (untrained) model of ours in a SQLite
registry: Parquet files in and a Parquet file out, the replica pool capped by ``--workers``, and
``--gpus-per-worker`` refused (exit 2) on a cluster that has no GPU."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from helpers.models import small
from helpers.served import registered, replicas

from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.serve.pyfunc import PREDICTION

MODEL = "models:/mpt-review_polarity@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory, bert_dir):
    """A SQLite store with our single-text model as mpt-review_polarity@champion; its model directory."""
    return registered(tmp_path_factory.mktemp("predict_formats"), bert_dir, small("review_polarity"))


@pytest.fixture(scope="module")
def ray_without_gpus():
    """A local Ray that ``predict`` joins (it starts none when one is connected): no GPU even on a GPU
    machine, and its actors can be counted."""
    import ray

    if ray.is_initialized():  # a Ray left by another module may hold GPUs
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def predict(uri: str, input_path, out, *extra: str, capsys) -> tuple[int, str]:
    rc = main(["predict", MODEL, "--input", str(input_path), "--out", str(out), "--tracking-uri", uri, *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.mark.usefixtures("ray_without_gpus")
def test_parquet_in_and_out_on_one_worker(store, tmp_path, capsys):
    uri, model = store
    texts = [f"{word} film, {n} times over" for n in range(24) for word in ("a fine", "a dull")]
    rows = pd.DataFrame({"id": range(len(texts)), "text": texts})
    (tmp_path / "in").mkdir()
    for part, start in enumerate(range(0, len(rows), 12)):  # a directory of files, several blocks
        rows.iloc[start:start + 12].to_parquet(tmp_path / "in" / f"part{part}.parquet", index=False)
    before = replicas()
    rc, out = predict(uri, tmp_path / "in", tmp_path / "out.parquet", "--workers", "1", "--cpus-per-worker", "0.5",
                      "--batch-size", "4", capsys=capsys)
    assert rc == 0, out
    assert "up to 1 worker(s)" in out and len(replicas() - before) == 1, out
    got = pd.read_parquet(tmp_path / "out.parquet")
    assert got[["id", "text"]].to_dict("records") == rows.to_dict("records")  # every row, in input order, whole
    expected = mlflow.pyfunc.load_model(str(model)).predict(rows[["text"]])
    assert got[PREDICTION].tolist() == expected[PREDICTION].tolist()


@pytest.mark.usefixtures("ray_without_gpus")
def test_gpus_per_worker_is_refused_on_a_cluster_without_gpus(store, tmp_path, capsys):
    uri, _ = store
    pd.DataFrame({"text": ["a fine film"]}).to_parquet(tmp_path / "in.parquet", index=False)
    rc, out = predict(uri, tmp_path / "in.parquet", tmp_path / "out.parquet", "--gpus-per-worker", "1",
                      capsys=capsys)
    assert rc == EXIT_BAD_INPUT, out
    assert "--gpus-per-worker" in out and "the cluster has 0 GPU(s)" in out, out
    assert not (tmp_path / "out.parquet").exists()
