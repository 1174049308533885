"""Benchmark: the training step with Adam's three implementations (for-loop, foreach, fused).

PyTorch's Adam defaults to a Python loop over parameters on CPU (``foreach`` only on CUDA); the
RD student has hundreds of tensors, so the loop's per-tensor overhead shows in the profile.  Here
the same seeded model and uint8 batch (float32, teacher BatchNorm folded, the layout
``train.memory_format: auto`` picks) step with each implementation, interleaved round by round
after a warm-up (see ``_common``).  The JSON holds each side's median step time, the median
per-round ratios loop / foreach and loop / fused (> 1: the other is faster) with min and max,
and whether each side's weights after the timed steps equal the loop's bit for bit
(:func:`skrd4ad.train.make_optimizer` picks fused from this measurement).

    python benchmarks/bench_optimizer.py            # about 4 minutes on 2 cores
    python benchmarks/bench_optimizer.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _common import fmt_ratio, interleaved, machine, ratio_summary, side_summary, write_result
from skrd4ad.config import TrainConfig
from skrd4ad.device import memory_format_for
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.build import build_model
from skrd4ad.train import train_step

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _stepper(arch: str, variant: str, options: dict, batch: torch.Tensor):
    torch.manual_seed(0)
    model = build_model(arch, variant, teacher_weights=None)
    fold_batchnorm(model.teacher)
    fmt = memory_format_for("auto", torch.device("cpu"), arch, "none")
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.student_parameters(), lr=0.005, betas=(0.5, 0.999), **options)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    config = TrainConfig(arch=arch, variant=variant, teacher_weights=None, device="cpu")

    def step():
        train_step(model, optimizer, scaler, batch, config, fmt)
        return model

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_optimizer.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round (smoke run)")
    args = parser.parse_args(argv)
    cases = ([("mobilenet_v2", "rd4ad", 64, 2, 1)] if args.quick else
             [("mobilenet_v2", "rd4ad", 128, 8, 8), ("mobilenet_v2", "skrd4ad", 128, 8, 8),
              ("resnet18", "skrd4ad", 128, 8, 8), ("wide_resnet50_2", "skrd4ad", 128, 8, 4)])
    res: dict = {"what": "train_step, float32, CPU, random teacher (folded), same batch, Adam "
                         "implementations; ratios are loop / other (> 1: other faster)",
                 "machine": machine(), "threads": torch.get_num_threads(), "cases": {}}
    for arch, variant, size, batch_size, rounds in cases:
        batch = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(1))
        sides = {name: _stepper(arch, variant, options, batch) for name, options in IMPLEMENTATIONS.items()}
        times, models = interleaved(sides, rounds)
        loop_state = models["loop"].state_dict()
        case = {name: side_summary(t) for name, t in times.items()}
        for name in ("foreach", "fused"):
            case[f"loop_over_{name}"] = ratio_summary(times["loop"], times[name])
            state = models[name].state_dict()
            case[f"{name}_weights_equal_loop"] = all(torch.equal(v, state[k]) for k, v in loop_state.items())
        key = f"{arch}-{variant}@{size}px_b{batch_size}"
        res["cases"][key] = case
        print(f"{key}: loop/foreach {fmt_ratio(case['loop_over_foreach'])} "
              f"(equal: {case['foreach_weights_equal_loop']}), loop/fused {fmt_ratio(case['loop_over_fused'])} "
              f"(equal: {case['fused_weights_equal_loop']})", flush=True)
    return write_result(args.out, res, "wrote")


if __name__ == "__main__":
    main()
