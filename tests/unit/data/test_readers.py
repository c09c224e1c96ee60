"""Reading external data (orchestrator.data.readers): hf datasets offline in hub layout, local
csv/tsv/jsonl/json/parquet files, and every error about missing, ambiguous or unreadable sources."""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before anything imports datasets
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers.data import hf_offline, pair_rows, sentiment_rows, write_hub_layout, write_split_files
from helpers.data_checks import ROLES, texts, the_error

from orchestrator.data import check_task, load_task
from orchestrator.spec.schema import TaskSpec


@pytest.fixture
def offline(monkeypatch, tmp_path):
    hf_offline(monkeypatch, tmp_path / "hf_cache")


def test_hf_hub_layout_with_string_labels_and_pairs(offline, tmp_path):
    repo = write_hub_layout(tmp_path / "repo", {
        "train": pair_rows(30, labels=("yes", "no", "maybe")),
        "validation": pair_rows(12, offset=100, labels=("maybe", "no", "yes")),
        "test": pair_rows(9, offset=200, labels=("no", "yes", "maybe")),
    })
    spec = TaskSpec(name="pairs", kind="hf", dataset=str(repo), text_fields=["premise", "hypothesis"])
    data = load_task(spec, 0)
    assert data.is_pair and data.label_names == ["maybe", "no", "yes"]
    assert [len(data.split(r)) for r in ROLES] == [30, 12, 9]
    first = next(e for e in data.train if e.texts[0] == "premise 0")
    assert first.texts == ("premise 0", "hypothesis 0") and data.label_names[first.label] == "yes"
    assert check_task(spec, 0) == []


def test_hf_classlabel_and_hidden_test_labels_follow_the_split_rule(offline, tmp_path):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["unacceptable", "acceptable"])})
    rows = lambda n, off, lab: {"sentence": [f"s{off + i}" for i in range(n)], "label": lab(n)}  # noqa: E731
    repo = write_hub_layout(tmp_path / "cola", {
        "train": rows(40, 0, lambda n: [i % 2 for i in range(n)]),
        "validation": rows(20, 100, lambda n: [i % 2 for i in range(n)]),
        "test": rows(10, 200, lambda n: [-1] * n),  # GLUE: test labels hidden
    }, features=features)
    spec = TaskSpec(name="cola", kind="hf", dataset=str(repo), text_fields=["sentence"], metric="mcc")
    data = load_task(spec, 0)
    assert data.label_names == ["unacceptable", "acceptable"]
    assert data.label_words == ["unacceptable", "acceptable"]
    # small train: the labelled validation is halved into validation/test
    assert [len(data.split(r)) for r in ROLES] == [40, 10, 10]
    val, test = set(texts(data, "validation")), set(texts(data, "test"))
    assert not val & test and val | test == {(f"s{100 + i}",) for i in range(20)}
    with_none = the_error(spec.model_copy(update={"split_rule": "none"}))
    assert "no labelled examples" in with_none.issues[0].message


def test_hf_split_mapping_int_labels_and_caps(offline, tmp_path):
    repo = write_hub_layout(tmp_path / "mnli", {
        "train": pair_rows(50, labels=(0, 1, 2)),
        "validation_matched": pair_rows(20, offset=100, labels=(0, 1, 2)),
        "test_matched": pair_rows(20, offset=200, labels=(2, 1, 0)),
    })
    spec = TaskSpec(name="mnli", kind="hf", dataset=str(repo), text_fields=["premise", "hypothesis"],
                    splits={"validation": "validation_matched", "test": "test_matched"},
                    max_train_examples=7, max_eval_examples=5)
    data = load_task(spec, 1)
    assert data.label_names == ["0", "1", "2"]
    assert [len(data.split(r)) for r in ROLES] == [7, 5, 5]
    assert data.train == load_task(spec, 1).train
    assert data.train != load_task(spec, 2).train, "the cap follows a seeded shuffle"
    (issue,) = the_error(spec.model_copy(update={"splits": {"validation": "validaton_matched"}})).issues
    assert issue.field == "tasks.mnli.splits.validation"
    assert "validation_matched" in issue.fix and "test_matched" in issue.message


def test_hf_missing_dataset_and_bad_config(offline, tmp_path):
    (issue,) = the_error(TaskSpec(name="gone", kind="hf", dataset=str(tmp_path / "nowhere"))).issues
    assert issue.field == "tasks.gone.dataset" and "load_dataset" in issue.message and "kind: local" in issue.fix
    repo = write_hub_layout(tmp_path / "repo", {"train": sentiment_rows(10)})
    (issue,) = the_error(TaskSpec(name="cfg", kind="hf", dataset=str(repo), config="nope")).issues
    assert issue.field == "tasks.cfg.config" and "nope" in issue.message


