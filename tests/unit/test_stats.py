"""orchestrator/stats.py on textbook cases: the t interval by hand, and paired bootstraps whose
answer is known (identical methods, one right wherever the other is wrong)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator.stats import NO_DIFFERENCE, interval, paired_bootstrap, verdict

LABELS = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 1] * 6)


def test_interval_is_the_student_t_interval_of_the_mean():
    values = [0.70, 0.74, 0.72]  # mean 0.72, sd 0.02
    half = sps.t.ppf(0.975, df=2) * 0.02 / math.sqrt(3)
    got = interval(values)
    assert (got.mean, got.sd) == pytest.approx((0.72, 0.02))
    assert (got.low, got.high) == pytest.approx((0.72 - half, 0.72 + half))
    assert interval(values, confidence=0.9).high < got.high


def test_one_seed_has_a_mean_and_no_interval():
    got = interval([0.8])
    assert got.mean == 0.8 and all(math.isnan(v) for v in (got.sd, got.low, got.high))


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_identical_predictions_differ_by_nothing(metric):
    preds = np.stack([np.roll(LABELS, 1), LABELS])
    diff = paired_bootstrap(LABELS, preds, preds.copy(), metric, n_resamples=500)
    assert (diff.observed, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert verdict(diff.low, diff.high) == NO_DIFFERENCE


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_right_wherever_the_other_is_wrong_is_better_and_the_reverse_worse(metric):
    right = np.stack([LABELS, LABELS])
    wrong = (right + 1) % 3
    better = paired_bootstrap(LABELS, right, wrong, metric, n_resamples=500)
    worse = paired_bootstrap(LABELS, wrong, right, metric, n_resamples=500)
    assert better.low > 0 and verdict(better.low, better.high) == "better"
    assert worse.high < 0 and verdict(worse.low, worse.high) == "worse"
    assert better.observed == pytest.approx(-worse.observed)


def test_the_difference_is_the_mean_over_seeds_and_the_interval_holds_it():
    rng = np.random.default_rng(3)
    a = np.where(rng.random((3, LABELS.size)) < 0.7, LABELS, (LABELS + 1) % 3)
    b = np.where(rng.random((3, LABELS.size)) < 0.6, LABELS, (LABELS + 2) % 3)
    diff = paired_bootstrap(LABELS, a, b, "accuracy", n_resamples=1000, seed=1)
    assert diff.observed == pytest.approx(((a == LABELS).mean(axis=1) - (b == LABELS).mean(axis=1)).mean())
    assert diff.low < diff.observed < diff.high
    assert paired_bootstrap(LABELS, a, b, "accuracy", n_resamples=1000, seed=1) == diff  # seeded: reproducible


def test_predictions_that_do_not_pair_are_refused():
    with pytest.raises(ValueError, match="do not pair"):
        paired_bootstrap(LABELS, np.stack([LABELS]), np.stack([LABELS, LABELS]), "accuracy")


@pytest.mark.parametrize("low, high, expected", [(0.01, 0.2, "better"), (-0.2, -0.01, "worse"),
                                                 (-0.1, 0.1, NO_DIFFERENCE), (0.0, 0.0, NO_DIFFERENCE)])
def test_verdict(low, high, expected):
    assert verdict(low, high) == expected
