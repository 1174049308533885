"""skrd4ad.stats.paired_difference: exact/degenerate cases, verdicts, sign counts, and agreement
with an independent scipy call and a brute-force NumPy percentile bootstrap."""

import warnings

import numpy as np
import pytest
from scipy import stats

from skrd4ad.stats import MIN_PAIRS, paired_difference


def test_constant_differences_give_the_exact_interval():
    a = np.array([0.5, 0.25, 0.125, 0.75, 0.375, 0.625])  # binary-exact, so b - a == 0.125 exactly
    res = paired_difference(a, a + 0.125)
    assert (res.mean, res.ci_low, res.ci_high) == (0.125, 0.125, 0.125)
    assert (res.n_pairs, res.n_positive, res.n_negative, res.n_zero) == (6, 6, 0, 0)
    assert "B higher" in res.verdict()


def test_nearly_constant_differences_leak_no_warning():
    a = np.array([0.81, 0.77, 0.93, 0.64, 0.88, 0.71, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = paired_difference(a, a + 0.01)  # float rounding: differences equal only to ~1e-16
    assert res.ci_low == pytest.approx(0.01, abs=1e-12) and res.ci_high == pytest.approx(0.01, abs=1e-12)


def test_too_few_pairs_computes_no_interval():
    res = paired_difference([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.3, 0.4, 0.5, 0.6])
    assert MIN_PAIRS == 6
    assert res.ci_low is None and res.ci_high is None and not res.has_interval
    assert res.mean == pytest.approx(0.1)
    assert res.verdict() == "too few pairs for an interval (5 < 6)"
    assert paired_difference([0.1] * 3, [0.2] * 3, min_pairs=3).has_interval


def test_clearly_positive_and_negative():
    a = np.zeros(8)
    d = np.array([0.01, 0.02, 0.03, 0.015, 0.025, 0.02, 0.01, 0.03])
    up = paired_difference(a, d)
    assert up.ci_low > 0 and up.ci_high <= d.max()
    assert up.verdict(a="RD4AD", b="SK-RD4AD") == "SK-RD4AD higher than RD4AD (95% CI excludes 0)"
    down = paired_difference(d, a)
    assert down.ci_high < 0
    assert down.verdict().startswith("B lower")


def test_zero_mean_is_no_detectable_difference():
    d = np.array([1.0, -1.0] * 4)
    res = paired_difference(np.zeros(8), d)
    assert res.mean == 0.0 and res.ci_low < 0 < res.ci_high
    assert "no detectable difference" in res.verdict()
    assert (res.n_positive, res.n_negative, res.n_zero) == (4, 4, 0)


def test_sign_counts_hand_example():
    a = [0, 1, 2, 3, 4, 5, 6]
    b = [1, 1, 1, 5, 4, 0, 7]  # differences: +1, 0, -1, +2, 0, -5, +1
    res = paired_difference(a, b)
    assert (res.n_pairs, res.n_positive, res.n_negative, res.n_zero) == (7, 3, 2, 2)
    assert res.mean == pytest.approx(-2 / 7)


def test_equals_a_direct_scipy_bootstrap_call():
    rng = np.random.default_rng(42)
    a = rng.uniform(0.6, 0.9, 12)
    b = a + rng.normal(0.01, 0.02, 12)
    res = paired_difference(a, b, level=0.9, n_resamples=5000, seed=7)
    ref = stats.bootstrap((a, b), lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
                          paired=True, vectorized=True, n_resamples=5000, confidence_level=0.9,
                          method="percentile", rng=np.random.default_rng(7))
    assert res.ci_low == pytest.approx(ref.confidence_interval.low, rel=1e-9, abs=1e-12)
    assert res.ci_high == pytest.approx(ref.confidence_interval.high, rel=1e-9, abs=1e-12)
    assert res.level == 0.9


def test_close_to_a_brute_force_percentile_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.6, 0.9, 15)
    d = rng.normal(0.01, 0.02, 15)
    res = paired_difference(a, a + d, n_resamples=100_000, seed=0)
    idx = np.random.default_rng(12345).integers(0, len(d), size=(100_000, len(d)))
    low, high = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    se = d.std(ddof=1) / np.sqrt(len(d))
    # Monte Carlo error ~0.01 se per side; BCa or a 90% interval would be off by >= 0.15 se
    assert res.ci_low == pytest.approx(low, abs=0.06 * se)
    assert res.ci_high == pytest.approx(high, abs=0.06 * se)


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=10), rng.uniform(size=10)
    assert paired_difference(a, b, seed=5) == paired_difference(a, b, seed=5)


@pytest.mark.parametrize("a, b, match", [
    ([0.1] * 6, [0.1] * 5, "length mismatch"),
    ([0.1, np.nan, 0.2, 0.3, 0.4, 0.5], [0.1] * 6, "a contains 1 NaN"),
    ([0.1] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, np.nan], "b contains 1 NaN"),
    ([], [], "no pairs"),
])
def test_bad_inputs_raise(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b)
