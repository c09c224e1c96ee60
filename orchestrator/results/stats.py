"""Telling an effect from noise: an interval over seeds for one method, and the comparison of two
methods that covers what a rerun would change.

Pure numpy/scipy, so that it can be read and tested without MLflow or Ray. ``interval`` says how
much one method's test score moves from seed to seed. ``compare`` says whether one method beats
another: its interval covers both the training (each seed retrains everything, so the seeds are
the replicates) and the test sample (the examples the test set happened to draw), the two sources
of noise a verdict must outlast. docs/design.md ("Comparing methods") says why it is built so and
what it was checked against; ``tests/unit/results/test_stats.py`` simulates its calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import optimize, stats

from ..method.metrics import confusions, score_confusions

NO_DIFFERENCE = "no detectable difference"
ONE_SEED = "one seed: no verdict"
CONFIDENCE = 0.95
POWER = 0.80  # the power at which ``detectable`` and ``seeds_needed`` are stated
MAX_SEEDS = 1000  # ``seeds_needed`` looks no further: past it the test set, not the seeds, limits
NO_VARIANCE = 1e-18  # a variance below this is floating-point rounding of 0 (accuracies are multiples of 1/m)


@dataclass(frozen=True)
class Interval:
    mean: float
    sd: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b``. With one seed only ``observed`` is known; the rest is NaN."""

    observed: float  # mean over seeds of metric(a at seed i) - metric(b at seed i)
    low: float
    high: float
    n_seeds: int
    p_improvement: float  # P(a > b): the share of (seed of a, seed of b) pairs a wins, ties counted half
    spread: _Spread | None = None  # the variance components the interval came from (None: one seed)
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    @property
    def varies(self) -> bool:
        """Whether the difference moved at all, between seeds or examples (identical predictions at
        every seed do not: there is then no noise to measure, and no power to state)."""
        return self.spread is not None and self.spread.se_and_df(self.n_seeds)[0] > 0

    @cached_property
    def detectable(self) -> float:
        """The smallest difference these seeds detect with ``POWER``, at the variance observed."""
        if not self.varies:
            return float("nan")
        return _detectable(*self.spread.se_and_df(self.n_seeds), self.confidence)

    @cached_property
    def seeds_needed(self) -> float:
        """Seeds that would detect ``|observed|`` with ``POWER`` (inf: no number of seeds would, since
        the test sample's part of the variance stays)."""
        if not self.varies:
            return float("nan")
        return _seeds_needed(self.spread, abs(self.observed), self.confidence)


def interval(values, confidence: float = CONFIDENCE) -> Interval:
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


def pseudo_values(labels: np.ndarray, preds: np.ndarray, metric: str, classes: np.ndarray) -> np.ndarray:
    """Jackknife pseudo-values ``m * M - (m - 1) * M(without example j)`` per seed and test example:
    ``(seeds, m)``. They write a metric as a mean over examples (for accuracy they are the 0/1
    correctness itself), so that the variance of F1 or MCC splits over seeds and examples as that
    of accuracy does. Leaving out example j only takes one count off one cell of the seed's
    confusion matrix, so each seed scores one matrix per cell its examples fall in, not one per example."""
    m, k = labels.size, classes.size
    out = np.empty(preds.shape, dtype=float)
    for i, row in enumerate(preds):
        full = confusions(labels, row, classes)
        cells = np.searchsorted(classes, labels) * k + np.searchsorted(classes, row)
        present, where = np.unique(cells, return_inverse=True)
        without = np.repeat(full[None], present.size, axis=0).reshape(present.size, k * k)
        without[np.arange(present.size), present] -= 1
        left_out = score_confusions(metric, without.reshape(-1, k, k))
        out[i] = m * float(score_confusions(metric, full)) - (m - 1) * left_out[where]
    return out


