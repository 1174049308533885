"""Paired differences ``b - a`` over (class, seed) jobs: mean, bootstrap interval, sign counts,
and a Holm adjustment over a family of metrics.

A pair is one (class, seed) job seen on both sides (two variants of one run, or one variant of
two runs).  :func:`stratified_difference` is the one the aggregate and ``skrd4ad compare`` use:
the classes are a fixed benchmark, not a sample, so its interval resamples *seeds within each
class* and never changes the class mix.  :func:`paired_difference` resamples pooled pairs (kept
for comparison).  Both intervals are *descriptive* over the jobs at hand, not a claim about unseen
classes.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

MIN_PAIRS = 6  # below this a bootstrap interval over pairs is not worth printing

#: The quality metrics a comparison judges, in reading order, with their labels: the aggregate
#: table's metrics and ``skrd4ad compare``'s rows.  The Holm family of one variant (or contrast)
#: is those of them it has; thresholds, deployed-threshold rates and per-defect AUROCs are not judged.
JUDGED_METRICS = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO",
                  "aupro_seed": "AUPRO (seed)"}


def points(value: float, *, signed: bool = False) -> str:
    """A fraction in percentage points with two decimals: the one rounding rule of every printed
    percentage (tables, intervals, ``skrd4ad compare``).  The float noise of a mean is dropped first
    (9 decimals), then halves round up, so 0.75875 prints 75.88 in whatever order it was summed."""
    from decimal import ROUND_HALF_UP, Decimal

    if not np.isfinite(value):
        return f"{100 * value:{'+' if signed else ''}}"
    exact = Decimal(f"{100 * float(value):.9f}").quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{exact:{'+' if signed else ''}.2f}"

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
    n_classes: int | None = None  # strata (stratified_difference only)
    classes_positive: int | None = None  # classes whose mean difference is > 0
    classes_negative: int | None = None  # classes whose mean difference is < 0
    one_seed_per_class: bool = False  # nothing to resample: no interval
    p_value: float | None = None  # two-sided bootstrap p-value of "mean difference = 0"
    p_holm: float | None = None  # Holm-adjusted over `family` metrics (see holm_adjust)
    family: int = 1

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    @property
    def direction(self) -> int | None:
        """+1 (B higher), -1 (B lower), 0 (no detectable difference), None (no interval).
        With a Holm p-value the decision is ``p_holm < 1 - level``, else the interval's."""
        if not self.has_interval:
            return None
        if self.p_holm is not None:
            return 0 if self.p_holm >= 1.0 - self.level else (1 if self.mean > 0 else -1)
        return 0 if self.ci_low <= 0.0 <= self.ci_high else (1 if self.ci_low > 0.0 else -1)

    def verdict(self, a: str = "A", b: str = "B") -> str:
        """One phrase for a table: which side is higher, or why nothing can be said."""
        pct = f"{100 * self.level:g}% CI"
        if self.one_seed_per_class:
            return (f"one seed per class: no interval; {self.classes_positive} of {self.n_classes} "
                    f"classes favour {b}")
        if not self.has_interval:
            return f"too few pairs for an interval ({self.n_pairs} < {self.min_pairs})"
        excludes = not (self.ci_low <= 0.0 <= self.ci_high)
        holm = ("" if self.p_holm is None else
                f"; Holm p = {self.p_holm:.2g} over {self.family} metric{'s' if self.family != 1 else ''}")
        if self.direction == 0:
            why = f"{pct} {'excludes' if excludes else 'contains'} 0{holm}"
            return f"no detectable difference ({why})"
        side = "higher" if self.direction > 0 else "lower"
        return f"{b} {side} than {a} ({pct} excludes 0{holm})"


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b - a, axis=axis)


def _check_pairs(what: str, x: np.ndarray, y: np.ndarray, level: float) -> None:
    """ValueError unless there are pairs, all finite, and ``0 < level < 1``."""
    if len(x) == 0:
        raise ValueError(f"{what}: no pairs")
    for label, v in (("a", x), ("b", y)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{what}: {label} contains {int(np.count_nonzero(~np.isfinite(v)))} "
                             f"NaN/infinite value(s); drop those pairs first")
    if not 0.0 < level < 1.0:
        raise ValueError(f"{what}: level must be in (0, 1), got {level}")


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
    _check_pairs("paired_difference", x, y, level)
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


