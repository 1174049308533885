"""Peer benchmark: our training step, inference and whole job against anomalib's ReverseDistillation.

Runs only where ``anomalib`` is installed (``pip install anomalib``: an optional tool of this
benchmark, never a dependency of ``skrd4ad``); without it, it prints one line saying so, writes
a JSON that says ``skipped`` and exits 0.

Three models, all with the wide_resnet50_2 teacher/encoder and random weights (nothing is
downloaded), float32, the same batch of random uint8 images (default 8 images of 256 px), in one
process with one thread count:

- ``ours``: ``build_model("wide_resnet50_2", "rd4ad")`` as :func:`skrd4ad.train.train` sets it up
  for training (teacher BatchNorm folded, in the memory layout ``train()`` picks for this
  architecture and device with the default settings) and as :func:`skrd4ad.evaluate.evaluate`
  does for inference (all BatchNorm folded, channels_last);
- ``anomalib_equal_width``: anomalib's ``ReverseDistillationModel`` with its OCBE bottleneck
  rebuilt at ``width_per_group=128`` (anomalib's ``get_bottleneck_layer(backbone, **kwargs)``
  takes it, but ``ReverseDistillationModel`` calls it without arguments, so the benchmark replaces
  ``model.bottleneck`` after construction); its decoder is already at 128.  This is the width of
  ours and of the reference RD4AD code, and the same network as ours: the benchmark loads our
  (unfolded) weights into it and checks that both give the same loss and anomaly maps;
- ``anomalib_default``: ``ReverseDistillationModel`` as anomalib builds it (bottleneck at width
  64: fewer FLOPs than ours); our encoder and decoder weights, its own bottleneck.

Training step: ours is :func:`skrd4ad.train.train_step` (uint8 batch -> normalised on the
device -> teacher under no_grad -> bottleneck + decoder -> cosine loss -> backward -> Adam);
anomalib's is the bare loop its Lightning module runs, without Lightning: uint8 -> float in
[0, 1] (``to_dtype(scale=True)``, as anomalib's datasets read images) -> its default
pre-processor transform (Resize, a no-op at the same size, + Normalize) -> model in train mode
(its encoder switches itself to eval and runs under no_grad) -> ``ReverseDistillationLoss`` ->
backward -> Adam.  Both use Adam(lr=0.005, betas=(0.5, 0.999)) over bottleneck + decoder
(anomalib's own module uses betas (0.5, 0.99): same cost); ours with the fused kernel
:func:`skrd4ad.train.make_optimizer` picks, anomalib's with PyTorch's default, as each trains.

Inference: ours is :func:`skrd4ad.inference.predict_batch` (maps summed over the layers, Gaussian
sigma 4 as two matrix products with scipy's 'reflect' border, max score); anomalib's is its model
in eval mode under inference_mode, returning ``InferenceBatch(pred_score, anomaly_map)``
(default "add" mode = sum, sigma 4 as a 33x33 2-D convolution with torch's 'reflect' border,
max score), after the same uint8 -> float -> pre-processor conversion.  Anomalib's
post-processor (score normalisation, thresholds) is not timed: it is not part of the map.

Sides run interleaved round by round after one untimed warm-up round (order alternating, see
``_common``).  The JSON holds each side's median seconds with min/max and, per comparison, the
per-round ratio anomalib / ours (> 1: ours is faster) as median [min, max], next to the goals of
issue 14: training step >= 1.3x at equal width and >= 1.0x at anomalib's default width,
inference >= 1.5x (read here as: at both widths).

Whole job (``--job``, or ``--job-only`` without the step and inference parts; issue 20): the
same job as two users would run it, each side in fresh processes, on the CPU.  The embedded
synthetic dataset's first class (``skrd4ad.data.DEFAULT_CLASSES[0]``: brick, with its default
sizes: 80 train, 20 good and 40 anomalous test images over the defect types, masks) is written
once in MVTec layout (``train/good``, ``test/good``, ``test/<defect>``, ``ground_truth/<defect>``)
at ``--size`` px, untimed; then, with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``--threads`` on
both sides:

- ``ours``: ``skrd4ad prepare`` (``--image-size`` = size, ``--val-fraction 0`` so that both sides
  train on the same 80 images) + ``skrd4ad train`` (rd4ad, wide_resnet50_2, ``--teacher-weights
  none`` = random, ``--epochs``, ``--batch-size``, CPU, float32; teacher cache, memory layout and
  the rest at their defaults) + ``skrd4ad evaluate`` (batch as training, default figures): three
  processes of the ``skrd4ad`` command of this environment, the package being the one this script
  imports (PYTHONPATH is passed on);
- ``anomalib``: one process (this script with a hidden ``--anomalib-job``) running
  ``Engine.fit`` + ``Engine.test`` on ``anomalib.data.Folder`` (train/eval batch as ours,
  ``num_workers`` = ``--anomalib-workers``, default 8 = anomalib's; its default splits, so
  validation = half of the test set, run after every epoch) with ``ReverseDistillation(
  pre_trained=False)`` (random weights, nothing downloaded), its pre-processor at ``--size``, its
  bottleneck rebuilt at our width 128 as above, ``Engine(max_epochs=--epochs, accelerator="cpu",
  devices=1, enable_progress_bar=False)``.  Everything else is what a default user gets: no logger
  (Engine's default), anomalib's ``ModelCheckpoint`` (Engine adds it), the model's default
  post-processor, evaluator and visualizer (which writes an image per test image).

Timed, interleaved round by round (``--job-rounds``, after ``--job-warmup`` untimed rounds): each
side's whole wall clock (ratio anomalib / ours, goal >= 1.3x); the mean seconds per training epoch
(ours: from the training log's "s/epoch", which includes filling the teacher cache in epoch 1;
anomalib: a Lightning callback from each epoch's start to the validation after it, data loading
included); and ``skrd4ad evaluate``'s whole process against the ``Engine.test`` call alone
(anomalib's imports and model set-up come before it; the JSON also gives the ratio with them).
Each side's metrics are kept in the JSON's ``runs`` (random weights: they only show both ran).

    pip install -e '.[peer]'                   # in a separate environment; see the docstring above
    python benchmarks/bench_peer.py            # CPU, 2 cores: 5-10 minutes (more when the cores are shared)
    python benchmarks/bench_peer.py --quick    # smoke run: 64 px, batch 2, 1 round
    python benchmarks/bench_peer.py --job-only # whole job, 3 rounds + 1 warm-up: ~25 minutes a round on 2 busy cores
    python benchmarks/bench_peer.py --job-only --quick  # smoke: 64 px, batch 2, 8 train images, 1 epoch, 1 round
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from _common import fmt_ratio, interleaved, machine, ratio_summary, side_summary, write_result
from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.data.prepared import to_model_input
from skrd4ad.device import memory_format_for
from skrd4ad.inference import predict_batch
from skrd4ad.io import write_json_atomic
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.loss import distillation_loss
from skrd4ad.models.build import build_model
from skrd4ad.train import make_optimizer, train_step

ARCH = "wide_resnet50_2"
LAYERS = ("layer1", "layer2", "layer3")
LR, BETAS = 0.005, (0.5, 0.999)
EQUAL_WIDTH = 128  # our OCBE width for wide_resnet50_2 (ARCH_SPECS) and the reference RD4AD code's
SIDES = ("ours", "anomalib_equal_width", "anomalib_default")
GOALS = {("training", "anomalib_equal_width"): 1.3, ("training", "anomalib_default"): 1.0,
         ("inference", "anomalib_equal_width"): 1.5, ("inference", "anomalib_default"): 1.5}
JOB_GOAL = 1.3  # issue 20: whole job and training epoch at least 1.3x anomalib at equal width, CPU float32
NOT_INSTALLED = ("anomalib is not installed: pip install anomalib (optional, never a dependency of skrd4ad; "
                 "see benchmarks/bench_peer.py) -- skipping the peer benchmark")


def _import_anomalib() -> dict[str, Any] | None:
    """anomalib's pieces, or None when anomalib is not installed (a broken install raises)."""
    try:
        import anomalib  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "anomalib":
            return None
        raise
    with warnings.catch_warnings():  # its deprecation notices on import say nothing about this benchmark
        warnings.simplefilter("ignore", FutureWarning)
        from anomalib.models.image.reverse_distillation import ReverseDistillation
        from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
    return {"ReverseDistillationModel": ReverseDistillationModel, "get_bottleneck_layer": get_bottleneck_layer,
            "ReverseDistillationLoss": ReverseDistillationLoss,
            "pre_processor": ReverseDistillation.configure_pre_processor}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("skrd4ad", "anomalib", "torch", "torchvision", "timm", "lightning"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_log() -> tuple[list[float], Any]:
    """A list and an ``interleaved(between=...)`` hook that appends the 1-minute load average
    before each timed call: other processes on the cores show up there, not in the times."""
    loads: list[float] = []
    return loads, lambda _round, _side: loads.append(round(os.getloadavg()[0], 2))


def _timed(sides: dict[str, Any], rounds: int, device: torch.device) -> tuple[dict[str, list[float]], dict, list]:
    """Interleaved rounds of ``sides`` (see ``_common``): per-side times, their summaries, and the
    1-minute load average logged before each timed call."""
    loads, log_load = _load_log()
    times, _ = interleaved(sides, rounds, sync=lambda: _sync(device), between=log_load)
    return times, {k: side_summary(v) for k, v in times.items()}, loads


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_sides(an: dict[str, Any], size: int, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Our unfolded model and anomalib's two (on the CPU, as built), sharing weights where the
    shapes allow: the encoder and decoder everywhere, the bottleneck at equal width."""
    torch.manual_seed(seed)
    ours = build_model(ARCH, "rd4ad", teacher_weights=None)

    def peer(width: int | None) -> torch.nn.Module:
        model = an["ReverseDistillationModel"](backbone=ARCH, input_size=(size, size), layers=list(LAYERS),
                                               anomaly_map_mode="add", pre_trained=False)
        model.encoder.feature_extractor.load_state_dict(ours.teacher.state_dict())
        model.decoder.load_state_dict(ours.student.decoder.state_dict())
        if width is not None:
            model.bottleneck = an["get_bottleneck_layer"](ARCH, width_per_group=width)
            missing, unexpected = model.bottleneck.load_state_dict(ours.student.bottleneck.state_dict(), strict=False)
            # anomalib's OCBE builds a conv4/bn4 that its forward never uses; nothing else may differ
            if unexpected or any(not k.startswith(("conv4.", "bn4.")) for k in missing):
                raise RuntimeError(f"bottleneck weights do not map: missing {missing}, unexpected {unexpected}")
        return model

    torch.manual_seed(seed + 1)  # anomalib's default bottleneck: its own initialisation
    return {"ours": ours, "anomalib_equal_width": peer(EQUAL_WIDTH), "anomalib_default": peer(None)}


def _peer_input(pre, batch_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """anomalib's path from uint8 images to model input: float in [0, 1], then its transform."""
    from torchvision.transforms.v2.functional import to_dtype

    # anomalib's datasets hand over contiguous (B, 3, H, W) images: its loss needs .view()-able maps
    x = batch_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
    return pre.transform(to_dtype(x, torch.float32, scale=True))


def peer_train_step(model, optimizer, criterion, pre, batch_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """What anomalib's Lightning loop does per batch, without Lightning."""
    loss = criterion(*model(_peer_input(pre, batch_uint8, device)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.inference_mode()
def peer_predict(model, pre, batch_uint8: torch.Tensor, device: torch.device):
    return model(_peer_input(pre, batch_uint8, device))


def bench_training(an, size: int, batch: int, device: torch.device, rounds: int, data: torch.Tensor) -> dict:
    models = build_sides(an, size)
    parameters = {name: {"encoder": _n_params(m.teacher if name == "ours" else m.encoder),
                         "bottleneck": _n_params((m.student if name == "ours" else m).bottleneck),
                         "decoder": _n_params((m.student if name == "ours" else m).decoder)}
                  for name, m in models.items()}  # anomalib's bottleneck counts its unused conv4/bn4
    ours = models["ours"]
    ours.eval()
    fold_batchnorm(ours.teacher)  # as train() does
    config = TrainConfig(arch=ARCH, variant="rd4ad", teacher_weights=None, device=str(device))
    fmt = memory_format_for(config.memory_format, device, config.arch, config.amp)  # as train() does
    ours = ours.to(device).to(memory_format=fmt).train()
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    opts = {"ours": make_optimizer(ours, config, device)}  # as train() does
    criterion = an["ReverseDistillationLoss"]()
    pre = an["pre_processor"]((size, size))
    for name in SIDES[1:]:
        models[name] = models[name].to(device).train()
        opts[name] = torch.optim.Adam([*models[name].decoder.parameters(), *models[name].bottleneck.parameters()],
                                      lr=LR, betas=BETAS)

    # like with like: the same weights give the same loss (ours: folded teacher, its own loss code)
    with torch.no_grad():
        t, s = ours(to_model_input(data, device).contiguous(memory_format=fmt))
        loss_ours = float(distillation_loss(t, s, "cosine").total)
        loss_peer = float(criterion(*models["anomalib_equal_width"](_peer_input(pre, data, device))))
    check = {"first_loss_ours": loss_ours, "first_loss_anomalib_equal_width": loss_peer,
             "abs_diff": abs(loss_ours - loss_peer)}
    if check["abs_diff"] > 1e-3 * max(1.0, abs(loss_ours)):
        raise RuntimeError(f"equal-width models disagree: loss {loss_ours} (ours) vs {loss_peer} (anomalib)")

    m = models
    times, seconds, loads = _timed({
        "ours": lambda: train_step(ours, opts["ours"], scaler, data, config, fmt),
        "anomalib_equal_width": lambda: peer_train_step(m["anomalib_equal_width"], opts["anomalib_equal_width"],
                                                        criterion, pre, data, device),
        "anomalib_default": lambda: peer_train_step(m["anomalib_default"], opts["anomalib_default"],
                                                    criterion, pre, data, device),
    }, rounds, device)
    return {
        "what": ("one optimisation step on the same uint8 batch; ours: skrd4ad.train.train_step on "
                 "build_model('wide_resnet50_2', 'rd4ad') with the teacher's BatchNorm folded, in the memory "
                 "layout train() picks with TrainConfig's defaults (ours_memory_format), as train() runs it; anomalib: the bare loop of its Lightning module without Lightning "
                 "(to_dtype(scale=True) + its pre-processor's Resize/Normalize, ReverseDistillationModel in train "
                 "mode, ReverseDistillationLoss, backward, Adam), contiguous (NCHW) layout, BatchNorm unfolded, "
                 "as anomalib ships it. Adam(lr=0.005, betas=(0.5, 0.999)) over bottleneck + decoder on every "
                 "side; anomalib's OCBE also holds an unused conv4/bn4 (no gradient, skipped by Adam). "
                 "anomalib_equal_width holds our weights (same network, same loss checked), "
                 "anomalib_default has its own bottleneck at width 64 (fewer FLOPs than ours)"),
        "rounds": rounds, "ours_memory_format": str(fmt).replace("torch.", ""), "step_seconds": seconds,
        "images_per_s_of_median_step": {k: batch / v["median_s"] for k, v in seconds.items()},
        "anomalib_equal_width_over_ours": ratio_summary(times["anomalib_equal_width"], times["ours"]),
        "anomalib_default_over_ours": ratio_summary(times["anomalib_default"], times["ours"]),
        "check": check, "parameters": parameters, "loadavg_1min_before_each_timed_call": loads,
    }


def bench_inference(an, size: int, batch: int, device: torch.device, rounds: int, data: torch.Tensor) -> dict:
    models = build_sides(an, size)
    ours = models["ours"].eval()
    fold_batchnorm(ours)  # as evaluate() does
    ours = ours.to(device, memory_format=torch.channels_last)  # as load_checkpoint() does
    settings = EvalConfig()  # sum of the layers, sigma 4, max score
    pre = an["pre_processor"]((size, size))
    for name in SIDES[1:]:
        models[name] = models[name].to(device).eval()

    # like with like: same weights -> the same maps, up to the blur's border rule (scipy's
    # 'reflect' repeats the edge pixel, torch's does not) within the blur radius of the edge
    maps_ours, scores_ours = predict_batch(ours, data, settings)
    peer_out = peer_predict(models["anomalib_equal_width"], pre, data, device)
    maps_peer = peer_out.anomaly_map.reshape(maps_ours.shape).float()
    radius = int(4.0 * settings.sigma + 0.5)
    inner = (slice(None), slice(radius, -radius), slice(radius, -radius))
    scale = float(maps_ours.abs().max())
    check = {"map_max_abs_diff": float((maps_ours - maps_peer).abs().max()),
             "map_max_abs_diff_inside_blur_radius_of_border": float((maps_ours[inner] - maps_peer[inner]).abs().max()),
             "map_max_abs": scale,
             "score_max_abs_diff": float((scores_ours - peer_out.pred_score.reshape(scores_ours.shape)).abs().max())}
    if check["map_max_abs_diff_inside_blur_radius_of_border"] > 1e-3 * max(scale, 1e-6):
        raise RuntimeError(f"equal-width models disagree on the anomaly maps: {check}")

    m = models
    times, seconds, loads = _timed({
        "ours": lambda: predict_batch(ours, data, settings),
        "anomalib_equal_width": lambda: peer_predict(m["anomalib_equal_width"], pre, data, device),
        "anomalib_default": lambda: peer_predict(m["anomalib_default"], pre, data, device),
    }, rounds, device)
    return {
        "what": ("uint8 batch to anomaly maps (B, H, W) and max scores; ours: skrd4ad.inference.predict_batch on "
                 "the model with all BatchNorm folded, channels_last (as evaluate() runs it); Gaussian sigma 4 as "
                 "two matrix products (scipy 'reflect' border). anomalib: ReverseDistillationModel in eval mode "
                 "under inference_mode after to_dtype(scale=True) + its pre-processor, BatchNorm unfolded, NCHW, "
                 "'add' mode (its default; = our 'sum'), Gaussian sigma 4 as a 33x33 2-D convolution built on "
                 "every call (torch 'reflect' border), max score; its post-processor (normalisation, "
                 "thresholds) is not timed. anomalib_equal_width holds our weights (maps checked equal up to "
                 "the blur border), anomalib_default has its own bottleneck at width 64"),
        "rounds": rounds, "batch_seconds": seconds,
        "ms_per_image_of_median": {k: 1000 * v["median_s"] / batch for k, v in seconds.items()},
        "anomalib_equal_width_over_ours": ratio_summary(times["anomalib_equal_width"], times["ours"]),
        "anomalib_default_over_ours": ratio_summary(times["anomalib_default"], times["ours"]),
        "check": check, "loadavg_1min_before_each_timed_call": loads,
    }


# --- the whole job: prepare + train + evaluate (ours, CLI) vs Engine.fit + Engine.test (anomalib) ---

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) loss \S+ \(([\d.]+) s/epoch")


def _run(argv: list[str], cwd: Path, env: dict[str, str], log_name: str) -> tuple[float, str]:
    """Run one command (no shell) in ``cwd``; its wall-clock seconds and its stderr.  A failure
    raises with the command and the end of its output."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    (cwd / f"{log_name}.stdout").write_text(proc.stdout)
    (cwd / f"{log_name}.stderr").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: ...{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds, proc.stderr


def _skrd4ad_cli() -> list[str]:
    """The ``skrd4ad`` command of this interpreter's environment (its console script, else ``-m``)."""
    script = Path(sys.executable).with_name("skrd4ad")
    return [str(script)] if script.exists() else [sys.executable, "-m", "skrd4ad"]


def _job_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    # the benchmarked package: the one this script imports (a worktree on PYTHONPATH or the install)
    import skrd4ad

    root = str(Path(skrd4ad.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def ours_job(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """``skrd4ad prepare``, ``train`` and ``evaluate`` as three processes; each one's wall clock
    and the training log's seconds per epoch."""
    cli, env, cls = _skrd4ad_cli(), _job_env(spec["threads"]), spec["class"]
    work.mkdir(parents=True)
    prepared, model = work / "prepared", work / "model.pt"
    t_prepare, _ = _run([*cli, "prepare", "--root", spec["root"], "--classes", cls, "--out", str(prepared),
                         "--image-size", str(spec["size"]), "--val-fraction", "0"], work, env, "prepare")
    t_train, log = _run([*cli, "train", "--data", str(prepared), "--out", str(model), "--arch", ARCH,
                         "--variant", "rd4ad", "--teacher-weights", "none", "--seed", "0",
                         "--epochs", str(spec["epochs"]), "--batch-size", str(spec["batch"]), "--device", "cpu",
                         "--amp", "none"], work, env, "train")
    t_eval, _ = _run([*cli, "evaluate", "--checkpoint", str(model), "--data", str(prepared), "--out",
                      str(work / "eval"), "--batch-size", str(spec["batch"]), "--device", "cpu"], work, env,
                     "evaluate")
    # the log gives the mean seconds per epoch so far (0.1 s resolution): elapsed = mean * epochs
    means = {int(m[1]): float(m[3]) for m in EPOCH_LINE.finditer(log)}
    if sorted(means) != list(range(1, spec["epochs"] + 1)):
        raise RuntimeError(f"{work / 'train.stderr'}: expected one 'epoch k/{spec['epochs']}' line per epoch, "
                           f"found epochs {sorted(means)}")
    elapsed = [0.0] + [means[k] * k for k in sorted(means)]
    metrics_path = work / "eval" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return {"prepare_s": t_prepare, "train_s": t_train, "evaluate_s": t_eval,
            "epoch_s": [b - a for a, b in zip(elapsed, elapsed[1:])], "epoch_mean_s": means[spec["epochs"]],
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def anomalib_job(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """One process running :func:`_anomalib_child` (``Engine.fit`` + ``Engine.test``)."""
    work.mkdir(parents=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(dict(spec, work=str(work))))
    _, _ = _run([sys.executable, str(Path(__file__).resolve()), "--anomalib-job", str(spec_path)], work,
                _job_env(spec["threads"]), "anomalib")
    return json.loads((work / "timings.json").read_text())


def _anomalib_child(spec_path: Path) -> int:
    """Inside the anomalib process: ``Folder`` on the synthetic class, ``ReverseDistillation``
    with random weights at our bottleneck width, ``Engine(max_epochs=...)`` on the CPU with its
    defaults otherwise; times ``fit``, ``test`` and each training epoch (a Lightning callback)."""
    t_start = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from anomalib.data import Folder
        from anomalib.engine import Engine
        from anomalib.models import ReverseDistillation
        from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer
        from lightning.pytorch import Callback, seed_everything

    class EpochTimer(Callback):
        """Seconds of each training epoch's batches: from its start to the start of the
        validation that follows it (or to its end, without validation)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._t0: float | None = None

        def _stop(self) -> None:
            if self._t0 is not None:
                self.seconds.append(time.perf_counter() - self._t0)
                self._t0 = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t0 = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._stop()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._stop()

    seed_everything(0, verbose=False)
    root = Path(spec["root"]) / spec["class"]
    datamodule = Folder(name=spec["class"], root=root, normal_dir="train/good", normal_test_dir="test/good",
                        abnormal_dir=[f"test/{d}" for d in spec["defects"]],
                        mask_dir=[f"ground_truth/{d}" for d in spec["defects"]],
                        train_batch_size=spec["batch"], eval_batch_size=spec["batch"],
                        num_workers=spec["anomalib_workers"], seed=0)
    size = (spec["size"], spec["size"])
    model = ReverseDistillation(backbone=ARCH, layers=list(LAYERS), pre_trained=False,
                                pre_processor=ReverseDistillation.configure_pre_processor(size))
    if spec["width"] is not None:  # our width (ReverseDistillationModel builds it at 64, see the docstring)
        model.model.bottleneck = get_bottleneck_layer(ARCH, width_per_group=spec["width"])
    timer = EpochTimer()
    engine = Engine(max_epochs=spec["epochs"], accelerator="cpu", devices=1, callbacks=[timer],
                    default_root_dir=Path(spec["work"]) / "results", enable_progress_bar=False)
    t_ready = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    t_fit = time.perf_counter()
    results = engine.test(model, datamodule=datamodule, verbose=False)
    t_test = time.perf_counter()
    if len(timer.seconds) != spec["epochs"]:
        raise RuntimeError(f"timed {len(timer.seconds)} training epochs, expected {spec['epochs']}")
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    write_json_atomic(Path(spec["work"]) / "timings.json", {
        "setup_s": t_ready - t_start, "fit_s": t_fit - t_ready, "test_s": t_test - t_fit,
        "epoch_s": timer.seconds, "epoch_mean_s": sum(timer.seconds) / len(timer.seconds),
        "torch_threads": torch.get_num_threads(), "metrics": metrics})
    return 0


def bench_job(args: argparse.Namespace) -> dict[str, Any]:
    """The whole job, interleaved round by round: wall clock per side, per training epoch, and
    our evaluate stage against ``Engine.test``."""
    from skrd4ad.data import DEFAULT_CLASSES, DEFECT_TYPES, generate

    cls = DEFAULT_CLASSES[0]  # the embedded default dataset's first class
    base = Path(tempfile.mkdtemp(prefix="bench_peer_job_"))
    try:
        sizes = ({"n_train": 8, "n_test_good": 4, "n_test_bad": len(DEFECT_TYPES)} if args.quick else {})
        generate(base / "data", [cls], image_size=args.size, **sizes)  # its own defaults otherwise
        spec = {"root": str(base / "data"), "class": cls, "defects": list(DEFECT_TYPES), "size": args.size,
                "batch": args.batch, "epochs": args.epochs, "threads": args.threads, "width": EQUAL_WIDTH,
                "anomalib_workers": args.anomalib_workers}
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "anomalib": []}
        calls = {"ours": 0, "anomalib": 0}

        def side(name: str, job) -> Any:
            def call() -> None:
                calls[name] += 1
                runs[name].append(job(spec, base / f"{name}_{calls[name]}"))
            return call

        loads, log_load = _load_log()

        def between(round_: int, name: str) -> None:  # untimed: the last job's files go, the load is logged
            for old in base.glob("*_[0-9]*"):
                shutil.rmtree(old, ignore_errors=True)
            log_load(round_, name)
            print(f"job round {round_ + 1}/{args.job_rounds}: {name} (load {loads[-1]})", flush=True)

        times, _ = interleaved({"ours": side("ours", ours_job), "anomalib": side("anomalib", anomalib_job)},
                               args.job_rounds, warmup=args.job_warmup, between=between)
        timed = {k: v[args.job_warmup:] for k, v in runs.items()}  # the warm-up rounds come first
        ours, peer = timed["ours"], timed["anomalib"]
        epoch_ours, epoch_peer = [r["epoch_mean_s"] for r in ours], [r["epoch_mean_s"] for r in peer]
        eval_ours, test_peer = [r["evaluate_s"] for r in ours], [r["test_s"] for r in peer]
        with_setup = [r["test_s"] + r["setup_s"] for r in peer]
        return {
            "what": (f"the same job on the embedded synthetic class {cls!r} ({spec['size']} px PNGs in MVTec layout, "
                     f"generated once, untimed): {ARCH}, random weights, {args.epochs} epochs, batch {args.batch}, "
                     f"float32, CPU, {args.threads} threads (OMP_NUM_THREADS and torch) on both sides, each side in "
                     "fresh processes. ours: the skrd4ad CLI, prepare (--val-fraction 0: trains on the same images "
                     "as anomalib) + train (rd4ad, --teacher-weights none, other settings at their defaults: "
                     "teacher cache auto, memory layout auto) + evaluate (--batch-size as training, default "
                     "figures), three processes, whole wall clock. anomalib: one process, Folder datamodule "
                     f"(train/eval batch {args.batch}, num_workers {args.anomalib_workers}, default splits: "
                     "validation = half of the test set, run after every epoch) + ReverseDistillation "
                     "(pre_trained=False, bottleneck rebuilt at our width 128) + Engine(max_epochs, "
                     "accelerator='cpu', enable_progress_bar=False) with its defaults otherwise (no logger, "
                     "its ModelCheckpoint, the model's default visualizer writing every test image), "
                     "Engine.fit then Engine.test; whole wall clock of the process"),
            "epoch_what": ("mean seconds per training epoch; ours from the training log (includes filling the "
                           "teacher cache in epoch 1), anomalib from a callback: the epoch's training batches "
                           "(data loading included), without the validation run after each epoch"),
            "evaluate_what": ("ours: the `skrd4ad evaluate` process (interpreter start, imports, checkpoint load, "
                              "maps, metrics, figures); anomalib: the Engine.test call alone (imports and model "
                              "setup are before it; with them: test_plus_setup)"),
            "spec": spec, "rounds": args.job_rounds, "warmup_rounds": args.job_warmup,
            "job_seconds": {k: side_summary(v) for k, v in times.items()},
            "anomalib_over_ours": ratio_summary(times["anomalib"], times["ours"]),
            "epoch_seconds": {"ours": side_summary(epoch_ours), "anomalib": side_summary(epoch_peer)},
            "epoch_anomalib_over_ours": ratio_summary(epoch_peer, epoch_ours),
            # without the first epoch (ours fills the teacher cache there): the epochs a longer run repeats
            "later_epochs_anomalib_over_ours": (ratio_summary([sum(r["epoch_s"][1:]) for r in peer],
                                                              [sum(r["epoch_s"][1:]) for r in ours])
                                                if args.epochs > 1 else None),
            "evaluate_seconds": {"ours_evaluate": side_summary(eval_ours), "anomalib_test": side_summary(test_peer)},
            "evaluate_anomalib_test_over_ours": ratio_summary(test_peer, eval_ours),
            "evaluate_anomalib_test_plus_setup_over_ours": ratio_summary(with_setup, eval_ours),
            "runs": timed, "loadavg_1min_before_each_timed_call": loads,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_peer.json"))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 px, batch 2, 1 round each (--job: 1 epoch on 8 training images)")
    parser.add_argument("--size", type=int, default=256, help="image side in px (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-rounds", type=int, default=None,
                        help="timed training rounds after 1 warm-up (default 3 on the CPU, 20 on CUDA)")
    parser.add_argument("--infer-rounds", type=int, default=None,
                        help="timed inference rounds after 1 warm-up (default 5 on the CPU, 30 on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--job", action="store_true",
                        help="also run the whole job (prepare + train + evaluate vs Engine.fit + Engine.test), CPU")
    parser.add_argument("--job-only", action="store_true", help="only the whole job (implies --job)")
    parser.add_argument("--job-rounds", type=int, default=3, help="timed whole-job rounds (default 3)")
    parser.add_argument("--job-warmup", type=int, default=1, help="untimed whole-job rounds first (default 1)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the whole job (default 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads of each whole-job side (default: this process's torch threads)")
    parser.add_argument("--anomalib-workers", type=int, default=8,
                        help="Folder's num_workers in the whole job (default 8: anomalib's own default)")
    parser.add_argument("--anomalib-job", type=Path, help=argparse.SUPPRESS)  # the anomalib side's process
    args = parser.parse_args(argv)
    if args.anomalib_job is not None:
        return _anomalib_child(args.anomalib_job)
    device = torch.device(args.device)
    args.job = args.job or args.job_only
    if args.quick:
        args.size, args.batch = 64, 2
        args.train_rounds, args.infer_rounds = args.train_rounds or 1, args.infer_rounds or 1
        args.job_rounds, args.job_warmup, args.epochs = 1, 0, 1
    cpu = device.type == "cpu"
    args.train_rounds = args.train_rounds or (3 if cpu else 20)
    args.infer_rounds = args.infer_rounds or (5 if cpu else 30)
    result: dict[str, Any] = {"benchmark": "bench_peer", "machine": machine(), "versions": _versions(),
                              "config": {k: str(v) for k, v in vars(args).items()}}

    an = _import_anomalib()
    if an is None:
        print(NOT_INSTALLED)
        write_result(args.out, dict(result, skipped=True, reason=NOT_INSTALLED))
        print(f"wrote {args.out}")
        return 0

    result.update(skipped=False, goals=[])
    if not args.job_only:
        torch.manual_seed(0)
        data = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8)
        if device.type == "cuda":
            data = data.pin_memory()
        result["setup"] = {
            "arch": ARCH, "variant": "rd4ad", "weights": "random (torch.manual_seed(0)); encoder and decoder weights "
            "shared by all sides, bottleneck shared at equal width", "image_size": args.size, "batch_size": args.batch,
            "dtype": "float32 (no autocast)", "input": "the same random uint8 batch (B, H, W, 3), converted by each "
            "side's own normalisation inside the timed call", "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "bottleneck_width": {"ours": EQUAL_WIDTH, "anomalib_equal_width": EQUAL_WIDTH, "anomalib_default": 64}}

        result["training"] = bench_training(an, args.size, args.batch, device, args.train_rounds, data)
        print(json.dumps({"training": {k: fmt_ratio(result["training"][f"{k}_over_ours"]) for k in SIDES[1:]},
                          "median_s": {k: round(v["median_s"], 3)
                                       for k, v in result["training"]["step_seconds"].items()}}), flush=True)
        result["inference"] = bench_inference(an, args.size, args.batch, device, args.infer_rounds, data)
        print(json.dumps({"inference": {k: fmt_ratio(result["inference"][f"{k}_over_ours"]) for k in SIDES[1:]},
                          "median_s": {k: round(v["median_s"], 3)
                                       for k, v in result["inference"]["batch_seconds"].items()}}), flush=True)
        for (part, peer), target in GOALS.items():
            result["goals"].append(_goal(f"{part} vs {peer}", result[part][f"{peer}_over_ours"], target))
    if args.job:
        job = result["job"] = bench_job(args)
        for name, key in (("whole job vs anomalib_equal_width", "anomalib_over_ours"),
                          ("training epoch (whole job) vs anomalib_equal_width", "epoch_anomalib_over_ours")):
            result["goals"].append(_goal(name, job[key], JOB_GOAL))
        print(f"{'evaluate vs Engine.test':52s}: {fmt_ratio(job['evaluate_anomalib_test_over_ours'])} "
              f"(with anomalib's imports and setup: {fmt_ratio(job['evaluate_anomalib_test_plus_setup_over_ours'])})")
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


def _goal(name: str, ratio: dict[str, Any], target: float) -> dict[str, Any]:
    met = ratio["median"] >= target
    print(f"{name:52s}: {fmt_ratio(ratio)} (goal >= {target}x: {'met' if met else 'NOT met'})", flush=True)
    return {"comparison": name, "target_ratio": target, "median": ratio["median"], "min": ratio["min"],
            "max": ratio["max"], "met": met}


if __name__ == "__main__":
    sys.exit(main())
