"""The seed's AUPRO loop, re-implemented literally: a reference for tests and benchmarks only.

The RD4AD research code (``hq-deng/RD4AD``, ``test.py``; SK-RD4AD uses the same function and
call) computes its published AUPRO with :func:`compute_pro` below, called once per anomalous
test image inside ``evaluation()`` and then averaged (:func:`aupro_seed_loop`).  This module
is that code, line for line, with two changes, neither of which makes it slower:

* the rows are collected in a list and framed once (``DataFrame.append``, which the seed
  called once per threshold, was removed in pandas 2);
* the seed's input ``assert`` statements (types, shapes, ``set(masks.flatten()) == {0, 1}``)
  are left out.

The package never calls this: :func:`skrd4ad.metrics.aupro_seed` computes the same number
without the threshold loop, and ``tests/test_metrics.py`` and ``benchmarks/bench_aupro.py`` /
``benchmarks/bench_evaluate.py`` compare it against this loop (the one copy they share).
Needs scikit-learn (the seed's ``sklearn.metrics.auc``; in the ``test`` extra).
"""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
from skimage import measure


def compute_pro(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200, fpr_limit: float = 0.3) -> float:
    """The seed's ``compute_pro``: masks int (n, H, W) of 0/1, amaps float (n, H, W).

    The seed calls it with one image (n = 1): ``gt.squeeze(0).astype(int)`` and
    ``anomaly_map[np.newaxis, :, :]`` (float64).  ``fpr_limit`` is the seed's hard-coded 0.3.
    """
    from sklearn.metrics import auc  # test extra only, as in the seed

    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th = amaps.min()
    max_th = amaps.max()
    delta = (max_th - min_th) / num_th
    rows = []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th] = 0
        binary_amaps[amaps > th] = 1
        pros = []
        for binary_amap, mask in zip(binary_amaps, masks):
            for region in measure.regionprops(measure.label(mask)):
                axes0_ids = region.coords[:, 0]
                axes1_ids = region.coords[:, 1]
                tp_pixels = binary_amap[axes0_ids, axes1_ids].sum()
                pros.append(tp_pixels / region.area)
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        fpr = fp_pixels / inverse_masks.sum()
        rows.append({"pro": statistics.mean(pros), "fpr": fpr, "threshold": th})
    df = pd.DataFrame(rows, columns=["pro", "fpr", "threshold"])
    # Normalize FPR from 0 ~ 1 to 0 ~ 0.3
    df = df[df["fpr"] < fpr_limit]
    df["fpr"] = df["fpr"] / df["fpr"].max()
    return float(auc(df["fpr"], df["pro"]))


def aupro_seed_loop(maps: np.ndarray, masks: np.ndarray, num_th: int = 200, fpr_limit: float = 0.3) -> float:
    """The seed's evaluation of AUPRO: :func:`compute_pro` once per image whose mask has an
    anomalous pixel (mask as int 0/1, map as float64, each a stack of one), then the mean.

    maps float (N, H, W); masks (N, H, W), nonzero = anomalous.  Same contract as
    :func:`skrd4ad.metrics.aupro_seed`, which must return the same number.
    """
    values = [
        compute_pro((mask != 0)[None].astype(int), amap[None].astype(np.float64), num_th, fpr_limit)
        for amap, mask in zip(maps, masks)
        if np.any(mask)
    ]
    return float(np.mean(values))
