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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import warnings

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

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

_CHUNK = 1 << 20  # samples per step when building keys or scanning (bounds temporaries)
# 8-connectivity inside each (H, W) slice and none across the stack axis, so a (B, H, W)
# stack is labelled in one call with ids that are unique across its images.
_STRUCT_STACK = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_STACK[1] = True
_STRUCT_2D = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------- inputs


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array (tensors: detached, one device-to-host copy)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _score_array(x: Any, name: str) -> np.ndarray:
    """Scores as float32 when that is exact for the dtype, else float64; rejects NaN."""
    a = _to_numpy(x)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); nothing to evaluate")
    exact32 = a.dtype.kind == "f" and a.dtype.itemsize <= 4
    exact32 |= a.dtype.kind in "biu" and a.dtype.itemsize <= 2
    a = a.astype(np.float32 if exact32 else np.float64, copy=False)
    if np.isnan(np.max(a)):  # max propagates NaN: one pass, no temporary
        n_nan = int(np.count_nonzero(np.isnan(a)))
        raise ValueError(f"{name} contains {n_nan} NaN values; fix the model output first")
    return a


def _label_array(x: Any, name: str) -> np.ndarray:
    """Binary labels as bool; only 0/1 (or bool) values are accepted."""
    a = _to_numpy(x)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be 0/1 or bool, got dtype {a.dtype}")
    bad = (a != 0) & (a != 1)
    if bad.any():
        raise ValueError(
            f"{name} must contain only 0 (normal) and 1 (anomalous); found value "
            f"{a[bad].flat[0]!r}. Binarise the labels first."
        )
    return a != 0


def _image_inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _score_array(scores, "scores")
    y = _label_array(labels, "labels")
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            f"scores and labels must both be 1-D of equal length (N,), got shapes "
            f"{s.shape} and {y.shape}"
        )
    return s, y


