"""compute_metric (orchestrator.method.metrics): known values and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.method.metrics import compute_metric, confusions, score_confusions


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


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_compute_metric_equals_scikit_learn(metric):
    # -1 is what a text-to-text model scores when it generates no label word: a class of its own
    from sklearn import metrics as skm

    rng = np.random.default_rng(7)
    reference = {"accuracy": skm.accuracy_score,
                 "f1": lambda y, p: skm.f1_score(y, p, average="macro", zero_division=0),
                 "mcc": skm.matthews_corrcoef}[metric]
    for n, k in [(1, 2), (5, 2), (40, 3), (200, 5)]:
        labels, preds = rng.integers(0, k, n), rng.integers(-1, k, n)
        for p in (preds, labels, np.full(n, -1), np.zeros(n, dtype=int)):
            assert compute_metric(metric, p, labels) == pytest.approx(reference(labels, p), abs=1e-12)


def test_score_confusions_scores_a_stack_as_one_matrix_each():
    labels = np.array([[0, 1, 1, 2], [2, 2, 0, 1]])
    preds = np.array([[0, 1, 2, 2], [2, 0, 0, 1]])
    stack = confusions(labels, preds, np.array([0, 1, 2]))
    assert stack.shape == (2, 3, 3)
    for metric in ("accuracy", "f1", "mcc"):
        scores = score_confusions(metric, stack)
        assert list(scores) == pytest.approx([compute_metric(metric, p, y) for p, y in zip(preds, labels)])
