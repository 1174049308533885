"""Exact anomaly-detection metrics: AUROC, F1-max, AUPRO (MVTec AD) and the seed's AUPRO.

Inputs are NumPy arrays or torch tensors on any device. Tensors are copied to host memory
once per call (one transfer, no per-item syncs); the work is then done in NumPy, because
the ground-truth regions need a host-side connected-component labelling anyway.

Shapes: ``scores`` float (N,), ``labels`` {0, 1} or bool (N,) with 1 = anomalous;
``maps`` float (N, H, W) anomaly maps, ``masks`` (N, H, W) ground truth where any nonzero
value marks an anomalous pixel.

Every threshold is a distinct score: a sample is positive when its score is ``>=`` the
threshold, so ties never depend on a sort order. All pixel metrics of one call come from
one sort of all pixel scores (plus a sort of the anomalous pixels alone, usually a few
percent). See ``docs/metrics.md`` for the definitions and how :func:`aupro_seed` differs
from :func:`aupro`.

Undefined metrics (one class only, no ground-truth region, NaN scores, ...) raise
``ValueError`` with a message that names the problem; no function returns NaN.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .image import f1_max, image_auroc, per_defect_auroc, roc_curve
from .pixel import aupro, pixel_auroc, pixel_f1_max, pro_curve
from .ranking import (_aupro_of, _auroc_of, _check_fpr_limit, _f1_and_threshold, _image_inputs, _pixel_inputs,
                      _rank, _require_regions, _sampled_curve)
from .seed import AuproSeedUndefinedError, _aupro_seed_np, _count_below, aupro_seed  # noqa: F401 (_count_below: tests)

__all__ = [
    "AuproSeedUndefinedError",
    "MetricsResult",
    "aupro",
    "aupro_seed",
    "compute_metrics",
    "downsample_curve",
    "f1_max",
    "image_auroc",
    "per_defect_auroc",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_curve",
    "roc_curve",
]


# ------------------------------------------------------------------------ curves


def downsample_curve(x: Any, y: Any, max_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Thin a curve to at most ``max_points`` points for plotting.

    Args: x, y float (M,), x monotone (either direction). Keeps the first and last point
    and, for each of ``max_points - 2`` equally spaced lengths along the curve (path
    length with x and y each scaled to [0, 1]), the first point reaching it, so steep
    and flat parts are both kept. Returns a subsequence (x, y) as float64 copies.
    """
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have equal length, got {xa.size} and {ya.size}")
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2 (both endpoints are kept), got {max_points}")
    if xa.size == 0:
        raise ValueError("cannot downsample an empty curve")
    dx = np.diff(xa)
    if not ((dx >= 0).all() or (dx <= 0).all()):
        raise ValueError("x must be monotone (non-decreasing or non-increasing)")
    if xa.size <= max_points:
        return xa.copy(), ya.copy()
    dy = np.diff(ya)
    rx, ry = float(np.ptp(xa)), float(np.ptp(ya))
    step = (np.abs(dx) / rx if rx > 0 else 0.0) + (np.abs(dy) / ry if ry > 0 else 0.0)
    s = np.concatenate([[0.0], np.cumsum(step)])
    targets = np.linspace(0.0, s[-1], max_points)[1:-1]
    idx = np.unique(np.concatenate([[0], np.searchsorted(s, targets, side="left"), [xa.size - 1]]))
    return xa[idx], ya[idx]


# ------------------------------------------------------------------------ all at once


@dataclass
class MetricsResult:
    """Scalars (flat keys for ``dvc metrics``) and curves (DataFrames for ``dvc plots``)."""

    scalars: dict[str, float] = field(default_factory=dict)
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why a metric is absent (aupro_seed)