def compare(labels, preds_a, preds_b, metric: str, confidence: float = CONFIDENCE) -> Comparison:
    """``metric(a) - metric(b)`` over seeds, with an interval that covers retraining and the test sample.

    ``preds_a`` and ``preds_b`` are ``(seeds, examples)`` arrays of class ids, row ``i`` of both
    trained at seed ``i`` (everything a rerun retrains: with ``seed_scope: pipeline`` the sources
    and the shared prompt too), columns the test examples in ``labels`` order.

    The per-example paired differences ``D[i, j]`` (of jackknife pseudo-values) form a crossed
    seeds x examples design. Its two-way random-effects ANOVA splits the variance of their mean into
    what moves with the seed (the variance of the per-seed differences over ``n`` seeds, which is
    the paired t test over seeds and holds each seed's own luck on each example) and what the seeds
    share: the methods' systematic difference on the particular examples this test set drew,
    ``sigma_e^2 / m``, which no number of seeds averages away. The interval is Student-t with
    Satterthwaite's degrees of freedom for that sum. With the same predictions at every seed
    (deterministic training) it is the paired t test over examples; with a difference that is the
    same on every example of a seed, the t test over seeds.
    """
    labels = np.asarray(labels, dtype=int)
    preds_a, preds_b = np.atleast_2d(np.asarray(preds_a, dtype=int)), np.atleast_2d(np.asarray(preds_b, dtype=int))
    if preds_a.shape != preds_b.shape or preds_a.shape[-1] != labels.size:
        raise ValueError(f"predictions {preds_a.shape} and {preds_b.shape} do not pair with {labels.size} labels")
    if labels.size < 2:
        raise ValueError("a comparison needs at least 2 test examples")
    classes = np.union1d(labels, np.union1d(preds_a, preds_b))
    score_a = score_confusions(metric, confusions(labels, preds_a, classes))
    score_b = score_confusions(metric, confusions(labels, preds_b, classes))
    n = preds_a.shape[0]
    observed = float((score_a - score_b).mean())
    if n < 2:
        nan = float("nan")
        return Comparison(observed, nan, nan, n, nan, None, confidence)
    p_improvement = float(stats.mannwhitneyu(score_a, score_b).statistic) / (n * n)
    spread = _Spread.of(pseudo_values(labels, preds_a, metric, classes)
                        - pseudo_values(labels, preds_b, metric, classes))
    se, df = spread.se_and_df(n)
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    return Comparison(observed, observed - half, observed + half, n, p_improvement, spread, confidence)


@dataclass(frozen=True)
class _Spread:
    """The variance components of a seeds x examples table of paired differences."""

    per_seed: float  # sigma_s^2 + sigma_se^2 / m: the variance of one seed's difference (MS_rows / m, floored)
    shared: float  # sigma_e^2 / m, floored at 0: the test sample's part, common to every seed
    m: int
    floored: bool = False  # per_seed is MS_res / m (its degrees of freedom are then (n - 1)(m - 1), not n - 1)

    @classmethod
    def of(cls, diffs: np.ndarray) -> _Spread:
        n, m = diffs.shape
        rows, cols, grand = diffs.mean(axis=1), diffs.mean(axis=0), diffs.mean()
        ms_rows = m * float(((rows - grand) ** 2).sum()) / (n - 1)
        ms_cols = n * float(((cols - grand) ** 2).sum()) / (m - 1)
        residual = diffs - rows[:, None] - cols[None, :] + grand
        ms_res = float((residual**2).sum()) / ((n - 1) * (m - 1))
        # each component's estimate floored at 0: sigma_s^2 = (MS_rows - MS_res) / m, so a seed's
        # difference varies at least by its own luck on the examples (MS_res / m), even where the
        # seeds happened to score the same difference
        return cls(max(ms_rows, ms_res) / m, max(0.0, (ms_cols - ms_res) / n) / m, m, ms_rows < ms_res)

    def se_and_df(self, n: int) -> tuple[float, float]:
        """The standard error of the mean difference over ``n`` seeds, and Satterthwaite's degrees of
        freedom (the seeds' term has n - 1, or (n - 1)(m - 1) where it is MS_res; the examples' m - 1)."""
        seeds, examples = self.per_seed / n, self.shared
        total = seeds + examples
        if total < NO_VARIANCE:
            return 0.0, float("inf")
        seeds_df = (n - 1) * (self.m - 1) if self.floored else n - 1
        return math.sqrt(total), total**2 / (seeds**2 / seeds_df + examples**2 / (self.m - 1))


def _power(difference: float, se: float, df: float, confidence: float) -> float:
    """Two-sided power of the t test at ``confidence`` against a true ``difference`` (noncentral t)."""
    critical = stats.t.ppf((1 + confidence) / 2, df)
    shift = difference / se
    power = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
    return 1.0 if math.isnan(power) else float(power)  # scipy's nct gives NaN far out, where power is 1


def _detectable(se: float, df: float, confidence: float) -> float:
    """The difference the t test at ``confidence`` detects with ``POWER`` (40 standard errors are
    enough at any df >= 1: the power there is above 0.99)."""
    return float(optimize.brentq(lambda d: _power(d, se, df, confidence) - POWER, 0.0, 40 * se))


def _seeds_needed(spread: _Spread, difference: float, confidence: float) -> float:
    """The fewest seeds whose comparison detects ``difference`` with ``POWER``; inf past ``MAX_SEEDS``.
    Power grows with the seeds (the standard error falls, the degrees of freedom rise): a bisection."""
    def detects(n: int) -> bool:
        return _power(difference, *spread.se_and_df(n), confidence) >= POWER

    if difference == 0 or not detects(MAX_SEEDS):
        return math.inf
    low, high = 1, MAX_SEEDS  # detects(high); low is below the fewest seeds a comparison has
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if detects(middle) else (middle, high)
    return float(high)


def verdict(low: float, high: float) -> str:
    """"better" if the whole interval lies above 0, "worse" if below, "one seed: no verdict" without
    an interval (NaN: one seed), else no detectable difference."""
    if math.isnan(low) or math.isnan(high):
        return ONE_SEED
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return NO_DIFFERENCE