def test_hf_missing_column_lists_the_columns(offline, tmp_path):
    repo = write_hub_layout(tmp_path / "repo", {"train": sentiment_rows(10), "validation": sentiment_rows(4, 50)})
    err = the_error(TaskSpec(name="cols", kind="hf", dataset=str(repo), text_fields=["sentence"]))
    assert len(err.issues) == 2  # one per split that lacks it
    assert all(i.field == "tasks.cols.text_fields" and "'text'" in i.message for i in err.issues)


# ---------------------------------------------------------------------------- local files


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_local_formats(tmp_path, fmt):
    folder = write_split_files(tmp_path / fmt, {"train": sentiment_rows(20), "validation": sentiment_rows(6, 100),
                                                "test": sentiment_rows(6, 200)}, fmt)
    data = load_task(TaskSpec(name="local", kind="local", dataset=str(folder)), 0)
    assert data.label_names == ["neg", "pos"] and not data.is_pair
    assert [len(data.split(r)) for r in ROLES] == [20, 6, 6]
    assert set(texts(data, "test")) == {(f"sentence number {200 + i}",) for i in range(6)}


def test_local_pair_task_with_renamed_stems(tmp_path):
    folder = write_split_files(tmp_path / "d", {"tr": pair_rows(12), "dev": pair_rows(6, 50), "eval": pair_rows(6, 90)},
                               "jsonl")
    spec = TaskSpec(name="pair", kind="local", dataset=str(folder), text_fields=["premise", "hypothesis"],
                    splits={"train": "tr", "validation": "dev", "test": "eval"})
    data = load_task(spec, 0)
    assert data.is_pair and data.label_names == ["0", "1"]
    assert ("premise 50", "hypothesis 50") in texts(data, "validation")


def test_local_csv_keeps_texts_verbatim_and_drops_missing_rows(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n007,a\nNA,b\n,a\nnull,\nok,b\n")
    (folder / "validation.csv").write_text("text,label\nx,a\ny,b\n")
    (folder / "test.csv").write_text("text,label\nz,a\nw,b\n")
    data = load_task(TaskSpec(name="raw", kind="local", dataset=str(folder)), 0)
    assert sorted(texts(data, "train")) == [("007",), ("NA",), ("ok",)]


def test_empty_splits(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(10), "test": sentiment_rows(4, 50)})
    (folder / "validation.csv").write_text("text,label\n")  # header only
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert "validation split" in issue.message and "is empty" in issue.message
    (folder / "validation.csv").write_text("")  # zero bytes
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert "is empty" in issue.message


def test_missing_directory_and_missing_dataset(tmp_path):
    (issue,) = the_error(TaskSpec(name="gone", kind="local", dataset=str(tmp_path / "nope"))).issues
    assert issue.field == "tasks.gone.dataset" and "does not exist" in issue.message
    (issue,) = the_error(TaskSpec(name="unset", kind="local")).issues
    assert issue.field == "tasks.unset.dataset"


def test_missing_train_file_lists_the_files(tmp_path):
    folder = write_split_files(tmp_path / "d", {"trian": sentiment_rows(5), "validation": sentiment_rows(5)})
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert "no train file" in issue.message and "trian.csv" in issue.message
    assert "did you mean 'trian'" in issue.fix and "splits.train" in issue.fix
    empty = tmp_path / "empty"
    empty.mkdir()
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(empty))).issues
    assert "no train file" in issue.message


def test_missing_mapped_split_file(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(5), "dev": sentiment_rows(5)})
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder), splits={"validation": "dve"})).issues
    assert issue.field == "tasks.t.splits.validation" and "did you mean 'dev'" in issue.fix


def test_unsupported_extension_and_ambiguous_files(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(10)})
    (folder / "train.csv").rename(folder / "train.xlsx")
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert "unsupported file extension '.xlsx'" in issue.message and ".parquet" in issue.fix
    single = tmp_path / "data.txt"
    single.write_text("hello")
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(single))).issues
    assert "'.txt'" in issue.message
    both = write_split_files(tmp_path / "both", {"train": sentiment_rows(10)}, "csv")
    write_split_files(both, {"train": sentiment_rows(10)}, "jsonl")
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(both))).issues
    assert "several files" in issue.message


def test_unreadable_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"definitely not parquet")
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert "could not read" in issue.message and "train.parquet" in issue.message


def test_error_message_names_task_and_fix(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)task 'gone'.*does not exist.*fix: "):
        load_task(TaskSpec(name="gone", kind="local", dataset=str(tmp_path / "nope")), 0)
