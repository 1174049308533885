"""Paired differences between two experiments: mean of ``b - a`` with a paired bootstrap interval.

A pair is one (class, seed) job evaluated in both experiments; the interval resamples pairs with
replacement.  It is a *descriptive* interval over the jobs at hand (few classes, few seeds), not a
claim about unseen classes.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_PAIRS = 6  # below this a bootstrap interval over pairs is not worth printing

# scipy >= 1.15 takes ``rng``; older releases (pyproject allows >= 1.10) only ``random_state``.
_RNG_ARG = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


@dataclass(frozen=True)
class PairedDifference:
    """Summary of ``b - a`` over paired observations (fractions, not percent)."""

    mean: float  # mean of (b - a)
    ci_low: float | None  # None when n_pairs < min_pairs
    ci_high: float | None
    n_pairs: int
    n_positive: int  # pairs with b > a (sign-test count)
    n_negative: int  # pairs with b < a
    n_zero: int  # pairs with b == a
    level: float  # confidence level of the interval, e.g. 0.95
    min_pairs: int = MIN_PAIRS

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    def verdict(self, a: str = "A", b: str = "B") -> str:
        """One phrase for a table: which side is higher, or why nothing can be said."""
        pct = f"{100 * self.level:g}% CI"
        if not self.has_interval:
            return f"too few pairs for an interval ({self.n_pairs} < {self.min_pairs})"
        if self.ci_low <= 0.0 <= self.ci_high:
            return f"no detectable difference ({pct} contains 0)"
        side = "higher" if self.ci_low > 0.0 else "lower"
        return f"{b} {side} than {a} ({pct} excludes 0)"


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b - a, axis=axis)


def paired_difference(a: Sequence[float], b: Sequence[float], *, level: float = 0.95,
                      n_resamples: int = 10_000, seed: int = 0,
                      min_pairs: int = MIN_PAIRS) -> PairedDifference:
    """Mean of ``b - a`` over pairs ``(a[i], b[i])`` and its paired bootstrap interval.

    ``a``, ``b``: 1-D, same length n.  The interval (``level``, two-sided) is computed with
    ``scipy.stats.bootstrap(paired=True)`` only when ``n >= min_pairs``, from
    ``np.random.default_rng(seed)``, so the same inputs always give the same interval.
    Percentile, not BCa: BCa's jackknife acceleration is noisy with a handful of pairs and it
    degenerates (NaN + warning) when all differences are equal.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"paired_difference expects two 1-D sequences, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"paired_difference: length mismatch ({len(x)} values in a, {len(y)} in b)")
    if len(x) == 0:
        raise ValueError("paired_difference: no pairs")
    for label, v in (("a", x), ("b", y)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"paired_difference: {label} contains {int(np.count_nonzero(~np.isfinite(v)))} "
                             f"NaN/infinite value(s); drop those pairs first")
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_difference: level must be in (0, 1), got {level}")
    d = y - x
    mean = float(d.mean())
    ci_low = ci_high = None
    if len(d) >= min_pairs:
        if np.all(d == d[0]):  # every resample has the same mean: the interval is exactly [d, d]
            ci_low = ci_high = float(d[0])
        else:
            with warnings.catch_warnings():  # e.g. scipy's DegenerateDataWarning on near-constant data
                warnings.simplefilter("ignore")
                res = stats.bootstrap((x, y), _mean_diff, paired=True, vectorized=True,
                                      n_resamples=n_resamples, confidence_level=level,
                                      method="percentile", **{_RNG_ARG: np.random.default_rng(seed)})
            ci_low, ci_high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return PairedDifference(mean=mean, ci_low=ci_low, ci_high=ci_high, n_pairs=len(d),
                            n_positive=int(np.count_nonzero(d > 0)), n_negative=int(np.count_nonzero(d < 0)),
                            n_zero=int(np.count_nonzero(d == 0)), level=level, min_pairs=min_pairs)
