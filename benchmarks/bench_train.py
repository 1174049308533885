"""Training throughput and inference latency of RD4AD / SK-RD4AD, ours vs a plain eager loop.

In one run, per teacher architecture (wide_resnet50_2 at 256 px batch 16, mobilenet_v2 at 256
and at the embedded default's 192 px) and
device (CPU; CUDA when present, also with bf16 autocast):

- ``ours``: :func:`skrd4ad.train.train_step` on the model as :func:`skrd4ad.train.train` sets it
  up (teacher BatchNorm folded into its convolutions, channels_last memory layout; uint8 batch
  moved to the device then normalised there, teacher under no_grad);
- ``unfolded``: the same ``train_step`` with the teacher's BatchNorm left as separate layers
  (what the fold alone buys: ``fold_speedup``);
- ``plain``: the textbook loop of the reference code: normalise on the host in float32, copy to
  the device, teacher forward with autograd enabled, decoder, cosine loss, backward, Adam step;
- inference latency of :func:`skrd4ad.inference.predict_batch` (maps + Gaussian + scores) at
  batch 1 and batch 16, on the model as :func:`skrd4ad.evaluate.evaluate` uses it (all
  BatchNorm folded) and, interleaved, on the same model unfolded (``batch*_fold_speedup``).

Steps of the two loops are interleaved so machine noise hits both alike; the JSON holds the
images/s of each, the ratio ``ours_over_plain`` (>= 1 means ours is not slower) and
``fold_speedup`` (unfolded / ours step time).

    python benchmarks/bench_train.py --out benchmarks/out/train.json [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from skrd4ad.config import TrainConfig
from skrd4ad.inference import predict_batch
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.loss import distillation_loss
from skrd4ad.models.rd4ad import build_model
from skrd4ad.train import train_step

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step(model, optimizer, batch_uint8: torch.Tensor, device: torch.device) -> None:
    x = (batch_uint8.permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD
    x = x.to(device)
    t = model.teacher(x)  # autograd on, as the reference code runs its encoder
    s = model.decoder(model.bottleneck(t), (t[1], t[2]) if model.skip else None)
    loss = distillation_loss(t, s, "cosine").total
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bench_training(arch: str, size: int, batch: int, device: torch.device, amp: str, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, "skrd4ad", teacher_weights=None)
    fold_batchnorm(model.teacher)  # as train() does
    model = model.to(device).train()
    fmt = torch.channels_last  # TrainConfig's default
    ours_model = model.to(memory_format=fmt)
    opt_ours = torch.optim.Adam(ours_model.student_parameters(), lr=0.005, betas=(0.5, 0.999))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    config = TrainConfig(arch=arch, teacher_weights=None, amp=amp, device=str(device))
    torch.manual_seed(0)
    unfolded_model = build_model(arch, "skrd4ad", teacher_weights=None).to(device, memory_format=fmt).train()
    opt_unfolded = torch.optim.Adam(unfolded_model.student_parameters(), lr=0.005, betas=(0.5, 0.999))
    torch.manual_seed(1)
    plain_model = build_model(arch, "skrd4ad", teacher_weights=None).to(device).train()
    opt_plain = torch.optim.Adam(plain_model.student_parameters(), lr=0.005, betas=(0.5, 0.999))
    data = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    if device.type == "cuda":
        data = data.pin_memory()
    times: dict[str, list[float]] = {"ours": [], "unfolded": [], "plain": []}
    for i in range(steps + 1):  # first round is warm-up
        for name in ("ours", "unfolded", "plain") if i % 2 == 0 else ("plain", "unfolded", "ours"):
            _sync(device)
            t0 = time.perf_counter()
            if name == "ours":
                train_step(ours_model, opt_ours, scaler, data, config, fmt)
            elif name == "unfolded":
                train_step(unfolded_model, opt_unfolded, scaler, data, config, fmt)
            else:
                plain_step(plain_model, opt_plain, data, device)
            _sync(device)
            if i > 0:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"arch": arch, "image_size": size, "batch_size": batch, "device": str(device), "amp": amp,
            "steps": steps, "ours_images_per_s": batch / med["ours"], "plain_images_per_s": batch / med["plain"],
            "unfolded_images_per_s": batch / med["unfolded"],
            "ours_over_plain": med["plain"] / med["ours"], "fold_speedup": med["unfolded"] / med["ours"],
            "step_seconds": times}


def bench_inference(arch: str, size: int, device: torch.device, amp: str, repeats: int) -> dict:
    torch.manual_seed(0)
    unfolded = build_model(arch, "skrd4ad", teacher_weights=None).eval().to(device, memory_format=torch.channels_last)
    model = copy.deepcopy(unfolded)
    fold_batchnorm(model)  # as evaluate() does
    out = {"arch": arch, "image_size": size, "device": str(device), "amp": amp}
    for batch in (1, 16):
        data = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
        samples: dict[str, list[float]] = {"folded": [], "unfolded": []}
        for m in (model, unfolded):
            predict_batch(m, data, amp=amp)
        for _ in range(repeats):  # interleaved
            for name, m in (("folded", model), ("unfolded", unfolded)):
                _sync(device)
                t0 = time.perf_counter()
                predict_batch(m, data, amp=amp)
                _sync(device)
                samples[name].append(time.perf_counter() - t0)
        out[f"batch{batch}_ms_per_image"] = 1000 * statistics.median(samples["folded"]) / batch
        out[f"batch{batch}_ms_per_image_unfolded"] = 1000 * statistics.median(samples["unfolded"]) / batch
        out[f"batch{batch}_fold_speedup"] = statistics.median(samples["unfolded"]) / statistics.median(samples["folded"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train.json"))
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller wide_resnet input (smoke run)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    steps = args.steps or (1 if args.quick else 3)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(),
                           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
               "training": [], "inference": []}
    for device in devices:
        for amp in ("none", "bf16") if device.type == "cuda" else ("none",):
            for arch, size in (("wide_resnet50_2", 128 if args.quick and device.type == "cpu" else 256),
                               ("mobilenet_v2", 256), ("mobilenet_v2", 192)):  # 192: the embedded default
                results["training"].append(bench_training(arch, size, 16, device, amp,
                                                          steps if device.type == "cpu" else 10 * steps))
                results["inference"].append(bench_inference(arch, size, device, amp,
                                                            steps if device.type == "cpu" else 20))
                print(json.dumps({k: v for k, v in results["training"][-1].items() if k != "step_seconds"}),
                      json.dumps(results["inference"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