def stratified_difference(a: Sequence[float], b: Sequence[float], strata: Sequence[object], *,
                          level: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                          min_pairs: int = MIN_PAIRS) -> PairedDifference:
    """Mean over strata (classes) of the per-class mean of ``b - a``, with a paired bootstrap
    interval that resamples pairs (seeds) *within* each stratum.

    ``a``, ``b``, ``strata``: 1-D, length n; ``strata[i]`` is pair i's class.  Each of the
    ``n_resamples`` replicates draws n_c seeds with replacement inside every class c (numpy,
    vectorised, ``np.random.default_rng(seed)``) and averages the class means, so the class mix
    never varies.  With equal seeds per class the statistic equals the pooled mean.  The interval
    is the percentile interval of the replicates; ``p_value`` = 2 * min(share of replicates <= 0,
    share >= 0), each share counted as (k + 1) / (n_resamples + 1), capped at 1 (it is < 1 - level
    about when the interval excludes 0).  No interval (and no p-value) below ``min_pairs`` pairs,
    nor with one seed per class (nothing to resample; the verdict then counts the classes).
    """
    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    labels = np.asarray(list(strata), dtype=object)
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y) or len(labels) != len(x):
        raise ValueError(f"stratified_difference expects three 1-D sequences of one length, got "
                         f"{len(x)} a, {len(y)} b and {len(labels)} strata values")
    _check_pairs("stratified_difference", x, y, level)
    d = y - x
    groups = [d[labels == s] for s in dict.fromkeys(labels.tolist())]  # classes in first-seen order
    class_means = np.array([g.mean() for g in groups])
    mean = float(class_means.mean())
    one_seed = all(len(g) == 1 for g in groups)
    ci_low = ci_high = p = None
    if len(d) >= min_pairs and not one_seed:
        rng = np.random.default_rng(seed)
        boot = np.zeros(n_resamples)
        for g in groups:  # one (n_resamples, n_c) draw per class
            boot += g[rng.integers(0, len(g), size=(n_resamples, len(g)))].mean(axis=1)
        boot /= len(groups)
        if np.all(d == d[0]):  # every replicate equals the mean: the interval is exactly [d, d]
            boot[:] = d[0]
        alpha = 1.0 - level
        ci_low, ci_high = (float(q) for q in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
        below = (np.count_nonzero(boot <= 0.0) + 1) / (n_resamples + 1)
        above = (np.count_nonzero(boot >= 0.0) + 1) / (n_resamples + 1)
        p = float(min(1.0, 2.0 * min(below, above)))
    return PairedDifference(mean=mean, ci_low=ci_low, ci_high=ci_high, n_pairs=len(d),
                            n_positive=int(np.count_nonzero(d > 0)), n_negative=int(np.count_nonzero(d < 0)),
                            n_zero=int(np.count_nonzero(d == 0)), level=level, min_pairs=min_pairs,
                            n_classes=len(groups), classes_positive=int(np.count_nonzero(class_means > 0)),
                            classes_negative=int(np.count_nonzero(class_means < 0)),
                            one_seed_per_class=one_seed, p_value=p)


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order (shape (m,)).

    Sort ascending p_(1) <= ... <= p_(m); adjusted p_(i) = max over j <= i of (m - j + 1) p_(j),
    capped at 1.  E.g. ``holm_adjust([0.01, 0.04, 0.03])`` -> ``[0.03, 0.06, 0.06]``.
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = scaled
    return out


def with_holm(diffs: Sequence[PairedDifference]) -> list[PairedDifference]:
    """``diffs`` (one family: the metrics of one contrast) with ``p_holm`` and ``family`` set over
    those that have a p-value; the others are returned unchanged."""
    tested = [i for i, d in enumerate(diffs) if d.p_value is not None]
    adjusted = holm_adjust([diffs[i].p_value for i in tested]) if tested else []
    out = list(diffs)
    for i, p in zip(tested, adjusted):
        out[i] = replace(diffs[i], p_holm=float(p), family=len(tested))
    return out
