"""Benchmark: one training epoch read from the prepared cache vs decoding + resizing PNGs each time.

Generates one synthetic class at 1024x1024 (30 training images by default), prepares it at
256 px, then times, interleaved epoch by epoch after one warm-up round (files in the page cache;
the order alternates between rounds; see ``_common``):

* cache: ``PreparedClass`` + ``iterate_batches`` + ``batch_from`` (memmap rows -> torch uint8)
* png:   the classic Dataset path, ``Image.open(p).convert("RGB").resize((256, 256), BILINEAR)``
  per image, stacked into a torch uint8 batch

Both paths yield identical batches (checked; same uint8 dtype, same shuffled order). Writes JSON
with each path's median epoch time and the median per-round ratio png / cache with min and max
to ``--out`` (default ``benchmarks/out/bench_prepare.json``).

    .venv/bin/python benchmarks/bench_prepare.py            # about 20 s on 2 cores
    .venv/bin/python benchmarks/bench_prepare.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from _common import fmt_ratio, interleaved, machine, ratio_summary, side_summary, write_result
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.prepared import PreparedClass, batch_from, iterate_batches
from skrd4ad.data.sources.synthetic.generate import generate


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_prepare.json"))
    parser.add_argument("--n-train", type=int, default=30)
    parser.add_argument("--source-size", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed epochs per path (after 1 warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.source_size, args.rounds = 8, 256, 3

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
        times, _ = interleaved({
            "cache": lambda: _epoch_cache(out_dir, args.batch_size, args.seed),
            "png": lambda: _epoch_png(paths, args.image_size, args.batch_size, args.seed),
        }, args.rounds)

    ratio = ratio_summary(times["png"], times["cache"])
    result = {
        "benchmark": "bench_prepare",
        "what": "one epoch of training batches: prepared cache (memmap) vs PNG decode+resize; both uint8, same order",
        "n_train": args.n_train,
        "source_size": args.source_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds": {"cache": side_summary(times["cache"]), "png": side_summary(times["png"])},
        "ratio_png_over_cache": ratio,
        "batches_identical": identical,
        "generate_s": generate_s,
        "prepare_s": prepare_s,
        "prepare_break_even_epochs": prepare_s / max(side_summary(times["png"])["median_s"]
                                                     - side_summary(times["cache"])["median_s"], 1e-12),
        "machine": {**machine(), "numpy": np.__version__, "pillow": PIL.__version__},
    }
    write_result(args.out, result)
    cache_ms, png_ms = (1e3 * result["seconds"][k]["median_s"] for k in ("cache", "png"))
    print(f"cache {cache_ms:.1f} ms/epoch, png {png_ms:.1f} ms/epoch (medians), png / cache {fmt_ratio(ratio)}, "
          f"identical={identical} -> {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
