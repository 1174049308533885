"""Cost of an RD++ training step over an RD4AD step, and of our simplex noise over ``opensimplex``.

``training``: on one small model (random ``--arch`` teacher, default mobilenet_v2, ``--size`` px,
default 128, batch 8, float32, CPU, ``--threads`` 2), per timed call two batches:

- ``rd4ad``: two :func:`skrd4ad.train.train_step` calls (teacher BatchNorm folded, fused Adam), as
  :func:`skrd4ad.train.train` trains RD4AD;
- ``rdpp``: two :func:`skrd4ad.train.train_step` calls of the registered ``rdpp`` variant:
  pseudo-anomalies, teacher on clean + noisy, projection, bottleneck, decoder, RD loss + 0.2 *
  projection loss, backward; one fused Adam over its two parameter groups (projection lr 1e-3,
  student 5e-3) steps once per two batches on the summed gradients.

``noise``: the pseudo-anomaly noise of one batch of 16 at 256 px (rectangle sides 10-31 px, 6
octaves): ``opensimplex`` (the package's ``OpenSimplex(seed).noise3array`` per image on the
image's rectangle, as the authors' loader does, but without their numba) vs
:func:`skrd4ad.models.variants.rdpp.simplex_noise.simplex_noise` on all 16 at once (each on a 31x31 box, so more
points than the rectangles need); skipped when ``opensimplex`` is not installed.

Interleaved rounds after one warm-up (see ``_common``); ratios per round as median [min, max]:
``rdpp_over_rd4ad`` (> 1: RD++ is slower) and ``opensimplex_over_ours`` (> 1: ours is faster).

    python benchmarks/bench_rdpp.py            # about 2 minutes on 2 cores
    python benchmarks/bench_rdpp.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from _common import fmt_ratio, interleaved, machine, ratio_summary, side_summary, write_result
from skrd4ad.config import TrainConfig
from skrd4ad.models.variants.rdpp.pseudo_anomaly import add_pseudo_anomalies, sample_boxes
from skrd4ad.models.variants.rdpp.simplex_noise import random_permutations, simplex_noise
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.build import build_model
from skrd4ad.train import make_optimizer, train_step


def bench_training(arch: str, size: int, batch: int, rounds: int) -> dict:
    """Two batches of each registered variant through :func:`skrd4ad.train.train_step`, as
    :func:`skrd4ad.train.train` runs them (BN-folded teacher, fused Adam over the variant's
    parameter groups, gradients cleared and the optimiser stepped every ``accumulate`` batches)."""
    device = torch.device("cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen) for _ in range(2)]
    sides, counts = {}, {}
    for name in ("rd4ad", "rdpp"):
        config = TrainConfig(arch=arch, variant=name, teacher_weights=None, device="cpu")
        torch.manual_seed(0)
        model = build_model(arch, name, teacher_weights=None).train()
        fold_batchnorm(model.teacher)  # as train() does
        optimizer = make_optimizer(model, config, device)
        every = model.plugin.accumulate
        counts[name] = sum(p.numel() for p in model.student.parameters())

        def two(model=model, optimizer=optimizer, every=every, config=config) -> None:
            for i, b in enumerate(data):
                train_step(model, optimizer, scaler, b, config, zero_grad=i % every == 0,
                           step=(i + 1) % every == 0)
        sides[name] = two
    times, _ = interleaved(sides, rounds)
    return {"arch": arch, "image_size": size, "batch_size": batch, "batches_per_call": 2, "rounds": rounds,
            "seconds_per_two_batches": {k: side_summary(v) for k, v in times.items()},
            "trained_parameters": counts,
            "rdpp_over_rd4ad": ratio_summary(times["rdpp"], times["rd4ad"])}


def bench_noise(batch: int, size: int, rounds: int) -> dict | None:
    try:
        import opensimplex
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(0)
    boxes = sample_boxes(batch, size, size, gen).tolist()
    perm = random_permutations(batch, gen)
    seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (batch,), generator=gen)]
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen)

    def package() -> list[np.ndarray]:
        out = []
        for (_, _, h, w), seed in zip(boxes, seeds):
            simplex = opensimplex.OpenSimplex(seed=seed)
            z, y, x = np.arange(3), np.arange(h), np.arange(w)
            noise, amplitude, frequency = np.zeros((3, h, w)), 1.0, 32.0
            for _ in range(6):
                noise += amplitude * simplex.noise3array(x / frequency, y / frequency, z / frequency)
                frequency, amplitude = frequency / 2, amplitude * 0.6
            out.append(noise)
        return out

    times, _ = interleaved({"opensimplex": package,
                            "ours": lambda: simplex_noise((3, 31, 31), perm, 6, 0.6, 32.0),
                            "ours_whole_add_pseudo_anomalies": lambda: add_pseudo_anomalies(images, gen)}, rounds)
    return {"batch_size": batch, "image_size": size, "rounds": rounds, "opensimplex": opensimplex.__version__
            if hasattr(opensimplex, "__version__") else "installed",
            "seconds": {k: side_summary(v) for k, v in times.items()},
            "opensimplex_over_ours": ratio_summary(times["opensimplex"], times["ours"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_rdpp.json"))
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9, help="timed training rounds after 1 warm-up")
    parser.add_argument("--noise-rounds", type=int, default=3, help="timed noise rounds (opensimplex: ~10 s each)")
    parser.add_argument("--quick", action="store_true", help="64 px, 1 round each (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds, args.noise_rounds = 64, 1, 1
    torch.set_num_threads(args.threads)
    result = {"benchmark": "bench_rdpp", "machine": machine(), "config": {k: str(v) for k, v in vars(args).items()},
              "training": bench_training(args.arch, args.size, args.batch, args.rounds),
              "noise": bench_noise(16, 256, args.noise_rounds)}
    line = f"rdpp/rd4ad step time {fmt_ratio(result['training']['rdpp_over_rd4ad'])}"
    if result["noise"]:
        line += f"; opensimplex/ours noise time {fmt_ratio(result['noise']['opensimplex_over_ours'])}"
    write_result(args.out, result, line)


if __name__ == "__main__":
    main()
