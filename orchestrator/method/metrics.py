"""The scores of class-id predictions that every stage reports: accuracy, macro F1 and MCC.

Here rather than in the data layer because scoring belongs to the method (training selects on it),
and kept free of Ray, MLflow and torch so that any process can score; scikit-learn is imported on
the first call only, since it and scipy take about a second to import.
"""

from __future__ import annotations

from typing import Sequence

METRICS = ("accuracy", "f1", "mcc")


def compute_metric(metric: str, preds: Sequence[int], labels: Sequence[int]) -> float:
    """accuracy, f1 (macro F1) or mcc (Matthews correlation) of class-id predictions."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    preds, labels = [int(p) for p in preds], [int(y) for y in labels]
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples to score")
    from sklearn import metrics as skm  # lazy: sklearn/scipy cost a second to import

    if metric == "accuracy":
        return float(skm.accuracy_score(labels, preds))
    if metric == "f1":
        return float(skm.f1_score(labels, preds, average="macro", zero_division=0))
    return float(skm.matthews_corrcoef(labels, preds))
