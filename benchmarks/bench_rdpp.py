"""Cost of an RD++ training step over an RD4AD step, and of our simplex noise over ``opensimplex``.

``training``: on one small model (random ``--arch`` teacher, default mobilenet_v2, ``--size`` px,
default 128, batch 8, float32, CPU, ``--threads`` 2), per timed call two batches:

- ``rd4ad``: two :func:`skrd4ad.train.train_step` calls (teacher BatchNorm folded, fused Adam), as
  :func:`skrd4ad.train.train` trains RD4AD;
- ``rdpp``: two :func:`rdpp_step` calls: pseudo-anomalies, one teacher forward on clean + noisy,
  projection of both, bottleneck, decoder, RD loss + 0.2 * projection loss, backward; the two
  fused Adam optimisers (projection lr 1e-3, student 5e-3) step once per two batches on the
  summed gradients.  Built by hand from the RD++ modules until the registered variant exists.

``noise``: the pseudo-anomaly noise of one batch of 16 at 256 px (rectangle sides 10-31 px, 6
octaves): ``opensimplex`` (the package's ``OpenSimplex(seed).noise3array`` per image on the
image's rectangle, as the authors' loader does, but without their numba) vs
:func:`skrd4ad.data.simplex_noise.simplex_noise` on all 16 at once (each on a 31x31 box, so more
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
from skrd4ad.data.prepared import to_model_input
from skrd4ad.data.pseudo_anomaly import add_pseudo_anomalies, sample_boxes
from skrd4ad.data.simplex_noise import random_permutations, simplex_noise
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.loss import distillation_loss
from skrd4ad.models.projection import Projection
from skrd4ad.models.rd4ad import ReverseDistillation, build_model
from skrd4ad.models.rdpp_loss import projection_loss, rdpp_total
from skrd4ad.train import make_optimizer, train_step


def rdpp_step(model: ReverseDistillation, projection: Projection, optimizers: list[torch.optim.Optimizer],
              batch_uint8: torch.Tensor, generator: torch.Generator, step: int) -> torch.Tensor:
    """One RD++ training batch; the optimisers step after every second batch (``step`` odd) on the
    gradients summed over the two.  Returns the detached total loss.  The integrator replaces this
    by the registered ``rdpp`` variant."""
    device = next(projection.parameters()).device
    batch = batch_uint8.shape[0]
    clean = to_model_input(batch_uint8, device)
    noisy = add_pseudo_anomalies(batch_uint8.to(device), generator, normalize=True)
    with torch.no_grad():
        feats = model.teacher(torch.cat([clean, noisy]))  # frozen, eval-mode teacher: one forward for both
    projected = projection(feats)  # InstanceNorm is per sample: projecting the two halves together is exact
    t, t_noisy = [f[:batch] for f in feats], [f[batch:] for f in feats]
    p_clean, p_noisy = [p[:batch] for p in projected], [p[batch:] for p in projected]
    s = model.decoder(model.bottleneck(p_clean), None)
    rd = distillation_loss(t, s, "cosine").total
    perm = torch.randperm(batch, generator=generator)
    loss = rdpp_total(rd, projection_loss(t_noisy, p_noisy, p_clean, perm).total)
    loss.backward()
    if step % 2 == 1:
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return loss.detach()


def bench_training(arch: str, size: int, batch: int, rounds: int) -> dict:
    device = torch.device("cpu")
    config = TrainConfig(arch=arch, teacher_weights=None, device="cpu")
    torch.manual_seed(0)
    rd4ad = build_model(arch, "rd4ad", teacher_weights=None).train()
    fold_batchnorm(rd4ad.teacher)  # as train() does
    opt_rd4ad = make_optimizer(rd4ad, config, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    torch.manual_seed(0)
    rdpp = build_model(arch, "rd4ad", teacher_weights=None).train()
    fold_batchnorm(rdpp.teacher)
    projection = Projection(rdpp.teacher.channels).train()
    optimizers = [torch.optim.Adam(projection.parameters(), lr=1e-3, betas=(0.5, 0.999), fused=True),
                  torch.optim.Adam(rdpp.student_parameters(), lr=5e-3, betas=(0.5, 0.999), fused=True)]
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen) for _ in range(2)]
    noise_gen = torch.Generator().manual_seed(1)

    def two_rd4ad() -> None:
        for b in data:
            train_step(rd4ad, opt_rd4ad, scaler, b, config)

    def two_rdpp() -> None:
        for i, b in enumerate(data):
            rdpp_step(rdpp, projection, optimizers, b, noise_gen, i)

    times, _ = interleaved({"rd4ad": two_rd4ad, "rdpp": two_rdpp}, rounds)
    return {"arch": arch, "image_size": size, "batch_size": batch, "batches_per_call": 2, "rounds": rounds,
            "seconds_per_two_batches": {k: side_summary(v) for k, v in times.items()},
            "projection_parameters": sum(p.numel() for p in projection.parameters()),
            "student_parameters": sum(p.numel() for p in rdpp.student_parameters()),
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
