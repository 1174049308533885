"""Stratified (seeds within classes) bootstrap, the one-seed case and Holm's adjustment, on
hand-worked inputs."""

from __future__ import annotations

import numpy as np
import pytest

from skrd4ad.stats import holm_adjust, paired_difference, stratified_difference, with_holm

# class "big": B is 0.5 above A on every seed (spread 0.001); class "flat": no difference
A = [0.0] * 6
B = [0.500, 0.501, 0.499, 0.000, 0.001, -0.001]
CLASSES = ["big"] * 3 + ["flat"] * 3


def test_stratified_interval_keeps_the_class_mix_pooled_does_not():
    """Stratified: every replicate is (mean of 3 draws from big + mean of 3 from flat) / 2, so it
    lies in [(0.499 - 0.001) / 2, (0.501 + 0.001) / 2] = [0.249, 0.251].  Pooled: a replicate of 6
    draws holds k ~ Binomial(6, 1/2) 'big' pairs, mean about k / 12; P(k <= 1) = 7/64 > 2.5% and
    P(k = 0) = 1/64 < 2.5%, so its 2.5% quantile is about 1/12 and, by symmetry, its 97.5% about 5/12."""
    strat = stratified_difference(A, B, CLASSES, n_resamples=20_000, seed=1)
    pooled = paired_difference(A, B, n_resamples=20_000, seed=1)
    assert strat.mean == pytest.approx(0.25) and pooled.mean == pytest.approx(0.25)
    assert 0.249 <= strat.ci_low < strat.ci_high <= 0.251
    assert pooled.ci_low == pytest.approx(1 / 12, abs=0.003) and pooled.ci_high == pytest.approx(5 / 12, abs=0.003)
    assert (strat.n_classes, strat.classes_positive, strat.classes_negative) == (2, 1, 0)  # flat: mean 0
    assert strat.p_value == pytest.approx(2 / 20_001)  # no replicate <= 0


def test_statistic_is_the_mean_of_class_means():
    """Unequal seeds per class: class x has differences 0.3, 0.3 (mean 0.3), class y one 0.0 ... the
    statistic is (0.3 + 0.0) / 2 = 0.15, not the pooled 0.2; with equal counts both agree."""
    d = stratified_difference([0, 0, 0, 0, 0, 0], [0.3, 0.3, 0.0, 0.0, 0.0, 0.0], ["x", "x", "y", "y", "y", "y"])
    assert d.mean == pytest.approx(0.15)
    assert d.n_pairs == 6 and (d.n_positive, d.n_zero) == (2, 4)
    assert d.ci_low == pytest.approx(0.15) and d.ci_high == pytest.approx(0.15)  # no within-class spread


def test_one_seed_per_class_gives_no_interval_and_counts_classes():
    d = stratified_difference([0.8] * 7, [0.81, 0.82, 0.79, 0.83, 0.84, 0.80, 0.85], list("abcdefg"))
    assert d.ci_low is None and d.ci_high is None and d.p_value is None and d.one_seed_per_class
    assert (d.classes_positive, d.classes_negative, d.n_classes) == (5, 1, 7)
    assert d.verdict("A", "B") == "one seed per class: no interval; 5 of 7 classes favour B"
    assert d.direction is None


def test_too_few_pairs_still_says_so():
    d = stratified_difference([0, 0, 0, 0], [1, 2, 1, 2], ["a", "a", "b", "b"])
    assert d.ci_low is None and d.verdict() == "too few pairs for an interval (4 < 6)"


def test_same_seed_gives_the_same_interval_and_vectorised_matches_a_loop():
    """The vectorised draw equals a per-replicate loop over the same generator calls."""
    rng = np.random.default_rng(5)
    a = rng.uniform(0.7, 0.9, 9)
    b = a + rng.normal(0.01, 0.02, 9)
    cls = ["p"] * 4 + ["q"] * 5
    d1 = stratified_difference(a, b, cls, n_resamples=500, seed=3)
    assert d1 == stratified_difference(a, b, cls, n_resamples=500, seed=3)
    gen = np.random.default_rng(3)
    diffs = {"p": (b - a)[:4], "q": (b - a)[4:]}
    draws = {c: gen.integers(0, len(v), size=(500, len(v))) for c, v in diffs.items()}
    boot = [np.mean([diffs[c][draws[c][r]].mean() for c in diffs]) for r in range(500)]
    assert d1.ci_low == pytest.approx(np.quantile(boot, 0.025)) and d1.ci_high == pytest.approx(np.quantile(boot, 0.975))


def test_holm_on_hand_computed_p_values():
    """Sorted p 0.01, 0.03, 0.04 (m = 3): 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06."""
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 = 1; then max(1, 0.9): monotone
    assert holm_adjust([0.02]) == pytest.approx([0.02])


def test_holm_changes_a_verdict():
    """Two metrics with raw p 0.03 and 0.04 (intervals excluding 0 at 95%): after Holm both are
    0.06 and neither is called a difference; the verdict names the family."""
    base = stratified_difference(A, B, CLASSES, n_resamples=2000)
    from dataclasses import replace

    adjusted = with_holm([replace(base, p_value=0.03), replace(base, p_value=0.04)])
    assert [d.p_holm for d in adjusted] == pytest.approx([0.06, 0.06])
    assert all(d.family == 2 and d.direction == 0 for d in adjusted)
    assert adjusted[0].verdict("A", "B") == "no detectable difference (95% CI excludes 0; Holm p = 0.06 over 2 metrics)"
    assert with_holm([replace(base, p_value=0.01)])[0].verdict("A", "B").startswith("B higher than A")


@pytest.mark.parametrize("kwargs, match", [
    (dict(a=[0, 1], b=[0, 1], strata=["x"]), "one length"),
    (dict(a=[0, np.nan], b=[0, 1], strata=["x", "x"]), "NaN"),
    (dict(a=[], b=[], strata=[]), "no pairs"),
])
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stratified_difference(**kwargs)
