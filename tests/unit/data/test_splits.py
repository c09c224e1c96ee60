"""From raw splits to TaskData (orchestrator.data.splits): column checks, label cleaning and
encoding, and the ATTEMPT split rule."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from helpers.data import sentiment_rows, write_file, write_split_files
from helpers.data_checks import ROLES, texts, the_error
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.data import HELD_OUT_VAL, SMALL_TRAIN, TaskDataError, apply_split_rule, load_task
from orchestrator.spec.schema import TaskSpec


def test_local_float_labels_with_gaps_become_ints(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": {"text": list("abcd"), "label": [0.0, 1.0, 2.0, 1.0]},
                                                "validation": {"text": ["e", "f"], "label": [1.0, 2.0]},
                                                "test": {"text": ["g", "h"], "label": [0.0, 2.0]}}, "parquet")
    data = load_task(TaskSpec(name="f", kind="local", dataset=str(folder)), 0)
    assert data.label_names == ["0", "1", "2"]


def test_missing_columns_are_all_reported_with_the_available_ones(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(10), "validation": sentiment_rows(4, 50),
                                                "test": sentiment_rows(4, 90)})
    err = the_error(TaskSpec(name="t", kind="local", dataset=str(folder), text_fields=["txt", "other"],
                             label_field="labels"))
    assert len(err.issues) == 9  # 3 columns x 3 splits
    fields = Counter(i.field for i in err.issues)
    assert fields == {"tasks.t.text_fields": 6, "tasks.t.label_field": 3}
    first = err.issues[0]
    assert "['text', 'label']" in first.message and "train.csv" in first.message and "did you mean 'text'" in first.fix
    assert "'labels'" in str(err) and "did you mean 'label'" in str(err)


def test_label_unseen_in_train(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(10), "validation": sentiment_rows(6, 50),
                                                "test": sentiment_rows(6, 90, labels=("neg", "pos", "neutral"))})
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert issue.field == "tasks.t.label_field"
    assert "test split" in issue.message and "'neutral'" in issue.message


# ---------------------------------------------------------------------------- split rule


def test_split_rule_small_halves_validation(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(100), "validation": sentiment_rows(41, 1000)})
    spec = TaskSpec(name="small", kind="local", dataset=str(folder))
    data = load_task(spec, 0)
    assert [len(data.split(r)) for r in ROLES] == [100, 21, 20]
    val, test = set(texts(data, "validation")), set(texts(data, "test"))
    assert not val & test and len(val | test) == 41
    assert set(texts(load_task(spec, 1), "test")) != test, "the halving is seeded"
    assert set(texts(load_task(spec, 0), "test")) == test


def test_split_rule_large_holds_out_train(tmp_path):
    n = SMALL_TRAIN + 50
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(n), "validation": sentiment_rows(30, 10**6)})
    data = load_task(TaskSpec(name="large", kind="local", dataset=str(folder)), 0)
    assert [len(data.split(r)) for r in ROLES] == [n - HELD_OUT_VAL, HELD_OUT_VAL, 30]
    train, val = set(texts(data, "train")), set(texts(data, "validation"))
    assert not train & val and len(train | val) == n
    assert set(texts(data, "test")) == {(f"sentence number {10**6 + i}",) for i in range(30)}


def test_split_rule_single_file_and_missing_validation(tmp_path):
    single = write_file(tmp_path / "all.csv", sentiment_rows(100))
    data = load_task(TaskSpec(name="one", kind="local", dataset=str(single)), 0)
    assert [len(data.split(r)) for r in ROLES] == [80, 10, 10]
    assert len({t for r in ROLES for t in texts(data, r)}) == 100
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(50), "test": sentiment_rows(8, 500)})
    data = load_task(TaskSpec(name="novalid", kind="local", dataset=str(folder)), 0)
    assert [len(data.split(r)) for r in ROLES] == [45, 5, 8]
    assert all(int(t[0].split()[-1]) < 50 for t in texts(data, "validation")), "validation never comes from test"


def test_split_rule_none_requires_every_split(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(20), "validation": sentiment_rows(6, 100)})
    (issue,) = the_error(TaskSpec(name="strict", kind="local", dataset=str(folder), split_rule="none")).issues
    assert issue.field == "tasks.strict.split_rule" and "['test']" in issue.message and "attempt" in issue.fix


@settings(max_examples=40, deadline=None)
@given(n_train=st.integers(3, 60), n_val=st.one_of(st.none(), st.integers(2, 30)),
       n_test=st.one_of(st.none(), st.integers(1, 30)), seed=st.integers(0, 5))
def test_split_rule_partitions_without_loss(n_train, n_val, n_test, seed):
    def frame(n, off):
        return pd.DataFrame({"text": [f"t{off + i}" for i in range(n)], "label": ["a"] * n})

    frames = {"train": frame(n_train, 0)}
    if n_val is not None:
        frames["validation"] = frame(n_val, 1000)
    if n_test is not None:
        frames["test"] = frame(n_test, 2000)
    spec = TaskSpec(name="prop", kind="local", dataset="x")
    try:
        out = apply_split_rule(spec, seed, frames, {})
    except TaskDataError as err:
        assert "too few examples" in err.issues[0].message
        return
    rows = [set(out[r]["text"]) for r in ROLES]
    assert all(rows) and not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert set().union(*rows) == set().union(*(set(f["text"]) for f in frames.values()))
    if "test" in frames:
        assert rows[2] == set(frames["test"]["text"]), "a given test split is kept as is"
