"""The embedded (synthetic) suite: sizes, balance, determinism, the skills the tasks share, label
words, and the errors for unknown tasks (orchestrator.data.synthetic; bad label words and the types
themselves are tests/unit/data/test_types.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest
from helpers.data_checks import ROLES, texts, the_error

from orchestrator.data import (
    EMBEDDED_SOURCES,
    EMBEDDED_TARGETS,
    check_task,
    embedded_task_names,
    load_task,
)
from orchestrator.spec.schema import TaskSpec


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
    code = ("import hashlib; from orchestrator.spec.schema import TaskSpec; from orchestrator.data import load_task; "
            "d = load_task(TaskSpec(name='nli'), 5); print(hashlib.sha256(repr(d.train).encode()).hexdigest())")
    here = hashlib.sha256(repr(load_task(TaskSpec(name="nli"), 5).train).encode()).hexdigest()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
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


def test_check_task_passes_good_tasks():
    assert check_task(TaskSpec(name="topic_match"), 0) == []
