"""Benchmark AUPRO, like with like: exact vs exact, seed formula vs seed formula.

On one set of seeded synthetic maps (blob masks on about half the images, maps = smooth
noise plus a blurred copy of the mask) it times, interleaved round by round (see ``_common``):

* exact MVTec AUPRO: ``skrd4ad.metrics.aupro`` (ours) vs the same exact algorithm written
  plainly in NumPy here (argsort, cumsum); both get the same float32 maps;
* the seed's AUPRO formula: ``skrd4ad.metrics.aupro_seed`` (ours) vs the seed's own loop
  (``skrd4ad.seed_reference.aupro_seed_loop``: ``compute_pro``, 200 thresholds x
  ``regionprops`` regions, once per anomalous image, as the RD4AD evaluation does); both get
  the same float64 maps (the seed's maps were float64).

Reports each side's median seconds and, per pair, the median per-round ratio with min and max;
checks both pairs agree to 1e-9. Then measures, untimed, the peak RSS increase of one call of
each exact method, and times one ``compute_metrics`` call on a larger set (default 1000 maps of
256x256) with its peak RSS increase. Writes JSON to ``--out`` (default
``benchmarks/out/bench_aupro.json``).

    .venv/bin/python benchmarks/bench_aupro.py            # full run (about a minute)
    .venv/bin/python benchmarks/bench_aupro.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import gc
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy import ndimage

from _common import fmt_ratio, interleaved, machine, ratio_summary, side_summary, write_result

from skrd4ad import metrics
from skrd4ad.seed_reference import aupro_seed_loop

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


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/out/bench_aupro.json", help="JSON output path")
    ap.add_argument("--images", type=int, default=150, help="images for the AUPRO comparisons")
    ap.add_argument("--size", type=int, default=256, help="map height = width")
    ap.add_argument("--big-images", type=int, default=1000, help="images for compute_metrics")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (after 1 warm-up round)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.size, args.big_images, args.rounds = 16, 96, 64, 3

    maps, masks = make_data(args.images, args.size, args.seed)
    maps64 = maps.astype(np.float64)  # the seed pair's input (the seed's maps were float64)
    res: dict[str, Any] = {
        "benchmark": "bench_aupro",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**machine(), "numpy": np.__version__},
        "data": {
            "pixels": int(maps.size),
            "anomalous_images": int(masks.reshape(args.images, -1).any(axis=1).sum()),
            "anomalous_pixel_fraction": float(masks.mean()),
        },
        "what": {
            "exact": "metrics.aupro vs plain NumPy, same exact algorithm, both on the float32 maps",
            "seed": "metrics.aupro_seed vs the seed's compute_pro loop once per anomalous image, both on float64 maps",
        },
    }

    sides = {
        "ours_aupro": lambda: metrics.aupro(maps, masks),
        "numpy_aupro": lambda: numpy_aupro(maps, masks),
        "ours_aupro_seed": lambda: metrics.aupro_seed(maps64, masks),
        "seed_loop": lambda: aupro_seed_loop(maps64, masks),
    }
    times, values = interleaved(sides, args.rounds)
    res["seconds"] = {name: side_summary(t) for name, t in times.items()}
    res["ratios"] = {
        "numpy_over_ours_aupro": ratio_summary(times["numpy_aupro"], times["ours_aupro"]),
        "seed_loop_over_ours_aupro_seed": ratio_summary(times["seed_loop"], times["ours_aupro_seed"]),
    }
    res["values"] = values
    res["checks"] = {
        "aupro_equal_numpy_1e-9": bool(abs(values["ours_aupro"] - values["numpy_aupro"]) <= 1e-9),
        "aupro_seed_equal_seed_loop_1e-9": bool(abs(values["ours_aupro_seed"] - values["seed_loop"]) <= 1e-9),
        "abs_diff_exact": abs(values["ours_aupro"] - values["numpy_aupro"]),
        "abs_diff_seed": abs(values["ours_aupro_seed"] - values["seed_loop"]),
    }

    with peak_rss() as mem_ours:  # untimed, one call each
        metrics.aupro(maps, masks)
    with peak_rss() as mem_np:
        numpy_aupro(maps, masks)
    res["peak_rss_delta_mib_one_call"] = {
        "ours_aupro": mem_ours["peak_delta_mib"], "numpy_aupro": mem_np["peak_delta_mib"], "method": mem_ours["method"],
    }
    del maps, maps64, masks
    gc.collect()

    big_maps, big_masks = make_data(args.big_images, args.size, args.seed + 1)
    big_labels = big_masks.reshape(args.big_images, -1).any(axis=1).astype(int)
    big_scores = big_maps.reshape(args.big_images, -1).max(axis=1)
    with peak_rss() as mem_big:
        t0 = time.perf_counter()
        out = metrics.compute_metrics(big_scores, big_labels, None, big_maps, big_masks)
        t_big = time.perf_counter() - t0
    res["compute_metrics_one_call"] = {
        "images": args.big_images,
        "pixels": int(big_maps.size),
        "input_mib": (big_maps.nbytes + big_masks.nbytes) / 2**20,
        "seconds": t_big,
        "peak_rss_delta_mib": mem_big["peak_delta_mib"],
        "rss_method": mem_big["method"],
        "scalars": out.scalars,
    }
    res["goals"] = {
        "seed_loop_over_ours_aupro_seed_median>=50": bool(res["ratios"]["seed_loop_over_ours_aupro_seed"]["median"] >= 50),
        "numpy_over_ours_aupro_median>=1": bool(res["ratios"]["numpy_over_ours_aupro"]["median"] >= 1),
        "compute_metrics_peak_rss<2GiB": bool(mem_big["peak_delta_mib"] < 2048),
        "aupro_equal_numpy": res["checks"]["aupro_equal_numpy_1e-9"],
        "aupro_seed_equal_seed_loop": res["checks"]["aupro_seed_equal_seed_loop_1e-9"],
    }
    return write_result(args.out, res, f"numpy / ours aupro {fmt_ratio(res['ratios']['numpy_over_ours_aupro'])}; "
                        f"seed loop / ours aupro_seed {fmt_ratio(res['ratios']['seed_loop_over_ours_aupro_seed'])}")


if __name__ == "__main__":
    main()