def _pixel_inputs(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, H, W) maps and masks; returns (float32/64 maps, bool masks)."""
    m = _score_array(maps, "maps")
    g = _to_numpy(masks)
    if m.ndim != 3:
        raise ValueError(
            f"maps must have shape (N, H, W), got {m.shape}; squeeze a channel axis or "
            "add a batch axis"
        )
    if g.shape != m.shape:
        raise ValueError(f"masks shape {g.shape} does not match maps shape {m.shape}")
    if g.dtype != bool:
        if g.dtype.kind not in "biuf":
            raise ValueError(f"masks must be bool or numeric, got dtype {g.dtype}")
        g = g != 0
    return m, g


def _check_fpr_limit(fpr_limit: float) -> float:
    lim = float(fpr_limit)
    if not 0.0 < lim <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    return lim


# ------------------------------------------------------------------------ ranking


def _desc_key(x: np.ndarray, wide: bool) -> np.ndarray:
    """Unsigned keys whose ascending order is the descending order of the floats ``x``.

    ``wide``: uint64 keys of float64 values, else uint32 keys of float32 values (``x``
    is cast, which must be exact). -0.0 and +0.0 get one key (they compare equal).
    For sign bit 0 the key is ``bits ^ 0x7F..F`` (larger value, smaller key); for sign
    bit 1 it is ``bits`` (more negative, larger key, all above the non-negative ones).
    """
    ftype, utype, top = (np.float64, np.uint64, 63) if wide else (np.float32, np.uint32, 31)
    u = np.add(x, ftype(0.0), dtype=ftype, casting="same_kind").view(utype)  # -0.0 -> +0.0
    m = u >> top
    m -= 1  # sign 0 -> all ones (wraps), sign 1 -> 0
    m &= np.iinfo(utype).max >> 1
    u ^= m
    return u


def _fits_float32(a: np.ndarray) -> bool:
    """True when every value of float64 ``a`` is exactly representable in float32."""
    flat = a.reshape(-1)
    for i in range(0, flat.size, _CHUNK):
        c = flat[i : i + _CHUNK]
        if not np.array_equal(c.astype(np.float32).astype(np.float64), c):
            return False
    return True


@dataclass
class _Ranked:
    """Samples ranked by descending score, with what the metrics need about positives.

    ``keys`` (n,) sorted ascending (= scores descending, see :func:`_desc_key`);
    ``pos_keys`` (P,) the sorted keys of the positive samples; ``pos_w`` (P + 1,) when
    regions were labelled: ``pos_w[k]`` is the sum of 1 / region_size over the first k
    positives in key order (the PRO numerator once all positives down to a threshold are
    in); ``n_regions`` the number of ground-truth regions.

    A threshold is a distinct key ``v``: TP = positives with key <= v, FP = all samples
    with key <= v minus TP. Everything is integer until the final division.
    """

    keys: np.ndarray
    pos_keys: np.ndarray
    pos_w: np.ndarray | None = None
    n_regions: int = 0

    @property
    def n(self) -> int:
        return int(self.keys.size)

    @property
    def n_pos(self) -> int:
        return int(self.pos_keys.size)

    @property
    def n_neg(self) -> int:
        return self.n - self.n_pos

    def at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tp, fp) int64 at the threshold of sorted positions ``idx`` (its whole tie group)."""
        v = self.keys[idx]
        tp = np.searchsorted(self.pos_keys, v, side="right").astype(np.int64)
        return tp, np.searchsorted(self.keys, v, side="right") - tp

    def events(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tp_before, tp, fp_before, fp) int64 for each threshold that adds positives.

        Between two such thresholds only FP grows (a horizontal stretch of the curve), so
        these points and the stretch ends determine every metric except full curves.
        """
        v = self.pos_keys
        last = np.flatnonzero(np.append(v[1:] != v[:-1], True))
        tp = last + 1
        tp_before = np.concatenate([[0], tp[:-1]])
        u = v[last]
        fp_before = np.searchsorted(self.keys, u, side="left") - tp_before
        fp = np.searchsorted(self.keys, u, side="right") - tp
        return tp_before, tp, fp_before, fp

    def pro(self, tp: np.ndarray) -> np.ndarray:
        """PRO (float64, clipped to 1) once the first ``tp`` positives are in."""
        assert self.pos_w is not None
        return np.minimum(self.pos_w[tp] / self.n_regions, 1.0)

    def group_ends(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (tp, fp) int64 at every distinct threshold, descending, chunk by chunk."""
        keys = self.keys
        for a in range(0, self.n, _CHUNK):
            b = min(a + _CHUNK, self.n)
            kc = keys[a : b + 1]  # one past the chunk to see where its last group ends
            is_end = kc[1:] != kc[:-1] if b < self.n else np.append(kc[1:] != kc[:-1], True)
            ends = np.flatnonzero(is_end)
            tp = np.searchsorted(self.pos_keys, kc[ends], side="right").astype(np.int64)
            yield tp, ends + (a + 1) - tp