def _pixel_metrics(m: np.ndarray, g: np.ndarray, fpr_limit: float, max_points: int) -> MetricsResult:
    """Pixel AUROC, F1-max, AUPRO and the PRO/ROC curves from one ranking, plus aupro_seed.

    Args: m float (N,H,W) maps, g bool (N,H,W) masks, as returned by ``_pixel_inputs``.
    """
    r = _rank(m, g, regions=True)
    _require_regions(r, "pixel metrics")
    out = MetricsResult()
    f1, threshold = _f1_and_threshold(r)
    out.scalars = {
        "pixel_auroc": _auroc_of(r),
        "pixel_f1_max": f1,
        "pixel_f1_threshold": threshold,
        "aupro": _aupro_of(r, fpr_limit),
    }
    fx, fy = _sampled_curve(r, lambda tp: tp / r.n_pos, max_points)
    px, py = _sampled_curve(r, r.pro, max_points)
    out.curves = {
        "pixel_roc": pd.DataFrame({"fpr": fx, "tpr": fy}),
        "pro": pd.DataFrame({"fpr": px, "pro": py}),
    }
    del r  # free the sorted keys before the per-image seed metric
    try:
        out.scalars["aupro_seed"] = _aupro_seed_np(m, g, 200, fpr_limit)
    except AuproSeedUndefinedError as err:  # the seed's formula crashes or gives NaN here
        note = f"aupro_seed omitted: {err}"
        warnings.warn(note, RuntimeWarning, stacklevel=3)
        out.notes.append(note)
    return out


def compute_metrics(
    scores: Any,
    labels: Any,
    defect_types: Sequence[str] | None,
    maps: Any = None,
    masks: Any = None,
    *,
    fpr_limit: float = 0.3,
    max_curve_points: int = 1000,
) -> MetricsResult:
    """Every metric of one evaluation.

    Args: scores float (N,), labels 0/1 (N,), defect_types str (N,) or None; maps float
    (N,H,W) and masks (N,H,W) together or both None (image-level-only dataset).
    Returns scalars ``image_auroc``, ``image_f1_max``, ``image_f1_threshold``, ``image_auroc_<defect>``
    and, with maps, ``pixel_auroc``, ``pixel_f1_max``, ``pixel_f1_threshold``, ``aupro``, ``aupro_seed``
    (the thresholds: the score / map value from which F1 is maximal, chosen on this test set; both AUPROs use
    ``fpr_limit``); curves ``image_roc`` (fpr, tpr) and, with maps, ``pixel_roc``
    (fpr, tpr) and ``pro`` (fpr, pro), each with at most ``max_curve_points`` rows.
    Without maps the pixel keys are absent. Where the seed's AUPRO is undefined on this
    data (:class:`AuproSeedUndefinedError`, e.g. an anomalous image with a constant map)
    the key ``aupro_seed`` is absent, a RuntimeWarning is issued and ``notes`` says why;
    every other undefined metric raises ValueError.
    """
    lim = _check_fpr_limit(fpr_limit)
    if max_curve_points < 2:
        raise ValueError(f"max_curve_points must be >= 2, got {max_curve_points}")
    if (maps is None) != (masks is None):
        raise ValueError("pass maps and masks together, or neither (image-level-only dataset)")
    s, y = _image_inputs(scores, labels)
    res = MetricsResult()
    res.scalars["image_auroc"] = image_auroc(s, y)
    r = _rank(s, y, regions=False)
    if r.n_pos == 0:
        raise ValueError(f"image_f1_max is undefined: there is no anomalous (label 1) sample among {r.n}")
    res.scalars["image_f1_max"], res.scalars["image_f1_threshold"] = _f1_and_threshold(r)
    if defect_types is not None:
        for d, v in per_defect_auroc(s, y, defect_types).items():
            res.scalars[f"image_auroc_{d}"] = v
    fpr, tpr = downsample_curve(*roc_curve(s, y), max_points=max_curve_points)
    res.curves["image_roc"] = pd.DataFrame({"fpr": fpr, "tpr": tpr})
    if maps is not None:
        m, g = _pixel_inputs(maps, masks)
        if m.shape[0] != s.size:
            raise ValueError(f"maps has {m.shape[0]} images but scores has {s.size}")
        px = _pixel_metrics(m, g, lim, max_curve_points)
        res.scalars.update(px.scalars)
        res.curves.update(px.curves)
        res.notes.extend(px.notes)
    return res
