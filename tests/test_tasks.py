"""Task registry and data layer: embedded suite, hf (offline, hub layout on disk), local files,
the ATTEMPT split rule, every data error, and the metrics."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before anything imports datasets
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:  # tests/ on sys.path (rootdir-style runs) or tests as a package
    from conftest_data import hf_offline, pair_rows, sentiment_rows, write_file, write_hub_layout, write_split_files
except ImportError:
    from tests.conftest_data import hf_offline, pair_rows, sentiment_rows, write_file, write_hub_layout, write_split_files
from orchestrator.spec import SpecIssue, TaskSpec
from orchestrator.tasks import (
    EMBEDDED_SOURCES,
    EMBEDDED_TARGETS,
    HELD_OUT_VAL,
    SMALL_TRAIN,
    Example,
    TaskData,
    TaskDataError,
    _apply_split_rule,
    check_task,
    compute_metric,
    embedded_task_names,
    load_task,
)

ROLES = ("train", "validation", "test")


def texts(data: TaskData, role: str) -> list[tuple[str, ...]]:
    return [e.texts for e in data.split(role)]


def the_error(spec: TaskSpec, seed: int = 0) -> TaskDataError:
    """load_task must fail, and check_task must report the same issues without raising."""
    with pytest.raises(TaskDataError) as info:
        load_task(spec, seed)
    issues = check_task(spec, seed)
    assert [str(i) for i in issues] == [str(i) for i in info.value.issues]
    assert all(isinstance(i, SpecIssue) and i.field.startswith(f"tasks.{spec.name}") for i in issues)
    assert all(i.fix for i in issues), "every issue names its fix"
    return info.value


# ---------------------------------------------------------------------------- embedded suite


@pytest.mark.parametrize("name", embedded_task_names())
def test_every_embedded_task_loads(name):
    data = load_task(TaskSpec(name=name), seed=0)
    assert data.name == name and data.metric == "accuracy"
    assert [len(data.split(r)) for r in ROLES] == [2000, 400, 400]
    assert data.num_labels == len(data.label_names) == len(data.label_words) >= 2
    assert all(w == w.lower() and w.isalpha() for w in data.label_words)
    assert all(n.isalpha() for n in data.label_names), "label names are words"
    width = 2 if data.is_pair else 1
    for role in ROLES:
        for ex in data.split(role):
            assert len(ex.texts) == width and all(isinstance(t, str) and t.strip() for t in ex.texts)
            assert 0 <= ex.label < data.num_labels


@pytest.mark.parametrize("name", embedded_task_names())
def test_embedded_labels_are_balanced_even_when_capped(name):
    full = load_task(TaskSpec(name=name), seed=3)
    capped = load_task(TaskSpec(name=name, max_train_examples=101, max_eval_examples=37), seed=3)
    for data in (full, capped):
        for role in ROLES:
            counts = Counter(e.label for e in data.split(role))
            assert len(counts) == data.num_labels
            assert max(counts.values()) - min(counts.values()) <= 1, (role, counts)
    assert [len(capped.split(r)) for r in ROLES] == [101, 37, 37]
    assert capped.train == full.train[:101], "caps keep a prefix of the seeded order"


@pytest.mark.parametrize("name", embedded_task_names())
def test_embedded_is_deterministic_per_seed_and_splits_are_disjoint(name):
    a, b, c = (load_task(TaskSpec(name=name), seed=s) for s in (7, 7, 8))
    for role in ROLES:
        assert a.split(role) == b.split(role)
        assert a.split(role) != c.split(role)
    seen = [set(texts(a, r)) for r in ROLES]
    assert len(seen[0]) == 2000, "no duplicates within train"
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), "no text shared by two splits"


def test_embedded_data_is_identical_across_processes():
    """Ray workers load tasks in their own processes: str hashing must not leak into the data."""
    code = ("import hashlib; from orchestrator.spec import TaskSpec; from orchestrator.tasks import load_task; "
            "d = load_task(TaskSpec(name='nli'), 5); print(hashlib.sha256(repr(d.train).encode()).hexdigest())")
    here = hashlib.sha256(repr(load_task(TaskSpec(name="nli"), 5).train).encode()).hexdigest()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == here


def test_embedded_roles_cover_the_suite_with_pair_tasks():
    assert len(EMBEDDED_SOURCES) >= 4 and len(EMBEDDED_TARGETS) >= 2
    assert not set(EMBEDDED_SOURCES) & set(EMBEDDED_TARGETS)
    assert sorted(EMBEDDED_SOURCES + EMBEDDED_TARGETS) == sorted(embedded_task_names())
    pairs = {n for n in embedded_task_names() if load_task(TaskSpec(name=n, max_train_examples=1), 0).is_pair}
    assert pairs & set(EMBEDDED_SOURCES) and pairs & set(EMBEDDED_TARGETS)


def test_embedded_label_sets():
    names = {n: load_task(TaskSpec(name=n, max_train_examples=1), 0).label_names for n in embedded_task_names()}
    assert names["sentiment"] == names["review_polarity"] == ["negative", "positive"]
    assert names["topic"] == ["sports", "food", "technology", "weather"]
    assert names["nli"] == ["entailment", "neutral", "contradiction"]
    assert names["paraphrase"] == names["topic_match"] == ["no", "yes"]


def test_embedded_dataset_alias_and_label_words_override():
    spec = TaskSpec(name="mine", dataset="sentiment", label_words={"negative": "bad", "1": "good"}, metric="f1")
    data = load_task(spec, 0)
    assert data.name == "mine" and data.metric == "f1"
    assert data.label_words == ["bad", "good"]
    assert data.train == load_task(TaskSpec(name="sentiment"), 0).train


def test_embedded_generators_use_their_skills():
    """Spot checks that the shared skills are really in the text (negation, contrast, topics)."""
    review = load_task(TaskSpec(name="review_polarity"), 0)
    negated = [e for e in review.train if " not " in e.texts[0] or " never " in e.texts[0]]
    assert 0.15 < len(negated) / len(review.train) < 0.6  # a quarter negated, plus "I never expected ..."
    assert {e.label for e in negated} == {0, 1}, "negation appears with both labels: no shortcut"
    nli = load_task(TaskSpec(name="nli"), 0)
    for label in range(3):
        with_not = [e for e in nli.train if e.label == label and " not " in e.texts[1]]
        assert with_not, f"negation in label {label} hypotheses"


def test_unknown_embedded_task_suggests_the_nearest():
    err = the_error(TaskSpec(name="sentimnt"))
    (issue,) = err.issues
    assert issue.field == "tasks.sentimnt.name"
    assert "did you mean 'sentiment'" in issue.fix
    assert all(n in issue.fix for n in embedded_task_names())
    (issue,) = the_error(TaskSpec(name="x", dataset="toppic")).issues
    assert issue.field == "tasks.x.dataset" and "'topic'" in issue.fix


@pytest.mark.parametrize("words, problem", [
    ({"negative": "bad"}, "has no word"),
    ({"negative": "Bad", "positive": "good"}, "one lowercase word"),
    ({"negative": "not good", "positive": "good"}, "one lowercase word"),
    ({"negative": "same", "positive": "same"}, "share the word"),
    ({"negative": "bad", "positive": "good", "neutral": "meh"}, "not labels"),
])
def test_bad_label_words(words, problem):
    err = the_error(TaskSpec(name="sentiment", label_words=words))
    assert any(problem in i.message and i.field == "tasks.sentiment.label_words" for i in err.issues)


def test_example_rejects_a_bare_string():
    with pytest.raises(TypeError):
        Example("a bare string", 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- hf (offline)


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


def test_local_float_labels_with_gaps_become_ints(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": {"text": list("abcd"), "label": [0.0, 1.0, 2.0, 1.0]},
                                                "validation": {"text": ["e", "f"], "label": [1.0, 2.0]},
                                                "test": {"text": ["g", "h"], "label": [0.0, 2.0]}}, "parquet")
    data = load_task(TaskSpec(name="f", kind="local", dataset=str(folder)), 0)
    assert data.label_names == ["0", "1", "2"]


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
        out = _apply_split_rule(spec, seed, frames, {})
    except TaskDataError as err:
        assert "too few examples" in err.issues[0].message
        return
    rows = [set(out[r]["text"]) for r in ROLES]
    assert all(rows) and not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert set().union(*rows) == set().union(*(set(f["text"]) for f in frames.values()))
    if "test" in frames:
        assert rows[2] == set(frames["test"]["text"]), "a given test split is kept as is"


# ---------------------------------------------------------------------------- data errors


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


def test_empty_splits(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(10), "test": sentiment_rows(4, 50)})
    (folder / "validation.csv").write_text("text,label\n")  # header only
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert "validation split" in issue.message and "is empty" in issue.message
    (folder / "validation.csv").write_text("")  # zero bytes
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert "is empty" in issue.message


def test_label_unseen_in_train(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": sentiment_rows(10), "validation": sentiment_rows(6, 50),
                                                "test": sentiment_rows(6, 90, labels=("neg", "pos", "neutral"))})
    (issue,) = the_error(TaskSpec(name="t", kind="local", dataset=str(folder))).issues
    assert issue.field == "tasks.t.label_field"
    assert "test split" in issue.message and "'neutral'" in issue.message


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


def test_check_task_passes_good_tasks():
    assert check_task(TaskSpec(name="topic_match"), 0) == []


# ---------------------------------------------------------------------------- metrics


def test_compute_metric_known_values():
    assert compute_metric("accuracy", [0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(0.75)
    # class 0: P=1/2 R=1 F=2/3; class 1: P=1 R=2/3 F=4/5; macro = 11/15
    assert compute_metric("f1", [0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(11 / 15)
    assert compute_metric("mcc", [1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert compute_metric("mcc", [0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert compute_metric("mcc", [1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0)
    assert isinstance(compute_metric("accuracy", (1,), (1,)), float)


@pytest.mark.parametrize("args, match", [
    (("auc", [0], [0]), "unknown metric"),
    (("accuracy", [0, 1], [0]), "2 predictions for 1 labels"),
    (("f1", [], []), "no examples"),
])
def test_compute_metric_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        compute_metric(*args)