def _rank(scores: np.ndarray, positive: np.ndarray, regions: bool) -> _Ranked:
    """Rank ``scores`` (N, ...) float32/64 with ``positive`` bool of the same shape.

    ``regions``: label the 8-connected regions of each (H, W) slice of ``positive``
    (needs 3-D input) and keep the region weights of the positives. Extra memory: one
    key per sample (4 bytes, or 8 for float64 scores float32 cannot hold) plus about
    20 bytes per positive.
    """
    sc = scores.reshape(scores.shape[0], -1)
    pm = positive.reshape(sc.shape)
    rows, per_row = sc.shape
    wide = not (sc.dtype == np.float32 or _fits_float32(sc))
    keys = np.empty(sc.size, dtype=np.uint64 if wide else np.uint32)
    pos_keys: list[np.ndarray] = []
    pos_ids: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    n_regions = 0
    step = max(1, _CHUNK // per_row)
    for i0 in range(0, rows, step):
        i1 = min(i0 + step, rows)
        k = _desc_key(sc[i0:i1], wide).reshape(-1)
        keys[i0 * per_row : i1 * per_row] = k
        p = pm[i0:i1]
        if not regions:
            pos_keys.append(k[p.reshape(-1)])
            continue
        rows_with = np.flatnonzero(p.any(axis=1))  # label only images with a region
        if rows_with.size == 0:
            continue
        lab, n_lab = ndimage.label(positive[i0:i1][rows_with], structure=_STRUCT_STACK)
        lab = lab.reshape(rows_with.size, per_row)
        sel = lab != 0
        pos_keys.append(k.reshape(-1, per_row)[rows_with][sel])
        ids = lab[sel]
        sizes.append(np.bincount(ids, minlength=n_lab + 1)[1:])
        pos_ids.append(ids.astype(np.int64) + (n_regions - 1))
        n_regions += n_lab
    keys.sort()
    pk = np.concatenate(pos_keys) if pos_keys else keys[:0].copy()
    if not regions:
        pk.sort()
        return _Ranked(keys=keys, pos_keys=pk)
    if not pos_keys:
        return _Ranked(keys=keys, pos_keys=pk, pos_w=np.zeros(1), n_regions=0)
    order = np.argsort(pk)
    inv_size = 1.0 / np.concatenate(sizes)
    pos_w = np.concatenate([[0.0], np.cumsum(inv_size[np.concatenate(pos_ids)[order]])])
    return _Ranked(keys=keys, pos_keys=pk[order], pos_w=pos_w, n_regions=n_regions)


def _require_both(r: _Ranked, what: str, pos: str, neg: str) -> None:
    if r.n_pos == 0 or r.n_neg == 0:
        missing = pos if r.n_pos == 0 else neg
        raise ValueError(
            f"{what} is undefined: there is no {missing} sample among {r.n} "
            f"(needs both {pos} and {neg} samples)"
        )


def _require_regions(r: _Ranked, what: str) -> None:
    if r.n_pos == 0:
        raise ValueError(
            f"{what} is undefined: the masks contain no anomalous pixel (no ground-truth "
            "region); for datasets without pixel ground truth pass maps=None, masks=None"
        )
    if r.n_neg == 0:
        raise ValueError(f"{what} is undefined: every pixel is anomalous (no normal pixel, FPR 0/0)")


# ------------------------------------------------------------------ from the ranking


def _auroc_of(r: _Ranked) -> float:
    """Exact ROC AUC (ties = half credit): integer trapezoid sum over the curve."""
    tp_b, tp, fp_b, fp = r.events()
    fp_next = np.append(fp_b[1:], r.n_neg)  # end of the horizontal stretch after each event
    twice = int(np.sum((fp - fp_b) * (tp_b + tp))) + int(np.sum((fp_next - fp) * (2 * tp)))
    return twice / (2 * r.n_pos * r.n_neg)


def _f1_of(r: _Ranked) -> float:
    """max F1 = 2 TP / (TP + FP + P); it peaks at a threshold that adds positives."""
    return _f1_and_threshold(r)[0]


def _f1_and_threshold(r: _Ranked) -> tuple[float, float]:
    """(max F1, its threshold): the score value from which samples count as anomalous
    (``score >= threshold``); the highest such value when several thresholds tie."""
    _, tp, _, fp = r.events()
    f1 = 2.0 * tp / (tp + fp + r.n_pos)
    best = int(np.argmax(f1))
    key = r.pos_keys[np.flatnonzero(np.append(r.pos_keys[1:] != r.pos_keys[:-1], True))[best]]
    return float(f1[best]), _key_value(key)


def _key_value(key: np.integer) -> float:
    """The float whose :func:`_desc_key` is ``key`` (its inverse for one key)."""
    wide = key.dtype == np.uint64
    ftype, utype, top = (np.float64, np.uint64, 63) if wide else (np.float32, np.uint32, 31)
    u = np.array([key], dtype=utype)
    if not (u[0] >> utype(top)):  # sign bit 0 after the flip: a non-negative value
        u ^= np.iinfo(utype).max >> 1
    return float(u.view(ftype)[0])


def _area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y), x non-decreasing, up to x = limit (interpolated)."""
    j = int(np.searchsorted(x, limit, side="right"))  # x[:j] <= limit
    area = float(np.sum(0.5 * (y[1:j] + y[: j - 1]) * (x[1:j] - x[: j - 1])))
    if j < x.size:
        x0, y0, x1, y1 = x[j - 1], y[j - 1], x[j], y[j]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_lim) * (limit - x0)
    return area


def _aupro_of(r: _Ranked, limit: float) -> float:
    """MVTec AUPRO: area under the PRO curve from (0, 0) up to ``limit``, / ``limit``."""
    tp_b, tp, fp_b, fp = r.events()
    # Polyline (0,0), then per event: stretch end (fp_b, pro_b) and event end (fp, pro),
    # then (N, last pro). Stretches are horizontal, so their inner points add nothing.
    x = np.empty(2 * tp.size + 2)
    y = np.empty_like(x)
    x[0] = y[0] = 0.0
    x[1:-1:2], x[2:-1:2], x[-1] = fp_b / r.n_neg, fp / r.n_neg, 1.0
    y[1:-1:2], y[2:-1:2] = r.pro(tp_b), r.pro(tp)
    y[-1] = y[-2]
    return _area_to(x, y, limit) / limit


def _sampled_curve(
    r: _Ranked, y_of: Callable[[np.ndarray], np.ndarray], max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Curve (fpr, y_of(tp)) thinned like :func:`downsample_curve`, without a full scan.

    The curve rises from (0, 0) to (1, 1) with both coordinates monotone, so its scaled
    path length is fpr + y. For each of ``max_points - 2`` equally spaced lengths, a
    vectorised bisection over sorted positions finds the first threshold reaching it.
    """
    targets = np.linspace(0.0, 2.0, max_points)[1:-1]
    lo = np.zeros(targets.size, dtype=np.int64)
    hi = np.full(targets.size, r.n - 1, dtype=np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        tp, fp = r.at(mid)
        reached = fp / r.n_neg + y_of(tp) >= targets
        hi = np.where(reached, mid, hi)
        lo = np.where(reached, lo, mid + 1)
    tp, fp = r.at(np.append(lo, r.n - 1))
    fp = np.concatenate([[0], fp])
    tp = np.concatenate([[0], tp])
    keep = np.append(True, (fp[1:] != fp[:-1]) | (tp[1:] != tp[:-1]))  # one point per threshold
    return fp[keep] / r.n_neg, y_of(tp[keep])


def _full_curve(r: _Ranked, y_of: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, y_of(tp)) at (0, 0) and every distinct threshold, float64."""
    xs, ys = [np.zeros(1)], [np.zeros(1)]
    for tp, fp in r.group_ends():
        xs.append(fp / r.n_neg)
        ys.append(y_of(tp))
    return np.concatenate(xs), np.concatenate(ys)


# ------------------------------------------------------------------- image metrics


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


# ------------------------------------------------------------------- pixel metrics


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


# ------------------------------------------------------------------- seed's AUPRO


class AuproSeedUndefinedError(ValueError):
    """The seed's AUPRO formula crashes or gives NaN on one image (message names it)."""


def _count_below(ths: np.ndarray, a: np.ndarray, lo: float, step: float) -> np.ndarray:
    """``np.searchsorted(ths, a, side="left")`` for sorted, nearly evenly spaced ``ths``
    (``np.arange(lo, ..., step)``): an arithmetic guess fixed up by comparisons, ~3x faster."""
    n = ths.size
    guess = np.floor((a - lo) / step)
    np.clip(guess, 0, n, out=guess)
    idx = guess.astype(np.int64)
    padded = np.concatenate([[-np.inf], ths, [np.inf]])  # padded[k + 1] = ths[k]
    while True:  # count too small: ths[idx] < a; count too large: ths[idx - 1] >= a
        up = padded[idx + 1] < a
        down = padded[idx] >= a
        if not (up.any() or down.any()):
            return idx
        idx += up
        idx -= down


def _seed_one(amap: np.ndarray, mask: np.ndarray, index: int, num_th: int, fpr_limit: float) -> float:
    """Seed ``compute_pro`` on one image: amap (H, W) float, mask (H, W) bool."""
    a = amap.astype(np.float64).reshape(-1)  # the seed's maps were float64
    lab, n_regions = ndimage.label(mask, structure=_STRUCT_2D)
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(hi - lo)):
        raise AuproSeedUndefinedError(
            f"aupro_seed is undefined for image {index}: its map spans [{float(lo)}, {float(hi)}], so the seed's "
            "threshold grid np.arange(min, max, (max - min) / n) cannot be built; make the map finite"
        )
    if not hi > lo:
        raise AuproSeedUndefinedError(
            f"aupro_seed is undefined for image {index}: its map is constant ({lo!r}), so "
            "the seed's threshold grid np.arange(min, max, (max - min) / n) is empty"
        )
    step = (hi - lo) / num_th
    ths = np.arange(lo, hi, step)
    n_th = ths.size
    # Pixel p is positive at threshold j (map > ths[j]) exactly when j < below[p], where
    # below[p] = #{j: ths[j] < a[p]} (= np.searchsorted(ths, a, "left")): guessed from the even
    # spacing, then corrected against the actual thresholds, so rounding cannot move it.
    below = _count_below(ths, a, lo, step)
    cells = lab.reshape(-1).astype(np.int64) * (n_th + 1) + below
    hist = np.bincount(cells, minlength=(n_regions + 1) * (n_th + 1))
    hist = hist.reshape(n_regions + 1, n_th + 1)
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (R+1, T): count > ths[j]
    area = hist.sum(axis=1)
    if area[0] == 0:
        raise AuproSeedUndefinedError(f"aupro_seed is undefined for image {index}: it has no normal pixel")
    pro = (above[1:] / area[1:, None]).mean(axis=0)
    fpr = above[0] / area[0]
    keep = fpr < fpr_limit
    f, p = fpr[keep], pro[keep]
    if f.size < 2:
        raise AuproSeedUndefinedError(
            f"aupro_seed is undefined for image {index}: only {f.size} of its {n_th} "
            f"thresholds give FPR < {fpr_limit} (the seed's sklearn.metrics.auc needs 2)"
        )
    f_max = f.max()
    if f_max == 0:
        raise AuproSeedUndefinedError(
            f"aupro_seed is undefined for image {index}: every threshold with FPR < "
            f"{fpr_limit} has FPR 0, so the seed's fpr / fpr.max() is 0/0 (it returned NaN)"
        )
    f = f / f_max
    # sklearn.metrics.auc on decreasing x: -trapz(p, f).
    return float(np.sum((f[:-1] - f[1:]) * (p[1:] + p[:-1]) / 2.0))


