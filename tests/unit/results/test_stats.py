"""orchestrator/results/stats.py: the t interval by hand, ``compare`` on cases whose answer is known (and
against scipy's textbook tests at its two limits), and its calibration by simulation where the
truth is known: equal methods under seed noise, and a true difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator.method.metrics import compute_metric
from orchestrator.results.stats import NO_DIFFERENCE, ONE_SEED, compare, interval, pseudo_values, verdict

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
    diff = compare(LABELS, preds, preds.copy(), metric)
    assert (diff.observed, diff.low, diff.high, diff.p_improvement) == (0.0, 0.0, 0.0, 0.5)
    assert diff.verdict == NO_DIFFERENCE
    # nothing varied, so there is no power to state (not "any difference would have been detected")
    assert not diff.varies and math.isnan(diff.detectable) and math.isnan(diff.seeds_needed)


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_right_wherever_the_other_is_wrong_is_better_and_the_reverse_worse(metric):
    right = np.stack([LABELS, LABELS, LABELS])
    wrong = (right + 1) % 3
    better, worse = compare(LABELS, right, wrong, metric), compare(LABELS, wrong, right, metric)
    assert better.low > 0 and better.verdict == "better" and better.p_improvement == 1.0
    assert worse.high < 0 and worse.verdict == "worse" and worse.p_improvement == 0.0
    assert better.observed == pytest.approx(-worse.observed)


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_one_seed_gets_a_difference_and_no_verdict(metric):
    diff = compare(LABELS, [LABELS], [(LABELS + 1) % 3], metric)
    assert diff.observed > 0 and diff.verdict == ONE_SEED
    assert all(math.isnan(v) for v in (diff.low, diff.high, diff.p_improvement, diff.detectable, diff.seeds_needed))


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_pseudo_values_are_the_jackknife_of_the_metric(metric):
    rng = np.random.default_rng(0)
    preds = np.where(rng.random((2, LABELS.size)) < 0.7, LABELS, (LABELS + 1) % 3)
    classes = np.unique(LABELS)
    got = pseudo_values(LABELS, preds, metric, classes)
    m = LABELS.size
    for i, row in enumerate(preds):
        left_out = [compute_metric(metric, np.delete(row, j), np.delete(LABELS, j)) for j in range(m)]
        assert got[i] == pytest.approx(m * compute_metric(metric, row, LABELS) - (m - 1) * np.array(left_out))
    if metric == "accuracy":
        assert (got == (preds == LABELS)).all()


def test_with_the_same_predictions_at_every_seed_it_is_the_paired_t_test_over_examples():
    """Deterministic training: the seeds add nothing, the test sample is all the noise there is."""
    rng = np.random.default_rng(1)
    a = np.where(rng.random(LABELS.size) < 0.8, LABELS, (LABELS + 1) % 3)
    b = np.where(rng.random(LABELS.size) < 0.6, LABELS, (LABELS + 1) % 3)
    diff = compare(LABELS, np.stack([a] * 3), np.stack([b] * 3), "accuracy")
    textbook = sps.ttest_1samp((a == LABELS).astype(float) - (b == LABELS), 0).confidence_interval(0.95)
    assert (diff.low, diff.high) == pytest.approx((textbook.low, textbook.high))


def test_with_no_example_to_example_difference_it_is_the_t_test_over_seeds():
    """Each seed moves the difference uniformly over the examples: the seeds are all the noise there is."""
    right, wrong = LABELS, (LABELS + 1) % 3
    a, b = np.stack([right, right, right, right]), np.stack([wrong, right, wrong, wrong])
    diff = compare(LABELS, a, b, "accuracy")
    textbook = sps.ttest_1samp([1.0, 0.0, 1.0, 1.0], 0).confidence_interval(0.95)
    assert diff.observed == 0.75 and (diff.low, diff.high) == pytest.approx((textbook.low, textbook.high))


def test_seeds_that_score_alike_but_predict_differently_still_have_an_interval():
    """The demo's case: both methods at chance every seed, one of them predicting one class, the other
    a mix at one seed. The per-seed differences are all 0, yet that seed's examples differ."""
    labels = np.array([0, 1] * 30)
    one_class = np.zeros_like(labels)
    mixed = np.where(np.arange(60) % 4 < 2, labels, 1 - labels)  # right on half the examples
    diff = compare(labels, np.stack([one_class, mixed, one_class]), np.stack([one_class, 1 - one_class, one_class]),
                   "accuracy")
    assert diff.observed == 0 and diff.varies and diff.low < 0 < diff.high and diff.verdict == NO_DIFFERENCE


