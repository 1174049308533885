"""Benchmark exact AUPRO against a plain NumPy version and the seed's threshold loop.

On one set of seeded synthetic maps (blob masks on about half the images, maps = smooth
noise plus a blurred copy of the mask) it times, in one run:

1. ``skrd4ad.metrics.aupro`` (ours, exact);
2. the same exact algorithm written plainly in NumPy here (argsort, cumsum);
3. the seed's ``compute_pro`` loop (200 thresholds x images x ``regionprops`` regions),
   called once per anomalous image as the RD4AD evaluation does; and ours
   ``aupro_seed`` computing the same number.

Checks (1) == (2) and ours ``aupro_seed`` == (3) to 1e-9, then times ``compute_metrics``
on a larger set (default 1000 maps of 256x256) and reports its peak RSS increase.
Writes JSON to ``--out`` (default ``benchmarks/out/bench_aupro.json``).

    .venv/bin/python benchmarks/bench_aupro.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_aupro.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skrd4ad import metrics  # noqa: E402
from skrd4ad.io import write_json_atomic  # noqa: E402

# ----------------------------------------------------------------------- data


def make_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded maps float32 (n, size, size) and masks bool (n, size, size).

    About half the images get 1-3 elliptic blobs; maps are blurred noise plus a blurred
    copy of the mask (so maps correlate with masks but stay imperfect).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    maps = np.empty((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if rng.random() < 0.5:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0.1, 0.9, 2) * size
                ry, rx = rng.uniform(0.02, 0.12, 2) * size
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 4)
        blob = ndimage.gaussian_filter(masks[i].astype(np.float32), 4)
        maps[i] = 0.15 * noise / noise.std() + blob * rng.uniform(0.3, 1.0)
    return maps, masks


# ------------------------------------------------------------ references


def numpy_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Exact MVTec AUPRO written plainly: argsort all pixels, cumulative sums, trapezoid."""
    labels = np.zeros(maps.shape, dtype=np.int64)
    n_regions = 0
    for i in range(maps.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        labels[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += k
    flat_labels = labels.ravel()
    sizes = np.bincount(flat_labels)
    weights = np.zeros(flat_labels.size)
    pos = flat_labels > 0
    weights[pos] = 1.0 / (sizes[flat_labels[pos]] * n_regions)
    order = np.argsort(maps.ravel())[::-1]
    scores = maps.ravel()[order]
    normal = ~masks.ravel()[order]
    fpr = np.cumsum(normal) / normal.sum()
    pro = np.cumsum(weights[order])
    keep = np.append(scores[1:] != scores[:-1], True)
    fpr = np.concatenate([[0.0], fpr[keep]])
    pro = np.concatenate([[0.0], np.minimum(pro[keep], 1.0)])
    j = int(np.searchsorted(fpr, fpr_limit, side="right"))
    area = float(np.trapezoid(pro[:j], fpr[:j]))
    if j < fpr.size:
        y_lim = pro[j - 1] + (pro[j] - pro[j - 1]) * (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        area += 0.5 * (pro[j - 1] + y_lim) * (fpr_limit - fpr[j - 1])
    return area / fpr_limit


def seed_compute_pro(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200) -> float:
    """The seed's per-call loop: thresholds x images x regionprops regions (stack (n,H,W))."""
    binary = np.zeros_like(amaps, dtype=bool)
    lo, hi = amaps.min(), amaps.max()
    fprs, pros = [], []
    for th in np.arange(lo, hi, (hi - lo) / num_th):
        binary[amaps <= th] = False
        binary[amaps > th] = True
        per_region = []
        for b, mask in zip(binary, masks):
            for region in measure.regionprops(measure.label(mask)):
                tp = b[region.coords[:, 0], region.coords[:, 1]].sum()
                per_region.append(tp / region.area)
        inverse = 1 - masks
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(statistics.mean(per_region))
    fpr, pro = np.array(fprs), np.array(pros)
    keep = fpr < 0.3
    f = fpr[keep] / fpr[keep].max()
    p = pro[keep]
    return float(-np.trapezoid(p, f))  # sklearn.metrics.auc on decreasing x


def seed_aupro(maps: np.ndarray, masks: np.ndarray) -> float:
    """RD4AD evaluation: seed_compute_pro once per anomalous image (float64 maps), then mean."""
    vals = [
        seed_compute_pro(masks[i : i + 1].astype(int), maps[i : i + 1].astype(np.float64))
        for i in range(maps.shape[0])
        if masks[i].any()
    ]
    return float(np.mean(vals))


# -------------------------------------------------------------- measuring


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        m = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    return int(m.group(1)) if m else -1


@contextmanager
def peak_rss() -> Iterator[dict[str, Any]]:
    """Measure the peak resident memory increase (MiB) of the block.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) when allowed, else
    samples VmRSS every millisecond in a thread.
    """
    gc.collect()
    out: dict[str, Any] = {}
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "VmRSS sampled every 1 ms"
    samples = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_status_kib("VmRSS"))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    if method.startswith("VmRSS"):
        sampler.start()
    try:
        yield out
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        peak = _status_kib("VmHWM") if method.startswith("VmHWM") else max(samples)
        out.update(method=method, rss_before_mib=before / 1024, peak_delta_mib=(peak - before) / 1024)


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(value, best wall-clock seconds over ``repeats`` calls)."""
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return value, best


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/out/bench_aupro.json", help="JSON output path")
    ap.add_argument("--images", type=int, default=150, help="images for the AUPRO comparison")
    ap.add_argument("--size", type=int, default=256, help="map height = width")
    ap.add_argument("--big-images", type=int, default=1000, help="images for compute_metrics")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for the fast methods")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.size, args.big_images, args.repeats = 16, 96, 64, 1

    maps, masks = make_data(args.images, args.size, args.seed)
    res: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.processor() or platform.machine(),
        },
        "data": {
            "pixels": int(maps.size),
            "anomalous_images": int(masks.reshape(args.images, -1).any(axis=1).sum()),
            "anomalous_pixel_fraction": float(masks.mean()),
        },
    }

    with peak_rss() as mem_ours:
        ours, t_ours = timed(lambda: metrics.aupro(maps, masks), args.repeats)
    with peak_rss() as mem_np:
        ref, t_np = timed(lambda: numpy_aupro(maps, masks), args.repeats)
    ours_seed, t_ours_seed = timed(lambda: metrics.aupro_seed(maps, masks), args.repeats)
    seed, t_seed = timed(lambda: seed_aupro(maps, masks), 1)

    res["aupro"] = {
        "ours": ours, "numpy": ref, "abs_diff": abs(ours - ref), "equal_1e-9": bool(abs(ours - ref) <= 1e-9),
    }
    res["aupro_seed"] = {
        "ours": ours_seed, "seed_loop": seed, "abs_diff": abs(ours_seed - seed),
        "equal_1e-9": bool(abs(ours_seed - seed) <= 1e-9),
    }
    res["seconds"] = {
        "ours_aupro": t_ours, "numpy_aupro": t_np, "ours_aupro_seed": t_ours_seed, "seed_loop": t_seed,
    }
    res["ratios"] = {
        "seed_over_ours": t_seed / t_ours,
        "seed_over_ours_aupro_seed": t_seed / t_ours_seed,
        "numpy_over_ours": t_np / t_ours,
    }
    res["peak_rss_delta_mib"] = {
        "ours_aupro": mem_ours["peak_delta_mib"], "numpy_aupro": mem_np["peak_delta_mib"],
    }
    del maps, masks
    gc.collect()

    big_maps, big_masks = make_data(args.big_images, args.size, args.seed + 1)
    big_labels = big_masks.reshape(args.big_images, -1).any(axis=1).astype(int)
    big_scores = big_maps.reshape(args.big_images, -1).max(axis=1)
    with peak_rss() as mem_big:
        t0 = time.perf_counter()
        out = metrics.compute_metrics(big_scores, big_labels, None, big_maps, big_masks)
        t_big = time.perf_counter() - t0
    res["compute_metrics"] = {
        "images": args.big_images,
        "pixels": int(big_maps.size),
        "input_mib": (big_maps.nbytes + big_masks.nbytes) / 2**20,
        "seconds": t_big,
        "peak_rss_delta_mib": mem_big["peak_delta_mib"],
        "rss_method": mem_big["method"],
        "scalars": out.scalars,
    }
    res["goals"] = {
        "seed_over_ours>=50": bool(res["ratios"]["seed_over_ours"] >= 50),
        "numpy_over_ours>=1": bool(res["ratios"]["numpy_over_ours"] >= 1),
        "compute_metrics_peak_rss<2GiB": bool(mem_big["peak_delta_mib"] < 2048),
        "aupro_equal_numpy": res["aupro"]["equal_1e-9"],
        "aupro_seed_equal_loop": res["aupro_seed"]["equal_1e-9"],
    }
    write_json_atomic(args.out, res)
    return res


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