def aupro_seed(maps: Any, masks: Any, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    """AUPRO as the RD4AD / SK-RD4AD research code computes it (their published numbers).

    Args: maps float (N,H,W), masks (N,H,W). For each image whose mask has an anomalous
    pixel: thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` of that map,
    positives ``map > th``, PRO = mean over its 8-connected regions of the covered
    fraction, FPR over its normal pixels; points with FPR < fpr_limit are kept, FPR is
    divided by its largest kept value, and the trapezoid area is taken. Returns the mean
    over those images. Not the MVTec AD definition; see ``docs/metrics.md``.
    Raises AuproSeedUndefinedError (a ValueError naming the image) where the seed would
    crash or give NaN (e.g. a constant map, or one holding +-inf).
    """
    if not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 1:
        raise ValueError(f"num_thresholds must be a positive int, got {num_thresholds!r}")
    lim = _check_fpr_limit(fpr_limit)
    m, g = _pixel_inputs(maps, masks)
    return _aupro_seed_np(m, g, int(num_thresholds), lim)


def _aupro_seed_np(m: np.ndarray, g: np.ndarray, num_th: int, lim: float) -> float:
    anomalous = np.flatnonzero(g.reshape(g.shape[0], -1).any(axis=1))
    if anomalous.size == 0:
        raise ValueError("aupro_seed is undefined: no image has an anomalous pixel in its mask")
    vals = [_seed_one(m[i], g[i], int(i), num_th, lim) for i in anomalous]
    return float(np.mean(vals))


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
