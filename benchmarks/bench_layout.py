"""Benchmark: the training step in channels_last vs contiguous memory layout, per teacher.

What ``train.memory_format: auto`` picks on a CPU is decided from this measurement (see
:func:`skrd4ad.device.memory_format_for`): the same seeded model, optimiser and uint8 batch in
both layouts (float32, teacher BatchNorm folded as :func:`skrd4ad.train.train` does), steps
interleaved round by round after a warm-up (see ``_common``); the JSON holds each side's median
step time and the median per-round ratio contiguous / channels_last (> 1: channels_last faster)
with min and max.

    python benchmarks/bench_layout.py            # about 3 minutes on 2 cores
    python benchmarks/bench_layout.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _common import fmt_ratio, interleaved, machine, ratio_summary, side_summary, write_result
from skrd4ad.config import TrainConfig
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.build import build_model
from skrd4ad.train import make_optimizer, train_step

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _stepper(arch: str, fmt: torch.memory_format, batch: torch.Tensor, amp: str):
    torch.manual_seed(0)
    model = build_model(arch, "skrd4ad", teacher_weights=None)
    fold_batchnorm(model.teacher)
    model = model.to(memory_format=fmt)
    config = TrainConfig(arch=arch, teacher_weights=None, device="cpu", amp=amp)
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return lambda: train_step(model, optimizer, scaler, batch, config, fmt)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_layout.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round (smoke run)")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast of both sides (default none)")
    parser.add_argument("--arch", action="append", help="only these teachers (repeatable; default all)")
    args = parser.parse_args(argv)
    cases = ([("mobilenet_v2", 64, 2, 1), ("resnet18", 64, 2, 1)] if args.quick else
             [("mobilenet_v2", 192, 16, 8), ("resnet18", 192, 16, 8), ("wide_resnet50_2", 128, 8, 4)])
    cases = [c for c in cases if not args.arch or c[0] in args.arch]
    res: dict = {"amp": args.amp, "what": "train_step, float32 weights, CPU, autocast as 'amp', random teacher (folded), same batch: contiguous / channels_last",
                 "machine": machine(), "threads": torch.get_num_threads(), "cases": {}}
    for arch, size, batch_size, rounds in cases:
        batch = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(1))
        times, _ = interleaved({name: _stepper(arch, fmt, batch, args.amp) for name, fmt in LAYOUTS.items()}, rounds)
        ratio = ratio_summary(times["contiguous"], times["channels_last"])
        res["cases"][f"{arch}@{size}px_b{batch_size}"] = {
            "channels_last": side_summary(times["channels_last"]), "contiguous": side_summary(times["contiguous"]),
            "contiguous_over_channels_last": ratio}
        print(f"{arch} {size} px batch {batch_size}: contiguous / channels_last {fmt_ratio(ratio)}", flush=True)
    write_result(args.out, res)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
