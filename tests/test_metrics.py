"""Tests for skrd4ad.metrics: brute force, hand-computed answers and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from scipy import ndimage

from skrd4ad import metrics as M
from skrd4ad.seed_reference import aupro_seed_loop

# --------------------------------------------------------------------- references


def brute_pro_points(maps: np.ndarray, masks: np.ndarray) -> tuple[list[float], list[float]]:
    """(fpr, pro) at every distinct threshold, counted directly; starts at (0, 0)."""
    masks = masks != 0
    regions = []
    for i in range(maps.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, k + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in sorted(np.unique(maps), reverse=True):
        pos = maps >= t
        xs.append((pos & normal).sum() / normal.sum())
        ys.append(float(np.mean([pos[i][reg].sum() / reg.sum() for i, reg in regions])))
    return xs, ys


def brute_area(xs: list[float], ys: list[float], lim: float) -> float:
    """Trapezoid area up to x = lim (interpolated there), divided by lim."""
    area = 0.0
    for k in range(1, len(xs)):
        x0, y0, x1, y1 = xs[k - 1], ys[k - 1], xs[k], ys[k]
        if x1 <= lim:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (lim - x0) / (x1 - x0)
            area += (lim - x0) * (y0 + y_lim) / 2
            break
    return area / lim


def sk_f1_max(y: np.ndarray, s: np.ndarray) -> float:
    p, r, _ = skm.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nan_to_num(2 * p * r / (p + r)).max())


def random_case(
    rng: np.random.Generator, n: int, h: int, w: int, levels: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Maps (quantised to `levels` values when given, to force ties) and blobby masks."""
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        if rng.random() < 0.6:
            k = rng.integers(1, 4)
            for _ in range(k):
                r0, c0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
                masks[i, r0 : r0 + rng.integers(1, 3), c0 : c0 + rng.integers(1, 3)] = 255
    maps = rng.random((n, h, w)) + 0.7 * (masks > 0)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps, masks


# ------------------------------------------------------------- hand-computed case


# 1 image, 2x3. Regions (8-connected): A = {(0,0)}, B = {(0,2)} (not adjacent).
# Normal pixels: (0,1)=0.6, (1,0)=0.6, (1,1)=0.2, (1,2)=0.1; region B ties with two of them.
HAND_MAP = np.array([[[0.9, 0.6, 0.6], [0.6, 0.2, 0.1]]])
HAND_MASK = np.array([[[1, 0, 1], [0, 0, 0]]], dtype=np.uint8)


def test_hand_case_pro_curve() -> None:
    fpr, pro = M.pro_curve(HAND_MAP, HAND_MASK)
    # th=0.9: A covered -> (0, 1/2); th=0.6: B and 2 of 4 normals -> (2/4, 1);
    # th=0.2 -> (3/4, 1); th=0.1 -> (1, 1).
    np.testing.assert_allclose(fpr, [0, 0, 2 / 4, 3 / 4, 1])
    np.testing.assert_allclose(pro, [0, 1 / 2, 1, 1, 1])


def test_hand_case_aupro_and_auroc() -> None:
    # Segment (0, 1/2) -> (1/2, 1) at fpr 0.3: pro = 1/2 + (1/2) * (0.3 / 0.5) = 0.8.
    expected = 0.3 * (0.5 + 0.8) / 2 / 0.3
    assert M.aupro(HAND_MAP, HAND_MASK) == pytest.approx(expected, abs=1e-12)
    full = (0.5 * (0.5 + 1) / 2 + 0.25 * 1 + 0.25 * 1) / 1.0
    assert M.aupro(HAND_MAP, HAND_MASK, fpr_limit=1.0) == pytest.approx(full, abs=1e-12)
    # AUROC: 0.9 beats 4 normals; 0.6 beats 2, ties 2 (half credit) -> (4 + 2 + 1) / 8.
    assert M.pixel_auroc(HAND_MAP, HAND_MASK) == pytest.approx(7 / 8, abs=1e-12)
    # F1 at th=0.9: 2*1/(1+0+2) = 2/3; at th=0.6: 2*2/(2+2+2) = 2/3; lower: smaller.
    assert M.pixel_f1_max(HAND_MAP, HAND_MASK) == pytest.approx(2 / 3, abs=1e-12)


