"""Pixel-level metrics: AUROC, F1-max, PRO curve and the exact AUPRO (MVTec AD definition)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .ranking import (_aupro_of, _auroc_of, _check_fpr_limit, _f1_of, _full_curve, _pixel_inputs, _rank,
                      _require_both, _require_regions)



def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level ROC AUC over all pixels; maps float (N,H,W), masks (N,H,W) nonzero = anomalous.

    Equals ``roc_auc_score(masks.ravel() != 0, maps.ravel())``.
    """
    m, g = _pixel_inputs(maps, masks)
    r = _rank(m, g, regions=False)
    _require_both(r, "pixel_auroc", "anomalous pixel", "normal pixel")
    return _auroc_of(r)


def pixel_f1_max(maps: Any, masks: Any) -> float:
    """Pixel-level F1-max over all pixels; maps float (N,H,W), masks (N,H,W)."""
    m, g = _pixel_inputs(maps, masks)
    r = _rank(m, g, regions=False)
    if r.n_pos == 0:
        raise ValueError(f"pixel_f1_max is undefined: there is no anomalous pixel among {r.n}")
    return _f1_of(r)


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """PRO curve (MVTec AD) at every distinct threshold, starting at (0, 0).

    Args: maps float (N,H,W), masks (N,H,W). Returns (fpr, pro), float64 (G + 1,): fpr =
    normal pixels >= threshold / all normal pixels; pro = mean over the 8-connected
    ground-truth regions of all images of the fraction of the region >= threshold.
    """
    m, g = _pixel_inputs(maps, masks)
    r = _rank(m, g, regions=True)
    _require_regions(r, "pro_curve")
    return _full_curve(r, r.pro)


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition), exact.

    Args: maps float (N,H,W), masks (N,H,W) nonzero = anomalous (normal images included).
    Trapezoid rule over every distinct threshold from (0, 0), the point at exactly
    ``fpr_limit`` linearly interpolated; divided by ``fpr_limit``. Returns a float in
    [0, 1]. Raises ValueError when there is no region or no normal pixel.
    """
    lim = _check_fpr_limit(fpr_limit)
    m, g = _pixel_inputs(maps, masks)
    r = _rank(m, g, regions=True)
    _require_regions(r, "aupro")
    return _aupro_of(r, lim)
