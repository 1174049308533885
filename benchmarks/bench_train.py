"""Training throughput and inference latency of RD4AD / SK-RD4AD, ours vs a plain eager loop.

In one run, per teacher architecture (wide_resnet50_2, at 256 px on a GPU and ``--cpu-wide-size``
px, default 128, on the CPU, where one 256 px step takes half a minute; mobilenet_v2 at 256 and
at the embedded default's 192 px; batch 16) and device (CPU; CUDA when present, also with bf16
autocast):

- ``ours``: :func:`skrd4ad.train.train_step` on the model as :func:`skrd4ad.train.train` sets it
  up (teacher BatchNorm folded into its convolutions, channels_last memory layout; uint8 batch
  moved to the device then normalised there, teacher under no_grad);
- ``unfolded``: the same ``train_step`` with the teacher's BatchNorm left as separate layers
  (what the fold alone buys: ``fold_speedup``);
- ``plain``: the textbook loop of the reference code: normalise on the host in float32, copy to
  the device, teacher forward with autograd enabled, decoder, cosine loss, backward, Adam step;
  under the same autocast as ``ours`` when ``amp`` is bf16, so both sides compute in one dtype;
- inference latency of :func:`skrd4ad.inference.predict_batch` (maps + Gaussian + scores) at
  batch 1 and batch 16, on the model as :func:`skrd4ad.evaluate.evaluate` uses it (all
  BatchNorm folded) and, interleaved, on the same model unfolded (``fold_speedup``).

- teacher cache (``train.teacher_cache``, :mod:`skrd4ad.teacher_cache`), per architecture
  (mobilenet_v2, resnet18, wide_resnet50_2; random weights; small sizes, ``--cache-sizes``):
  ``uncached``: ``train_step`` on the uint8 batch (the teacher runs every step); ``cached``: the
  same step given the batch's maps gathered from a memory cache (the gather is timed, the image is
  not read), as :func:`skrd4ad.train.train` does; per step (same batch) and per epoch (every batch
  of ``--cache-images`` images in shuffled order, reading the images / gathering the maps as
  training does).  ``uncached_over_cached`` > 1 means the cache is faster; ``build_s`` is the
  one-time teacher pass that fills the cache (median of the rounds), and ``build_over_cached_epoch``
  says how many cached epochs it costs.  ``--only cache`` runs this part alone.

Steps are interleaved round by round after one warm-up round (the order alternates; see
``_common``). The JSON holds each side's median step time and images/s, and per-round ratios as
median with min and max: ``plain_over_ours`` (plain / ours step time; > 1 means ours is faster)
and ``fold_speedup`` (unfolded / ours).

    python benchmarks/bench_train.py                # CPU: about 3 minutes on 2 cores
    python benchmarks/bench_train.py --quick        # smoke run
    python benchmarks/bench_train.py --only cache   # teacher cache only: a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import interleaved, machine, ratio_summary, side_summary, write_result
from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.data.prepared import batch_from, iterate_batches
from skrd4ad.device import memory_format_for
from skrd4ad.inference import predict_batch
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.loss import distillation_loss
from skrd4ad.models.build import build_model
from skrd4ad.teacher_cache import open_cache
from skrd4ad.train import make_optimizer, train_step

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step(model, optimizer, batch_uint8: torch.Tensor, device: torch.device, amp: str) -> None:
    x = (batch_uint8.permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD
    x = x.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):  # as ours (same dtype)
        t = model.teacher(x)  # autograd on, as the reference code runs its encoder
        s = model.student.decoder(model.student.bottleneck(t), (t[1], t[2]))  # the SK wiring (models below)
    loss = distillation_loss(t, s, "cosine").total
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bench_training(arch: str, size: int, batch: int, device: torch.device, amp: str, rounds: int) -> dict:
    if amp not in ("none", "bf16"):
        raise ValueError(f"amp {amp!r}: this benchmark compares none or bf16")
    torch.manual_seed(0)
    model = build_model(arch, "skrd4ad", teacher_weights=None)
    fold_batchnorm(model.teacher)  # as train() does
    config = TrainConfig(arch=arch, teacher_weights=None, amp=amp, device=str(device))
    fmt = memory_format_for(config.memory_format, device, arch, amp)  # as train() does
    ours_model = model.to(device).train().to(memory_format=fmt)
    opt_ours = make_optimizer(ours_model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    torch.manual_seed(0)
    unfolded_model = build_model(arch, "skrd4ad", teacher_weights=None).to(device, memory_format=fmt).train()
    opt_unfolded = make_optimizer(unfolded_model, config, device)
    torch.manual_seed(1)
    plain_model = build_model(arch, "skrd4ad", teacher_weights=None).to(device).train()
    opt_plain = torch.optim.Adam(plain_model.student_parameters(), lr=0.005, betas=(0.5, 0.999))
    data = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    if device.type == "cuda":
        data = data.pin_memory()
    times, _ = interleaved({
        "ours": lambda: train_step(ours_model, opt_ours, scaler, data, config, fmt),
        "unfolded": lambda: train_step(unfolded_model, opt_unfolded, scaler, data, config, fmt),
        "plain": lambda: plain_step(plain_model, opt_plain, data, device, amp),
    }, rounds, sync=lambda: _sync(device))
    seconds = {k: side_summary(v) for k, v in times.items()}
    return {"arch": arch, "image_size": size, "batch_size": batch, "device": str(device), "amp": amp,
            "rounds": rounds, "step_seconds": seconds,
            "images_per_s_of_median_step": {k: batch / v["median_s"] for k, v in seconds.items()},
            "plain_over_ours": ratio_summary(times["plain"], times["ours"]),
            "fold_speedup": ratio_summary(times["unfolded"], times["ours"])}


def bench_teacher_cache(arch: str, size: int, batch: int, n_images: int, device: torch.device,
                        rounds: int) -> dict:
    """Cached vs uncached training step and epoch of SK-RD4AD (float32, the layout train() picks)."""
    config = TrainConfig(arch=arch, teacher_weights=None, device=str(device), batch_size=batch)
    fmt = memory_format_for(config.memory_format, device, arch, config.amp)
    sides = {}
    for name in ("uncached", "cached"):
        torch.manual_seed(0)
        model = build_model(arch, "skrd4ad", teacher_weights=None)
        fold_batchnorm(model.teacher)
        model = model.to(device, memory_format=fmt).train()
        sides[name] = (model, make_optimizer(model, config, device))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    builds = []
    with open_cache("memory", sides["cached"][0], images, batch_size=batch, amp=config.amp, device=device,
                    memory_format=fmt, out_path=Path("unused.pt")) as cache:
        for _ in range(rounds):  # the one-time cost, timed on its own
            _sync(device)
            t0 = time.perf_counter()
            with open_cache("memory", sides["cached"][0], images, batch_size=batch, amp=config.amp, device=device,
                            memory_format=fmt, out_path=Path("unused.pt")) as again:
                _sync(device)
                builds.append(time.perf_counter() - t0)
                del again
        idx = np.arange(batch, dtype=np.int64)
        data = batch_from(images, idx, pin_memory=device.type == "cuda")

        def step(name: str) -> None:
            model, opt = sides[name]
            if name == "cached":
                train_step(model, opt, scaler, None, config, fmt, teacher_feats=cache.gather(idx))
            else:
                train_step(model, opt, scaler, data, config, fmt)

        def epoch(name: str) -> None:
            model, opt = sides[name]
            for i in iterate_batches(n_images, batch, shuffle=True, generator=torch.Generator().manual_seed(0)):
                if name == "cached":
                    train_step(model, opt, scaler, None, config, fmt, teacher_feats=cache.gather(i))
                else:
                    train_step(model, opt, scaler, batch_from(images, i, pin_memory=device.type == "cuda"),
                               config, fmt)

        steps, _ = interleaved({n: (lambda n=n: step(n)) for n in sides}, rounds, sync=lambda: _sync(device))
        epochs, _ = interleaved({n: (lambda n=n: epoch(n)) for n in sides}, rounds, sync=lambda: _sync(device))
        cache_mb = cache.nbytes / 1e6
    epoch_cached = side_summary(epochs["cached"])["median_s"]
    return {"arch": arch, "image_size": size, "batch_size": batch, "epoch_images": n_images, "device": str(device),
            "amp": config.amp, "rounds": rounds, "cache_mb": cache_mb,
            "step_seconds": {k: side_summary(v) for k, v in steps.items()},
            "epoch_seconds": {k: side_summary(v) for k, v in epochs.items()},
            "step_uncached_over_cached": ratio_summary(steps["uncached"], steps["cached"]),
            "epoch_uncached_over_cached": ratio_summary(epochs["uncached"], epochs["cached"]),
            "build_s": side_summary(builds), "build_over_cached_epoch": side_summary(builds)["median_s"] / epoch_cached}


def bench_inference(arch: str, size: int, device: torch.device, amp: str, rounds: int) -> dict:
    torch.manual_seed(0)
    unfolded = build_model(arch, "skrd4ad", teacher_weights=None).eval().to(device, memory_format=torch.channels_last)
    model = copy.deepcopy(unfolded)
    fold_batchnorm(model)  # as evaluate() does
    out: dict = {"arch": arch, "image_size": size, "device": str(device), "amp": amp, "rounds": rounds}
    for batch in (1, 16):
        data = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
        settings = EvalConfig(amp=amp)
        times, _ = interleaved({"folded": lambda: predict_batch(model, data, settings),
                                "unfolded": lambda: predict_batch(unfolded, data, settings)},
                               rounds, sync=lambda: _sync(device))
        out[f"batch{batch}"] = {
            "seconds": {k: side_summary(v) for k, v in times.items()},
            "ms_per_image_of_median": {k: 1000 * side_summary(v)["median_s"] / batch for k, v in times.items()},
            "fold_speedup": ratio_summary(times["unfolded"], times["folded"]),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_train.json"))
    parser.add_argument("--quick", action="store_true", help="1 round, 64 px wide_resnet50_2 on the CPU (smoke run)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timed rounds after 1 warm-up (default 3 on the CPU, 30 on CUDA)")
    parser.add_argument("--cpu-wide-size", type=int, default=128, help="wide_resnet50_2 image side on the CPU")
    parser.add_argument("--only", choices=("all", "cache"), default="all", help="cache: the teacher-cache part alone")
    parser.add_argument("--cache-sizes", default="mobilenet_v2=192,resnet18=128,wide_resnet50_2=96",
                        help="arch=px of the teacher-cache part on the CPU (256 px each on CUDA)")
    parser.add_argument("--cache-batch", type=int, default=8, help="batch of the teacher-cache part")
    parser.add_argument("--cache-images", type=int, default=20, help="images per epoch of the teacher-cache part")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.cpu_wide_size = args.rounds or 1, 64
        args.cache_sizes, args.cache_images = "mobilenet_v2=64,resnet18=64,wide_resnet50_2=64", 2 * args.cache_batch
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict = {"benchmark": "bench_train", "machine": machine(), "config": {k: str(v) for k, v in vars(args).items()},
                     "training": [], "inference": [], "teacher_cache": []}
    cache_sizes = {a: int(px) for a, px in (item.split("=") for item in args.cache_sizes.split(","))}
    for device in devices:
        rounds = args.rounds or (3 if device.type == "cpu" else 30)
        for arch, size in cache_sizes.items():
            res = bench_teacher_cache(arch, size if device.type == "cpu" else 256, args.cache_batch, args.cache_images,
                                      device, max(rounds, 5) if args.rounds is None else rounds)
            results["teacher_cache"].append(res)
            print(json.dumps({"arch": arch, "size": res["image_size"], "device": str(device), "cache_mb": res["cache_mb"],
                              "step_uncached_over_cached": res["step_uncached_over_cached"]["median"],
                              "epoch_uncached_over_cached": res["epoch_uncached_over_cached"]["median"],
                              "build_over_cached_epoch": res["build_over_cached_epoch"]}), flush=True)
        if args.only == "cache":
            continue
        for amp in ("none", "bf16") if device.type == "cuda" else ("none",):
            for arch, size in (("wide_resnet50_2", args.cpu_wide_size if device.type == "cpu" else 256),
                               ("mobilenet_v2", 256), ("mobilenet_v2", 192)):  # 192: the embedded default
                results["training"].append(bench_training(arch, size, 16, device, amp, rounds))
                results["inference"].append(bench_inference(arch, size, device, amp, rounds))
                tr, inf = results["training"][-1], results["inference"][-1]
                print(json.dumps({"arch": arch, "size": size, "device": str(device), "amp": amp,
                                  "plain_over_ours": tr["plain_over_ours"]["median"],
                                  "train_fold_speedup": tr["fold_speedup"]["median"],
                                  "infer_b1_fold_speedup": inf["batch1"]["fold_speedup"]["median"],
                                  "infer_b16_fold_speedup": inf["batch16"]["fold_speedup"]["median"]}), flush=True)
    write_result(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