# ---------------------------------------------------------------- exact AUPRO


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 4])
def test_aupro_matches_brute_force(seed: int, levels: int | None) -> None:
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, n=4, h=7, w=6, levels=levels)
    masks[0] = 0  # a good image: normal pixels only
    masks[1, 0, 0] = 1  # at least one region
    xs, ys = brute_pro_points(maps, masks)
    for lim in (0.3, 0.05, 1.0):
        assert M.aupro(maps, masks, fpr_limit=lim) == pytest.approx(brute_area(xs, ys, lim), abs=1e-9)
    fpr, pro = M.pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, xs, atol=1e-12)
    np.testing.assert_allclose(pro, ys, atol=1e-12)


def test_aupro_constant_maps() -> None:
    maps = np.full((3, 4, 5), 0.25, dtype=np.float32)
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[1, 1:3, 1:3] = True
    # One threshold: everything positive -> (0, 0) to (1, 1); area to 0.3 is 0.3^2 / 2.
    assert M.aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)
    xs, ys = brute_pro_points(maps, masks)
    assert M.aupro(maps, masks) == pytest.approx(brute_area(xs, ys, 0.3), abs=1e-12)


def test_regions_are_8_connected_per_image() -> None:
    # Diagonal neighbours form one region; the same pixels in two images are two regions.
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    maps = np.array([[[0.9, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.0]]])
    fpr, pro = M.pro_curve(maps, mask[None])
    assert pro[1] == pytest.approx(0.5)  # one region of 2 pixels, half covered at 0.9
    two = M.pro_curve(np.concatenate([maps, maps * 0.5]), np.stack([mask, mask]))[1]
    xs, ys = brute_pro_points(np.concatenate([maps, maps * 0.5]), np.stack([mask, mask]))
    np.testing.assert_allclose(two, ys, atol=1e-12)


def test_aupro_chunked_scan_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny chunks put tie groups across chunk borders and chunks with no group end.
    rng = np.random.default_rng(11)
    maps, masks = random_case(rng, n=5, h=6, w=6, levels=3)
    masks[2, 2, 2] = 1
    expected = M.aupro(maps, masks), M.pixel_auroc(maps, masks), M.pro_curve(maps, masks)
    for chunk in (1, 3, 17):
        monkeypatch.setattr("skrd4ad.metrics.ranking._CHUNK", chunk)
        assert M.aupro(maps, masks) == pytest.approx(expected[0], abs=1e-12)
        assert M.pixel_auroc(maps, masks) == pytest.approx(expected[1], abs=1e-12)
        got = M.pro_curve(maps, masks)
        np.testing.assert_allclose(got[0], expected[2][0], atol=1e-12)
        np.testing.assert_allclose(got[1], expected[2][1], atol=1e-12)


def test_float64_paths_agree() -> None:
    # float64 that float32 cannot hold takes the argsort path; values that only differ
    # beyond float32 precision must stay distinct thresholds.
    rng = np.random.default_rng(3)
    maps, masks = random_case(rng, n=3, h=5, w=5, levels=None)
    maps[0, 0, 0], maps[0, 0, 1] = 0.5, 0.5 + 1e-12
    masks[0, 0, 0] = 1
    xs, ys = brute_pro_points(maps, masks)
    assert M.aupro(maps, masks) == pytest.approx(brute_area(xs, ys, 0.3), abs=1e-9)
    assert len(M.pro_curve(maps, masks)[0]) == len(xs)
    exact32 = maps.astype(np.float32)
    assert M.aupro(exact32.astype(np.float64), masks) == M.aupro(exact32, masks)


