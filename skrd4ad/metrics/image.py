"""Image-level metrics: ROC curve, AUROC, F1-max, AUROC per defect type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .ranking import _f1_of, _full_curve, _auroc_of, _image_inputs, _rank, _require_both



def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve at every distinct threshold, starting at (0, 0).

    Args: scores float (N,), labels 0/1 (N,). Returns (fpr, tpr), float64 (G + 1,) for G
    distinct scores, thresholds descending; equal to ``sklearn.metrics.roc_curve(labels,
    scores, drop_intermediate=False)[:2]``.
    """
    s, y = _image_inputs(scores, labels)
    r = _rank(s, y, regions=False)
    _require_both(r, "roc_curve", "anomalous (label 1)", "normal (label 0)")
    return _full_curve(r, lambda tp: tp / r.n_pos)


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level ROC AUC; scores float (N,), labels 0/1 (N,).

    Equals ``sklearn.metrics.roc_auc_score(labels, scores)`` (ties count half).
    Raises ValueError when only one class is present.
    """
    s, y = _image_inputs(scores, labels)
    r = _rank(s, y, regions=False)
    _require_both(r, "image_auroc", "anomalous image (label 1)", "normal image (label 0)")
    return _auroc_of(r)


def f1_max(scores: Any, labels: Any) -> float:
    """Best F1 over all thresholds (positive when score >= threshold).

    Args: scores float (N,), labels 0/1 (N,). Equals the max of 2PR/(P+R) over
    ``sklearn.metrics.precision_recall_curve``. Raises ValueError without positives.
    """
    s, y = _image_inputs(scores, labels)
    r = _rank(s, y, regions=False)
    if r.n_pos == 0:
        raise ValueError(f"f1_max is undefined: there is no anomalous (label 1) sample among {r.n}")
    return _f1_of(r)


def per_defect_auroc(scores: Any, labels: Any, defect_types: Sequence[str]) -> dict[str, float]:
    """AUROC of each defect type's anomalous images against all normal images.

    Args: scores float (N,), labels 0/1 (N,), defect_types str (N,) (e.g. "crack"; the
    type of normal images is ignored). Returns {defect type: AUROC}, sorted by name.
    """
    s, y = _image_inputs(scores, labels)
    types = np.asarray([str(t) for t in defect_types])
    if types.shape != s.shape:
        raise ValueError(f"defect_types has {types.size} entries, scores has {s.size}")
    if not (~y).any():
        raise ValueError("per_defect_auroc is undefined: there is no normal image (label 0)")
    out: dict[str, float] = {}
    for d in sorted(set(types[y].tolist())):
        sel = ~y | (y & (types == d))
        out[d] = image_auroc(s[sel], y[sel])
    return out
