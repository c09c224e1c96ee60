"""Telling an effect from noise: an interval over seeds, and a paired bootstrap over test examples.

Pure numpy/scipy, so that it can be read and tested without MLflow or Ray. Two sources of noise
are handled apart: ``interval`` says how much a method's test score moves from seed to seed, and
``paired_bootstrap`` how much a difference between two methods depends on which test examples
happened to be drawn, the quantity that decides whether one method is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from .method.metrics import confusions, score_confusions

NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True)
class Interval:
    mean: float
    sd: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    observed: float
    low: float
    high: float


def interval(values, confidence: float = 0.95) -> Interval:
    """Mean, sample standard deviation and the Student-t interval of the mean over seeds.

    With a single seed, sd, low and high are NaN: one value says nothing about how a score varies
    from seed to seed, and a zero-width interval would claim it does not vary at all.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values to summarise")
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, float("nan"), float("nan"), float("nan"))
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, df=values.size - 1)) * sd / np.sqrt(values.size)
    return Interval(mean, sd, mean - half, mean + half)


def paired_bootstrap(labels, preds_a, preds_b, metric: str, n_resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> Difference:
    """metric(a) - metric(b), averaged over seeds, with a percentile bootstrap interval.

    ``preds_a`` and ``preds_b`` are ``(seeds, examples)`` arrays, row ``i`` of both trained with the
    same seed, columns the test examples in ``labels`` order. Each resample draws test examples with
    replacement and uses the same draw for every seed and both methods, so what the two methods share
    (the examples, the seed) cancels out of the difference. Percentile rather than BCa: two identical
    methods give a distribution of zeros, and the percentile interval of it is [0, 0].
    """
    labels = np.asarray(labels, dtype=int)
    preds_a, preds_b = np.atleast_2d(np.asarray(preds_a, dtype=int)), np.atleast_2d(np.asarray(preds_b, dtype=int))
    if preds_a.shape != preds_b.shape or preds_a.shape[-1] != labels.size:
        raise ValueError(f"predictions {preds_a.shape} and {preds_b.shape} do not pair with {labels.size} labels")
    classes = np.union1d(labels, np.union1d(preds_a, preds_b))

    def mean_difference(y, a, b, axis=-1):
        # y: (..., n) resampled labels; a, b: (seeds, ..., n); the seeds axis is averaged away
        return (score_confusions(metric, confusions(y, a, classes))
                - score_confusions(metric, confusions(y, b, classes))).mean(axis=0)

    observed = float(mean_difference(labels, preds_a, preds_b))
    if labels.size < 2:  # nothing to resample: the difference is all there is
        return Difference(observed, observed, observed)
    result = stats.bootstrap((labels, preds_a, preds_b), mean_difference, paired=True, vectorized=True, axis=-1,
                             n_resamples=n_resamples, batch=200, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return Difference(observed, float(result.confidence_interval.low), float(result.confidence_interval.high))


def verdict(low: float, high: float) -> str:
    """"better" if the whole interval lies above 0, "worse" if below, else no detectable difference."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return NO_DIFFERENCE