def test_torch_inputs_match_numpy() -> None:
    rng = np.random.default_rng(5)
    maps, masks = random_case(rng, n=4, h=6, w=6, levels=5)
    masks[0, 0, 0] = 1
    t_maps, t_masks = torch.from_numpy(maps.astype(np.float32)), torch.from_numpy(masks > 0)
    assert M.aupro(t_maps, t_masks) == M.aupro(maps.astype(np.float32), masks)
    assert M.pixel_auroc(t_maps, t_masks) == M.pixel_auroc(maps.astype(np.float32), masks)
    assert M.aupro(t_maps.to(torch.bfloat16), t_masks) == pytest.approx(
        M.aupro(t_maps.to(torch.bfloat16).float().numpy(), masks), abs=0
    )


# ------------------------------------------------------------- AUROC / F1 / ROC


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_image_metrics_match_sklearn(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = (rng.integers(0, 6, n) + 2 * y).astype(dtype)  # many ties
    if dtype is np.float64:
        s = s + rng.random(n) * (rng.random(n) < 0.5)
    assert M.image_auroc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.f1_max(s, y) == pytest.approx(sk_f1_max(y, s), abs=1e-12)
    fpr, tpr = M.roc_curve(s, y)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)


def test_pixel_auroc_and_f1_match_sklearn() -> None:
    rng = np.random.default_rng(8)
    maps, masks = random_case(rng, n=6, h=9, w=7, levels=6)
    y, s = (masks != 0).ravel(), maps.ravel()
    assert M.pixel_auroc(maps, masks) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.pixel_f1_max(maps, masks) == pytest.approx(sk_f1_max(y, s), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixed_sign_scores_rank_correctly(dtype: type) -> None:
    # Negative, subnormal, huge and zero values exercise the order-preserving sort keys.
    rng = np.random.default_rng(12)
    special = np.array([-3e38, -1.5, -1e-42, -0.0, 0.0, 1e-42, 2.5, 3e38], dtype=dtype)
    s = np.concatenate([special, (rng.standard_normal(80) * 10).astype(dtype), special[::3]])
    y = rng.integers(0, 2, s.size)
    y[:2] = [0, 1]
    assert M.image_auroc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr = M.roc_curve(s, y)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)


def test_signed_zero_and_inf_ties() -> None:
    s = np.array([0.0, -0.0, np.inf, -np.inf, np.inf], dtype=np.float32)
    y = np.array([1, 0, 1, 0, 0])
    # Positive 0.0: ties -0.0 (1/2), beats -inf, loses to inf -> 3/2.
    # Positive inf: beats -0.0 and -inf, ties inf (1/2) -> 5/2. Total 4 of 2 * 3 pairs.
    assert M.image_auroc(s, y) == pytest.approx(4 / 6, abs=1e-12)
    assert len(M.roc_curve(s, y)[0]) == 1 + 3  # distinct values: inf, 0, -inf


def test_per_defect_auroc_matches_sklearn_subsets() -> None:
    rng = np.random.default_rng(2)
    types = np.array(["good"] * 10 + ["crack"] * 6 + ["hole"] * 5)
    y = (types != "good").astype(int)
    s = rng.random(types.size) + 0.3 * y
    got = M.per_defect_auroc(s, y, list(types))
    assert list(got) == ["crack", "hole"]
    for d in ("crack", "hole"):
        sel = (types == "good") | (types == d)
        assert got[d] == pytest.approx(skm.roc_auc_score(y[sel], s[sel]), abs=1e-12)


# --------------------------------------------------------------- seed's AUPRO


