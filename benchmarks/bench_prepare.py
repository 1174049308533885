"""Benchmark: one training epoch read from the prepared cache vs decoding + resizing PNGs each time.

Generates one synthetic class at 1024x1024 (30 training images by default), prepares it at
256 px, then times, in the same run and after one warm-up epoch each (files in the page cache):

* cache: ``PreparedClass`` + ``iterate_batches`` + ``batch_from`` (memmap rows -> torch uint8)
* png:   the classic Dataset path, ``Image.open(p).convert("RGB").resize((256, 256), BILINEAR)``
  per image, stacked into a torch uint8 batch

Both paths yield identical batches (checked). Writes JSON with the median epoch times and their
ratio to ``--out`` (default ``benchmarks/out/bench_prepare.json``).

    .venv/bin/python benchmarks/bench_prepare.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.prepared import PreparedClass, batch_from, iterate_batches
from skrd4ad.data.synthetic import generate
from skrd4ad.io import write_json_atomic


def _epoch_cache(out_dir: Path, batch_size: int, seed: int) -> list[torch.Tensor]:
    data = PreparedClass(out_dir)
    gen = torch.Generator().manual_seed(seed)
    order = iterate_batches(len(data.train_images), batch_size, shuffle=True, generator=gen)
    return [batch_from(data.train_images, idx) for idx in order]


def _epoch_png(paths: list[Path], size: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for idx in iterate_batches(len(paths), batch_size, shuffle=True, generator=gen):
        images = []
        for i in idx:
            with Image.open(paths[i]) as img:
                images.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)))
        batches.append(torch.from_numpy(np.stack(images)))
    return batches


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: page cache, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_prepare.json"))
    parser.add_argument("--n-train", type=int, default=30)
    parser.add_argument("--source-size", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        root = generate(work / "data", ["brick"], seed=args.seed, image_size=args.source_size,
                        n_train=args.n_train, n_test_good=2, n_test_bad=5)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        out_dir = prepare_class(root, "brick", work / "prepared", image_size=args.image_size, progress=False)
        prepare_s = time.perf_counter() - start
        paths = sorted((root / "brick/train/good").glob("*.png"))

        cache_batches = _epoch_cache(out_dir, args.batch_size, args.seed)
        png_batches = _epoch_png(paths, args.image_size, args.batch_size, args.seed)
        identical = len(cache_batches) == len(png_batches) and all(
            torch.equal(a, b) for a, b in zip(cache_batches, png_batches)
        )
        cache_times = _time(lambda: _epoch_cache(out_dir, args.batch_size, args.seed), args.repeats)
        png_times = _time(lambda: _epoch_png(paths, args.image_size, args.batch_size, args.seed), args.repeats)

    cache_s, png_s = statistics.median(cache_times), statistics.median(png_times)
    result = {
        "benchmark": "bench_prepare",
        "what": "one epoch of training batches: prepared cache (memmap) vs PNG decode+resize",
        "n_train": args.n_train,
        "source_size": args.source_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "cache_epoch_s": cache_s,
        "png_epoch_s": png_s,
        "ratio_png_over_cache": png_s / cache_s,
        "cache_epoch_all_s": cache_times,
        "png_epoch_all_s": png_times,
        "batches_identical": identical,
        "generate_s": generate_s,
        "prepare_s": prepare_s,
        "prepare_break_even_epochs": prepare_s / max(png_s - cache_s, 1e-12),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    write_json_atomic(args.out, result)
    print(f"cache {cache_s * 1e3:.1f} ms/epoch, png {png_s * 1e3:.1f} ms/epoch, "
          f"ratio {result['ratio_png_over_cache']:.1f}x, identical={identical} -> {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