def test_predictions_that_do_not_pair_are_refused():
    with pytest.raises(ValueError, match="do not pair"):
        compare(LABELS, np.stack([LABELS]), np.stack([LABELS, LABELS]), "accuracy")


@pytest.mark.parametrize("low, high, expected", [(0.01, 0.2, "better"), (-0.2, -0.01, "worse"),
                                                 (-0.1, 0.1, NO_DIFFERENCE), (0.0, 0.0, NO_DIFFERENCE),
                                                 (math.nan, math.nan, ONE_SEED)])
def test_verdict(low, high, expected):
    assert verdict(low, high) == expected


# --- calibration: the cases, simulated where the truth is known ---------------------------

EXAMPLES, ACCURACY, REPLICATIONS = 150, 0.75, 1000


def simulate(rng, seeds: int, seed_sd: float, difference: float):
    """One test set of 150 examples and two methods whose expected accuracies differ by
    ``difference``. Examples are hard or easy for both methods (a shared difficulty) and each method
    has its own quirks on them, so even equal methods differ on a given test set; each seed moves a
    method's accuracy by N(0, seed_sd), and each prediction is a draw of its own."""
    labels = rng.integers(0, 2, EXAMPLES)
    difficulty = rng.normal(0, 1.0, EXAMPLES)
    preds = []
    for expected in (ACCURACY + difference / 2, ACCURACY - difference / 2):
        latent = difficulty + rng.normal(0, 0.5, EXAMPLES)  # Var 1.25: the offset below makes E[p] = expected
        p_right = sps.norm.cdf(sps.norm.ppf(expected) * math.sqrt(1 + 1.25) + latent)
        shifted = np.clip(p_right[None] + rng.normal(0, seed_sd, (seeds, 1)), 0, 1)
        right = rng.random((seeds, EXAMPLES)) < shifted
        preds.append(np.where(right, labels, 1 - labels))
    return labels, *preds


def verdict_rates(seeds: int, seed_sd: float, difference: float) -> dict[str, float]:
    rng = np.random.default_rng(2026)
    verdicts = [compare(*simulate(rng, seeds, seed_sd, difference), "accuracy").verdict for _ in range(REPLICATIONS)]
    return {v: verdicts.count(v) / REPLICATIONS for v in ("better", "worse")}


@pytest.mark.parametrize("seeds, seed_sd", [(3, 0.0), (3, 0.05), (3, 0.10), (5, 0.0), (5, 0.05), (5, 0.10)])
def test_equal_methods_get_a_verdict_at_most_8_percent_of_the_time(seeds, seed_sd):
    rates = verdict_rates(seeds, seed_sd, 0.0)
    assert rates["better"] + rates["worse"] <= 0.08, rates


@pytest.mark.parametrize("seeds, power", [(5, 0.60), (3, 0.20)])
def test_a_true_difference_of_015_is_found_and_never_reversed(seeds, power):
    rates = verdict_rates(seeds, 0.05, 0.15)
    assert rates["better"] >= power and rates["worse"] == 0, rates


def test_detectable_falls_with_seeds_and_more_seeds_are_needed_where_none_was_detected():
    rng = np.random.default_rng(5)
    labels, a, b = simulate(rng, 10, 0.05, 0.10)
    three, ten = compare(labels, a[:3], b[:3], "accuracy"), compare(labels, a, b, "accuracy")
    assert ten.detectable < three.detectable
    assert ten.verdict == NO_DIFFERENCE and 10 < ten.seeds_needed < 1000
    # the standard error at the seeds needed is smaller than at the seeds run, by the seeds' share alone
    assert ten.spread.se_and_df(int(ten.seeds_needed))[0] < ten.spread.se_and_df(10)[0]


def test_a_difference_smaller_than_the_test_sample_can_show_needs_more_than_seeds():
    """With the same predictions at every seed, more seeds add no information: no number detects a
    difference well inside the test sample's noise."""
    rng = np.random.default_rng(6)
    a = np.where(rng.random(LABELS.size) < 0.7, LABELS, (LABELS + 1) % 3)
    b = a.copy()
    first_miss = np.flatnonzero(a != LABELS)[0]
    b[first_miss] = LABELS[first_miss]  # one example apart
    diff = compare(LABELS, np.stack([a] * 3), np.stack([b] * 3), "accuracy")
    assert diff.verdict == NO_DIFFERENCE and diff.seeds_needed == math.inf and diff.detectable > abs(diff.observed)