@pytest.mark.parametrize("seed", range(3))
def test_aupro_seed_matches_slow_loop(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    maps, masks = random_case(rng, n=4, h=12, w=10, levels=None)
    for i in range(4):
        masks[i] = 0
        masks[i, 2:5, 3:7] = 1
        masks[i, 8:10, 0:2] = 1 if i % 2 else 0
        maps[i] += 1.5 * ndimage.uniform_filter(masks[i].astype(float), 3)
    masks[3] = 0  # a good image is skipped
    want = aupro_seed_loop(maps, masks, num_th=200)
    assert M.aupro_seed(maps, masks) == pytest.approx(want, abs=1e-12)
    assert M.aupro_seed(maps.astype(np.float32), masks) == pytest.approx(
        aupro_seed_loop(maps.astype(np.float32), masks), abs=1e-12
    )
    assert M.aupro_seed(maps, masks, num_thresholds=37, fpr_limit=0.5) == pytest.approx(
        aupro_seed_loop(maps, masks, num_th=37, fpr_limit=0.5), abs=1e-12
    )


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_threshold_counts_equal_searchsorted(scale: float) -> None:
    """The seed metric's guessed-and-corrected bucketing equals np.searchsorted exactly,
    including values on, just above and just below every threshold, and quantised maps."""
    rng = np.random.default_rng(int(scale * 7) % 1000)
    for trial in range(40):
        a = rng.random(2000) * scale + rng.choice([-1e3, 0.0, 7.0])
        if trial % 2:
            a = np.round(a, 3)  # many ties
        lo, hi = a.min(), a.max()
        if not hi > lo:
            continue
        for num_th in (200, 37, 1):
            step = (hi - lo) / num_th
            ths = np.arange(lo, hi, step)
            probe = np.concatenate([a, ths, np.nextafter(ths, np.inf), np.nextafter(ths, -np.inf), [lo, hi]])
            np.testing.assert_array_equal(M._count_below(ths, probe, lo, step),
                                          np.searchsorted(ths, probe, side="left"))


def test_aupro_seed_differs_from_mvtec() -> None:
    rng = np.random.default_rng(9)
    maps, masks = random_case(rng, n=4, h=12, w=10, levels=None)
    masks[:, 4:8, 4:8] = 1
    assert abs(M.aupro_seed(maps, masks) - M.aupro(maps, masks)) > 1e-3


def test_aupro_seed_undefined_cases() -> None:
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 1, 1] = True
    with pytest.raises(ValueError, match="image 0.*constant"):
        M.aupro_seed(np.ones((1, 4, 4)), mask)
    # Hand case: kept points all have FPR 0 (the two 0.6 normals jump FPR from 0 to 0.5).
    with pytest.raises(ValueError, match="image 0.*0/0"):
        M.aupro_seed(HAND_MAP, HAND_MASK)
    with pytest.raises(ValueError, match="no image has an anomalous pixel"):
        M.aupro_seed(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="num_thresholds"):
        M.aupro_seed(HAND_MAP, HAND_MASK, num_thresholds=0)


# --------------------------------------------------------------- curves


def test_downsample_curve_properties() -> None:
    rng = np.random.default_rng(4)
    x = np.sort(rng.random(5000)) ** 3
    y = np.sort(rng.random(5000))
    for m in (2, 3, 10, 999):
        dx, dy = M.downsample_curve(x, y, max_points=m)
        assert 2 <= dx.size <= m
        assert (dx[0], dy[0], dx[-1], dy[-1]) == (x[0], y[0], x[-1], y[-1])
        assert np.all(np.diff(dx) >= 0)
        idx = np.searchsorted(x, dx)  # every kept point is an original point, in order
        np.testing.assert_array_equal(y[idx], dy)
        assert np.all(np.diff(idx) > 0)
    sx, sy = M.downsample_curve(x[:10], y[:10], max_points=10)
    np.testing.assert_array_equal(sx, x[:10])
    np.testing.assert_array_equal(sy, y[:10])
    # A vertical jump is kept with points along it (steep parts are not dropped).
    vx = np.concatenate([np.zeros(500), np.linspace(0, 1, 500)])
    vy = np.concatenate([np.linspace(0, 1, 500), np.ones(500)])
    _, ky = M.downsample_curve(vx, vy, max_points=21)
    assert np.sum(ky < 1) >= 8
    with pytest.raises(ValueError, match="monotone"):
        M.downsample_curve([0, 1, 0.5], [0, 1, 1])
    with pytest.raises(ValueError, match="max_points"):
        M.downsample_curve([0, 1], [0, 1], max_points=1)


