"""The scores of class-id predictions that every stage reports: accuracy, macro F1 and MCC.

Here rather than in the data layer because scoring belongs to the method (training selects on it),
and kept free of Ray, MLflow and torch so that any process can score. Every score is computed from
a confusion matrix, and ``score_confusions`` takes a whole stack of them at once: the comparison
of two methods (``orchestrator/results/stats.py``) scores each seed's matrix with every test example left
out in turn, which one call per matrix would make slow. The values equal scikit-learn's (macro F1
with ``zero_division=0`` over the classes present in labels or predictions; MCC 0 where it is undefined); a unit test checks it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("accuracy", "f1", "mcc")


def confusions(labels: np.ndarray, preds: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Counts of (label, prediction) pairs along the last axis: ``(..., n)`` -> ``(..., k, k)``,
    rows the true class, columns the predicted one, both indexed as in ``classes`` (sorted, holding
    every value of ``labels`` and ``preds``)."""
    labels, preds = np.broadcast_arrays(np.asarray(labels), np.asarray(preds))
    k = len(classes)
    codes = np.searchsorted(classes, labels) * k + np.searchsorted(classes, preds)
    lead = codes.shape[:-1]
    # one bincount for the whole stack: each matrix gets its own block of k*k bins
    offsets = np.arange(int(np.prod(lead, dtype=int))).reshape(lead + (1,)) * (k * k)
    counts = np.bincount((codes + offsets).ravel(), minlength=int(np.prod(lead, dtype=int)) * k * k)
    return counts.reshape(lead + (k, k))


def score_confusions(metric: str, confusion: np.ndarray) -> np.ndarray:
    """accuracy, f1 (macro F1) or mcc (Matthews correlation) of each ``(k, k)`` matrix of a stack."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    confusion = np.asarray(confusion, dtype=float)
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)
    true, predicted = confusion.sum(axis=-1), confusion.sum(axis=-2)
    total = true.sum(axis=-1)
    if metric == "accuracy":
        return hits.sum(axis=-1) / total
    if metric == "f1":
        present = (true + predicted) > 0
        per_class = np.divide(2 * hits, true + predicted, out=np.zeros_like(hits), where=present)
        return per_class.sum(axis=-1) / present.sum(axis=-1)
    covariance = hits.sum(axis=-1) * total - (true * predicted).sum(axis=-1)
    spread = (total**2 - (predicted**2).sum(axis=-1)) * (total**2 - (true**2).sum(axis=-1))
    return np.divide(covariance, np.sqrt(spread), out=np.zeros_like(covariance), where=spread > 0)


def compute_metric(metric: str, preds: Sequence[int], labels: Sequence[int]) -> float:
    """accuracy, f1 (macro F1) or mcc (Matthews correlation) of class-id predictions."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    preds, labels = np.asarray(preds, dtype=int), np.asarray(labels, dtype=int)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not len(labels):
        raise ValueError("no examples to score")
    classes = np.union1d(labels, preds)
    return float(score_confusions(metric, confusions(labels, preds, classes)))