# ---------------------------------------------------------- compute_metrics


def _dataset(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, n=10, h=16, w=16, levels=None)
    for i in range(5, 10):
        masks[i] = 0
        masks[i, 3 + i % 3 : 9, 4:10 + i % 4] = 1
        maps[i] += 1.2 * ndimage.uniform_filter(masks[i].astype(float), 5)
    masks[:5] = 0
    labels = (masks.reshape(10, -1).max(axis=1) > 0).astype(int)
    types = ["good"] * 5 + ["crack", "hole", "crack", "hole", "cut"]
    return maps.reshape(10, -1).max(axis=1), labels, types, maps.astype(np.float32), masks


def test_compute_metrics_matches_single_functions() -> None:
    scores, labels, types, maps, masks = _dataset()
    res = M.compute_metrics(scores, labels, types, maps, masks, max_curve_points=50)
    sc = res.scalars
    assert set(sc) == {
        "image_auroc", "image_f1_max", "image_auroc_crack", "image_auroc_hole",
        "image_auroc_cut", "pixel_auroc", "pixel_f1_max", "aupro", "aupro_seed", "image_f1_threshold", "pixel_f1_threshold",
    }
    assert sc["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert sc["image_f1_max"] == pytest.approx(sk_f1_max(labels, scores), abs=1e-12)
    assert sc["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert sc["pixel_f1_max"] == pytest.approx(sk_f1_max(masks.ravel(), maps.ravel()), abs=1e-12)
    assert sc["aupro"] == pytest.approx(M.aupro(maps, masks), abs=1e-12)
    assert sc["aupro_seed"] == pytest.approx(M.aupro_seed(maps, masks), abs=1e-12)
    assert all(isinstance(v, float) for v in sc.values())

    full = {"pixel_roc": M.roc_curve(maps.ravel(), masks.ravel()), "pro": M.pro_curve(maps, masks)}
    for name, cols in (("image_roc", ["fpr", "tpr"]), ("pixel_roc", ["fpr", "tpr"]), ("pro", ["fpr", "pro"])):
        df = res.curves[name]
        assert list(df.columns) == cols and 2 <= len(df) <= 50
        assert np.all(np.diff(df["fpr"]) >= 0)
        assert tuple(df.iloc[0]) == (0.0, 0.0) and tuple(df.iloc[-1]) == pytest.approx((1.0, 1.0))
    for name, (fx, fy) in full.items():
        df = res.curves[name]
        assert len(fx) > 50  # really downsampled
        pts = set(zip(fx.tolist(), fy.tolist()))
        assert all(p in pts for p in zip(df.iloc[:, 0].tolist(), df.iloc[:, 1].tolist()))


def test_compute_metrics_image_level_only() -> None:
    scores, labels, types, _, _ = _dataset()
    res = M.compute_metrics(scores, labels, types)
    assert not {"pixel_auroc", "pixel_f1_max", "aupro", "aupro_seed", "pixel_f1_threshold"} & set(res.scalars)
    assert set(res.curves) == {"image_roc"}
    assert set(M.compute_metrics(scores, labels, None).scalars) == {"image_auroc", "image_f1_max", "image_f1_threshold"}


def test_compute_metrics_omits_undefined_seed_metric() -> None:
    scores, labels, types, maps, masks = _dataset(2)
    maps[7] = 0.5  # anomalous image with a constant map: the seed's grid is empty
    with pytest.warns(RuntimeWarning, match="image 7"):
        res = M.compute_metrics(scores, labels, types, maps, masks)
    assert "aupro_seed" not in res.scalars
    assert len(res.notes) == 1 and "image 7" in res.notes[0] and "constant" in res.notes[0]
    assert res.scalars["aupro"] == pytest.approx(M.aupro(maps, masks), abs=1e-12)
    with pytest.raises(M.AuproSeedUndefinedError, match="image 7"):
        M.aupro_seed(maps, masks)
    assert M.compute_metrics(scores, labels, types, *_dataset(2)[3:]).notes == []


def test_compute_metrics_torch_equals_numpy() -> None:
    scores, labels, types, maps, masks = _dataset(1)
    a = M.compute_metrics(scores, labels, types, maps, masks).scalars
    b = M.compute_metrics(
        torch.from_numpy(scores), torch.from_numpy(labels), types,
        torch.from_numpy(maps), torch.from_numpy(masks),
    ).scalars
    assert a == b


# ----------------------------------------------------------------- errors


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no normal image"):
        M.image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="no anomalous image"):
        M.image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        M.image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="no anomalous pixel"):
        M.aupro(np.random.default_rng(0).random((2, 3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="no normal pixel"):
        M.aupro(np.random.default_rng(0).random((1, 3, 3)), np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(HAND_MAP, HAND_MASK, fpr_limit=0.0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.aupro(HAND_MAP[0], HAND_MASK[0])
    with pytest.raises(ValueError, match="does not match"):
        M.pixel_auroc(HAND_MAP, HAND_MASK[:, :1])
    with pytest.raises(ValueError, match="together"):
        M.compute_metrics([0.1, 0.9], [0, 1], None, maps=HAND_MAP)
    with pytest.raises(ValueError, match="no pixel ground truth|no anomalous pixel"):
        M.compute_metrics([0.1, 0.9], [0, 1], None, np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


def test_compute_metrics_omits_undefined_seed_aupro() -> None:
    # A constant map on an anomalous image: the seed's grid is empty (it would crash);
    # the exact metrics are still defined and reported, aupro_seed is absent with a note.
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    maps[0] = np.arange(16).reshape(4, 4)
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[1, 1:3, 1:3] = 1
    with pytest.warns(RuntimeWarning, match="aupro_seed omitted.*image 1.*constant"):
        res = M.compute_metrics([0.5, 0.0], [0, 1], ["good", "cut"], maps, masks)
    assert "aupro_seed" not in res.scalars and len(res.notes) == 1
    assert res.scalars["aupro"] == pytest.approx(M.aupro(maps, masks), abs=1e-12)
    assert res.scalars["pixel_auroc"] == pytest.approx(
        skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12
    )


@pytest.mark.filterwarnings("ignore:aupro_seed omitted")
@pytest.mark.parametrize("trial", range(40))
def test_f1_thresholds_match_sklearn_precision_recall_curve(trial: int) -> None:
    """The F1-max threshold is sklearn's threshold of the best F1 (the highest one on ties),
    for images and for pixels, negative and tied scores included."""
    rng = np.random.default_rng(trial)
    n = int(rng.integers(4, 30))
    scores = rng.integers(-5, 5, n).astype(np.float32) * np.float32(rng.choice([0.5, -0.25, 1e-3]))
    labels = rng.integers(0, 2, n)
    labels[:2] = [1, 0]

    def expected(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        p, r, t = skm.precision_recall_curve(y, s)
        f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)[:-1]
        return float(f.max()), float(t[np.isclose(f, f.max(), rtol=0, atol=1e-12)].max())

    res = M.compute_metrics(scores, labels, None)
    f1, threshold = expected(scores, labels)
    assert res.scalars["image_f1_max"] == pytest.approx(f1, abs=1e-12)
    assert res.scalars["image_f1_threshold"] == threshold
    maps = rng.integers(0, 6, (2, 6, 6)).astype(np.float32) * np.float32(0.1)
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[1, 1:4, 2:5] = True
    res = M.compute_metrics([0.0, 1.0], [0, 1], None, maps, masks)
    f1, threshold = expected(maps.reshape(-1), masks.reshape(-1).astype(int))
    assert res.scalars["pixel_f1_max"] == pytest.approx(f1, abs=1e-12)
    assert res.scalars["pixel_f1_threshold"] == threshold
