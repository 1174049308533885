"""GPU readiness in one run (issue 14): throughput, latency, memory, jobs sharing a GPU, CPU/CUDA maps.

Sections, in this order (each writes its part of the JSON as soon as it is done):

``training``
    :func:`skrd4ad.train.train_step` images/s for RD4AD and SK-RD4AD (default wide_resnet50_2,
    256 px, batch 16), model set up as :func:`skrd4ad.train.train` does (teacher BatchNorm
    folded, channels_last, Adam over the student, uint8 batch from pinned host memory); sides
    ``fp32`` and ``bf16`` (autocast), and the same steps fed from the teacher cache
    (``fp32_cached``, ``bf16_cached``: the batch's maps gathered from a memory cache of that amp,
    :mod:`skrd4ad.teacher_cache`, the image not read) interleaved round by round on one model;
    ``bf16_speedup`` = per-round fp32 time / bf16 time, ``teacher_cache_speedup[amp]`` = per-round
    uncached / cached time.  Peak memory of one step per side.
``inference``
    :func:`skrd4ad.inference.predict_batch` (anomaly map, Gaussian blur, score) ms/image at
    batch 1/16/64 on the fully folded model as ``evaluate`` uses it; sides = variant x (fp32,
    bf16) interleaved per batch size; peak memory of one call per side.
``map_agreement``
    maps and scores of the same folded SK-RD4AD model on CUDA and on the CPU (fp32; cuDNN's
    TF32 setting as found, reported) agree within ``--map-rtol`` of the CPU map's maximum; bf16
    on the device vs CPU fp32 is reported, not checked.  Without CUDA this is CPU vs CPU (said so).
``concurrent_jobs``
    ``max(--jobs)`` training worker processes (SK-RD4AD, ``--jobs-amp``) are started, each
    pinned to the same GPU through ``CUDA_VISIBLE_DEVICES`` (as :mod:`skrd4ad.gpu_slots` pins a
    job), each with ``min(4, cpus // n)`` torch threads on CUDA (the Slurm profile's
    cpus_per_gpu), ``cpus // n`` on the CPU.  In each window the first ``n`` workers (n in
    ``--jobs``, default 1, 2, 4) train together for ``--window-s`` seconds from one start time;
    windows of different ``n`` are interleaved round by round after a short warm-up round.
    Per ``n``: aggregate images/s (sum over the jobs), per-job images/s, the per-round ratio of
    the aggregate to one job alone (``aggregate_vs_1_job``: above 1 means sharing the GPU gets
    more work done), each job's peak allocated memory and the device memory in use.
``compile``
    in a subprocess (killed when the time budget runs out; variants done so far are kept):
    ``torch.compile(model)`` (default mode) through the same ``train_step``, SK-RD4AD first, then
    RD4AD; ``compile_s`` = first compiled call minus the eager median step (the raw first and
    second call times beside it), then ``eager`` vs ``compiled`` interleaved at ``--compile-amp``
    (``compile_speedup`` = eager / compiled per round).

The teacher is random (``teacher_weights=None``): the numbers are for timing and device
agreement only; the work per image is the same as with ImageNet weights.

A total time budget (``--budget-s``, default 400 s; the run stays under 8 minutes on one GPU)
is shared out as cumulative section deadlines (training until 25 %, inference 40 %, map
agreement 45 %, concurrent jobs 75 %, compile the rest); a section past its deadline stops after
the current round and says so (``stopped_early``), a section that cannot start says
``skipped: <reason>``.  Timings use ``torch.cuda.synchronize`` before starting and before
stopping the clock; peak memory is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` (CUDA only; on the CPU the process's peak RSS is given instead).

    python benchmarks/gpu_check.py                         # on a GPU: under 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick    # the same code paths, tiny: about 1 min on 2 busy cores
    python benchmarks/gpu_check.py --only concurrent_jobs  # one section again (the others: skipped)

``--quick`` uses resnet18 at 64 px, batch 2, 1 timed round, inference batches 1/2/4, 1 and 2
concurrent jobs; on the CPU ``torch.compile`` is skipped unless ``--compile on`` (inductor's C++
build of a training graph takes minutes there).  Unmeasured on a GPU so far: no GPU was available
when this script was written; the JSON's ``machine.cuda`` says where a result comes from.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import machine, ratio_summary, side_summary, write_result
from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.inference import predict_batch
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.build import build_model
from skrd4ad.teacher_cache import open_cache
from skrd4ad.train import make_optimizer, train_step

#: Prefix of the protocol lines a worker writes on stdout (anything else there is ignored).
MARK = "GPUCHECK "
VARIANTS = ("rd4ad", "skrd4ad")
AMP_NAMES = {"fp32": "none", "bf16": "bf16"}  # side name -> TrainConfig/EvalConfig amp
TEACHER_NOTE = "random (teacher_weights=None): timing and device agreement only; same work per image as ImageNet weights"
#: Cumulative share of the budget at which each section's deadline falls.
SHARES = {"training": 0.25, "inference": 0.40, "map_agreement": 0.45, "concurrent_jobs": 0.75, "compile": 1.0}
MIB = 2.0 ** 20

FULL = {"arch": "wide_resnet50_2", "size": 256, "batch": 16, "train_rounds": 10, "steps_per_round": 5,
        "infer_batches": [1, 16, 64], "infer_rounds": 10, "agreement_images": 4, "jobs": [1, 2, 4],
        "window_s": 8.0, "warmup_window_s": 3.0, "job_rounds": 3, "job_warmup_steps": 3,
        "compile_rounds": 10, "budget_s": 400.0}
QUICK = {"arch": "resnet18", "size": 64, "batch": 2, "train_rounds": 1, "steps_per_round": 1,
         "infer_batches": [1, 2, 4], "infer_rounds": 1, "agreement_images": 2, "jobs": [1, 2],
         "window_s": 1.0, "warmup_window_s": 0.3, "job_rounds": 1, "job_warmup_steps": 0,
         "compile_rounds": 2, "budget_s": 240.0}


# --------------------------------------------------------------------------- helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def value_summary(values: list[float]) -> dict[str, Any]:
    """Median, min and max of per-round values (not seconds), and every round."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": list(values)}


def peak_memory(device: torch.device, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` once and return the CUDA allocator's peak during it (MiB), with what was
    allocated before (model, optimiser state, inputs) and the reserved peak."""
    if device.type != "cuda":  # fn is not run: on the CPU it would only be one more warm-up call
        return {"skipped": "peak memory is measured on CUDA only (torch.cuda.max_memory_allocated)"}
    free_memory(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated(device) / MIB,
            "allocated_before_mib": before / MIB,
            "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / MIB}


def timed_rounds(sides: Mapping[str, Callable[[], Any]], rounds: int, *, deadline: float,
                 device: torch.device, warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """``_common.interleaved`` with a deadline (``time.monotonic()``): every side once per round,
    the order alternating between rounds, after ``warmup`` untimed rounds, the clock started and
    stopped after a device sync.  Stops before a round that would start past ``deadline``, but
    always times at least one round.  Returns ({side: [seconds per round]}, round bookkeeping)."""
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    done = 0
    for r in range(-warmup, rounds):
        if r >= 1 and time.monotonic() > deadline:
            break
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            sides[name]()
            sync(device)
            if r >= 0:
                times[name].append(time.perf_counter() - t0)
        done += r >= 0
    info = {"rounds_planned": rounds, "rounds_done": done,
            "stopped_early": None if done == rounds else f"time budget: {done} of {rounds} rounds done"}
    return times, info


def train_setup(arch: str, variant: str, size: int, batch: int, device: torch.device, seed: int = 0):
    """Model, optimiser, scaler and a uint8 batch, as :func:`skrd4ad.train.train` sets them up."""
    torch.manual_seed(seed)
    model = build_model(arch, variant, teacher_weights=None)
    fold_batchnorm(model.teacher)  # as train() does
    config = TrainConfig(arch=arch, teacher_weights=None)
    model = model.to(device).to(memory_format=torch.channels_last).train()  # what auto picks on a GPU
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # only fp16 uses one
    data = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))
    if device.type == "cuda":
        data = data.pin_memory()
    return model, optimizer, scaler, data


def train_config(arch: str, variant: str, amp: str, device: torch.device) -> TrainConfig:
    return TrainConfig(arch=arch, variant=variant, teacher_weights=None, amp=amp, device=str(device))


def eval_model(arch: str, variant: str, device: torch.device, seed: int = 0):
    """The fully folded eval-mode model, as :func:`skrd4ad.evaluate.evaluate` uses it."""
    torch.manual_seed(seed)
    model = build_model(arch, variant, teacher_weights=None).eval()
    fold_batchnorm(model)
    return model.to(device).to(memory_format=torch.channels_last)


def device_identity(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": "cpu"}
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    return {"type": "cuda", "name": props.name, "uuid": str(uuid) if uuid is not None else None,
            "total_mib": props.total_memory / MIB}


def emit(obj: Mapping[str, Any]) -> None:
    """A worker's protocol line."""
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- sections

def _train_variant(s: dict, variant: str, device: torch.device, deadline: float) -> dict[str, Any]:
    model, optimizer, scaler, data = train_setup(s["arch"], variant, s["size"], s["batch"], device)
    configs = {side: train_config(s["arch"], variant, amp, device) for side, amp in AMP_NAMES.items()}
    last: dict[str, torch.Tensor] = {}
    idx = np.arange(s["batch"], dtype=np.int64)
    caches = {}
    for side, amp in AMP_NAMES.items():  # the batch's maps, as train() keeps them under this amp
        with open_cache("memory", model, data.numpy(), batch_size=s["batch"], amp=amp, device=device,
                        memory_format=torch.channels_last, out_path=Path("unused.pt")) as cache:
            caches[side] = cache

    def steps(side: str, n: int) -> None:
        amp_side = side.removesuffix("_cached")
        cache = caches[amp_side] if side.endswith("_cached") else None
        for _ in range(n):
            feats = cache.gather(idx) if cache is not None else None
            last[side] = train_step(model, optimizer, scaler, data if cache is None else None, configs[amp_side],
                                    torch.channels_last, teacher_feats=feats)

    sides = [*configs, *(f"{side}_cached" for side in configs)]
    memory = {side: peak_memory(device, lambda side=side: steps(side, 1)) for side in sides}
    times, info = timed_rounds({side: (lambda side=side: steps(side, s["steps_per_round"])) for side in sides},
                               s["train_rounds"], deadline=deadline, device=device)
    per_step = {k: [t / s["steps_per_round"] for t in v] for k, v in times.items()}
    summaries = {k: side_summary(v) for k, v in per_step.items()}
    return {"variant": variant, **info,
            "step_seconds": summaries,
            "images_per_s_of_median_step": {k: s["batch"] / v["median_s"] for k, v in summaries.items()},
            "bf16_speedup": ratio_summary(per_step["fp32"], per_step["bf16"]),
            "teacher_cache_speedup": {side: ratio_summary(per_step[side], per_step[f"{side}_cached"])
                                      for side in configs},
            "teacher_cache_mb": {side: c.nbytes / 1e6 for side, c in caches.items()},
            "losses_finite": {k: bool(torch.isfinite(v).all()) for k, v in last.items()},
            "peak_memory": memory}


def section_training(s: dict, device: torch.device, deadline: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": "train_step images/s, model as train() sets it up (teacher BatchNorm folded, channels_last, "
                "Adam over the student, uint8 batch from pinned host memory); fp32 and bf16 autocast "
                "interleaved on one model; a round is steps_per_round steps",
        "arch": s["arch"], "image_size": s["size"], "batch_size": s["batch"],
        "steps_per_round": s["steps_per_round"], "teacher": TEACHER_NOTE, "results": []}
    for variant in VARIANTS:
        if time.monotonic() > deadline and out["results"]:
            out["results"].append({"variant": variant, "skipped": "time budget: the section's deadline passed"})
            continue
        out["results"].append(_train_variant(s, variant, device, deadline))
        free_memory(device)  # the variant's model and optimiser went with the function's frame
    return out


def _infer_batch(s: dict, models: Mapping[str, torch.nn.Module], batch: int, device: torch.device,
                 deadline: float) -> dict[str, Any]:
    settings = {side: EvalConfig(amp=amp) for side, amp in AMP_NAMES.items()}
    data = torch.randint(0, 256, (batch, s["size"], s["size"], 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(batch))
    if device.type == "cuda":
        data = data.pin_memory()
    sides = {f"{v}_{side}": (lambda m=models[v], c=settings[side]: predict_batch(m, data, c))
             for v in VARIANTS for side in settings}
    memory = {name: peak_memory(device, fn) for name, fn in sides.items()}
    times, info = timed_rounds(sides, s["infer_rounds"], deadline=deadline, device=device)
    summaries = {k: side_summary(v) for k, v in times.items()}
    return {"batch_size": batch, **info, "call_seconds": summaries,
            "ms_per_image_of_median": {k: 1000 * v["median_s"] / batch for k, v in summaries.items()},
            "bf16_speedup": {v: ratio_summary(times[f"{v}_fp32"], times[f"{v}_bf16"]) for v in VARIANTS},
            "peak_memory": memory}


def section_inference(s: dict, device: torch.device, deadline: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": "predict_batch (anomaly map + Gaussian blur + score) ms/image on the fully folded model, "
                "sides variant x (fp32, bf16) interleaved per batch size; a round is one call",
        "arch": s["arch"], "image_size": s["size"], "teacher": TEACHER_NOTE, "results": []}
    models = {v: eval_model(s["arch"], v, device) for v in VARIANTS}
    for batch in s["infer_batches"]:
        if time.monotonic() > deadline and out["results"]:
            out["results"].append({"batch_size": batch, "skipped": "time budget: the section's deadline passed"})
            continue
        out["results"].append(_infer_batch(s, models, batch, device, deadline))
    del models
    free_memory(device)
    return out


def _compare_maps(ref: tuple[torch.Tensor, torch.Tensor], got: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    ref_maps, ref_scores = (t.float().cpu() for t in ref)
    maps, scores = (t.float().cpu() for t in got)
    scale = float(ref_maps.abs().max())
    diff = (maps - ref_maps).abs()
    return {"map_max_abs_diff": float(diff.max()), "map_mean_abs_diff": float(diff.mean()),
            "cpu_map_max": scale, "map_max_rel_diff": float(diff.max()) / scale if scale > 0 else math.inf,
            "score_max_rel_diff": float(((scores - ref_scores).abs() / ref_scores.abs().clamp_min(1e-12)).max()),
            "all_finite": bool(torch.isfinite(maps).all() and torch.isfinite(scores).all())}


def section_map_agreement(s: dict, device: torch.device, rtol: float) -> dict[str, Any]:
    model = eval_model(s["arch"], "skrd4ad", torch.device("cpu"))
    cpu_model = copy.deepcopy(model)
    dev_model = model.to(device)
    images = torch.randint(0, 256, (s["agreement_images"], s["size"], s["size"], 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(7))
    ref = predict_batch(cpu_model, images, EvalConfig(amp="none"))
    fp32 = _compare_maps(ref, predict_batch(dev_model, images, EvalConfig(amp="none")))
    bf16 = _compare_maps(ref, predict_batch(dev_model, images, EvalConfig(amp="bf16")))
    ok = fp32["all_finite"] and fp32["map_max_rel_diff"] <= rtol and fp32["score_max_rel_diff"] <= rtol
    out: dict[str, Any] = {
        "what": f"maps and scores of one folded SK-RD4AD model ({s['agreement_images']} random images), "
                f"{device.type} fp32 vs CPU fp32: max |diff| / max |CPU map| and max score relative diff "
                f"<= rtol; {device.type} bf16 vs CPU fp32 reported, not checked",
        "arch": s["arch"], "image_size": s["size"], "teacher": TEACHER_NOTE, "rtol": rtol,
        "reference": "cpu", "compared": str(device), "fp32": fp32, "bf16_info_only": bf16, "agree": ok}
    if device.type == "cuda":
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        out["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    else:
        out["degenerate"] = "no CUDA device: CPU vs CPU (same code path, checks the comparison only)"
    del model, cpu_model, dev_model
    free_memory(device)
    return out


# --------------------------------------------------------------------------- worker processes

def pinned_visible_id(device: torch.device) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` entry that names ``device`` (so a child sees only it, as cuda:0)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else []
    return ids[index] if ids else str(index)


class Worker:
    """A ``gpu_check.py --worker`` subprocess; its protocol lines arrive on a queue."""

    def __init__(self, spec: dict[str, Any], device: torch.device, log_path: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        visible = pinned_visible_id(device)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible  # every worker on the same GPU
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     bufsize=1, env=env, start_new_session=True)  # its own process group
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(json.loads(line[len(MARK):]))
        self.lines.put(None)

    def send(self, obj: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            msg = self.lines.get(timeout=max(timeout, 0.1))
        except queue.Empty:
            raise TimeoutError(f"worker {self.proc.pid} sent nothing for {timeout:.0f} s") from None
        if msg is None:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"worker {self.proc.pid} exited with {self.proc.returncode}: {self.stderr_tail()}")
        if "error" in msg:
            raise RuntimeError(f"worker {self.proc.pid}: {msg['error']}")
        return msg

    def kill(self) -> None:
        """Kill the worker and anything it started (e.g. inductor's compile processes)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stderr_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self, wait: float = 30) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def _threads_per_job(device: torch.device, n: int) -> int:
    cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // n)) if device.type == "cuda" else max(1, cpus // n)


def section_concurrent_jobs(s: dict, device: torch.device, deadline: float, tmp: Path) -> dict[str, Any]:
    jobs = sorted(set(s["jobs"]))
    amp = s["jobs_amp"]
    out: dict[str, Any] = {
        "what": "n training processes (SK-RD4AD, train_step in a loop) on one device at once, each pinned to it "
                "through CUDA_VISIBLE_DEVICES (default time-slicing, no MPS); every window runs n jobs together "
                "for window_s from one start time; aggregate = sum of the jobs' images/s; windows of different n "
                "interleaved by round; device_used_mib counts every process on the GPU (this script's CUDA context too)",
        "arch": s["arch"], "image_size": s["size"], "batch_size": s["batch"], "amp": amp, "variant": "skrd4ad",
        "window_s": s["window_s"], "teacher": TEACHER_NOTE,
        "threads_per_job": {str(n): _threads_per_job(device, n) for n in jobs},
        "cuda_visible_devices_of_jobs": pinned_visible_id(device)}
    spec = {"mode": "train", "device": "cuda:0" if device.type == "cuda" else "cpu", "arch": s["arch"],
            "variant": "skrd4ad", "size": s["size"], "batch": s["batch"], "amp": amp,
            "warmup_steps": s["job_warmup_steps"], "threads": _threads_per_job(device, max(jobs))}
    workers = [Worker(spec, device, tmp / f"job{i}.log") for i in range(max(jobs))]
    try:
        t0 = time.monotonic()
        ready = [w.receive(deadline - time.monotonic() + 60) for w in workers]
        out["start_s"] = time.monotonic() - t0
        out["job_devices"] = [r["device"] for r in ready]
        out["same_device"] = all(r["device"] == device_identity(device) for r in ready)  # and the parent's
        if device.type == "cuda" and not out["same_device"]:
            raise RuntimeError(f"the jobs did not all get one GPU: {out['job_devices']}")

        def window(n: int, seconds: float) -> list[dict[str, Any]]:
            start_at = time.time() + 0.2 + 0.02 * n
            for w in workers[:n]:
                w.send({"cmd": "run", "start_at": start_at, "seconds": seconds,
                        "threads": _threads_per_job(device, n)})
            return [w.receive(seconds * 10 + 120) for w in workers[:n]]

        rows: dict[int, list[list[dict[str, Any]]]] = {n: [] for n in jobs}
        done = 0
        for r in range(-1, s["job_rounds"]):
            if r >= 1 and time.monotonic() > deadline:
                break
            order = jobs if r % 2 == 0 else jobs[::-1]
            for n in order:
                replies = window(n, s["warmup_window_s"] if r < 0 else s["window_s"])
                if r >= 0:
                    rows[n].append(replies)
            done += r >= 0
        out.update(rounds_planned=s["job_rounds"], rounds_done=done,
                   stopped_early=None if done == s["job_rounds"] else
                   f"time budget: {done} of {s['job_rounds']} rounds done")
        aggregate = {n: [sum(j["images_per_s"] for j in rnd) for rnd in rows[n]] for n in jobs}
        results = []
        for n in jobs:
            replies = [j for rnd in rows[n] for j in rnd]
            overlap = []
            for rnd in rows[n]:
                span = max(j["t_end"] for j in rnd) - min(j["t_start"] for j in rnd)
                common = min(j["t_end"] for j in rnd) - max(j["t_start"] for j in rnd)
                overlap.append(common / span if span > 0 else 1.0)
            row: dict[str, Any] = {
                "jobs": n, "aggregate_images_per_s": value_summary(aggregate[n]),
                "per_job_images_per_s": value_summary([j["images_per_s"] for j in replies]),
                "steps_per_job": [j["steps"] for j in replies],
                "overlap_fraction_min": min(overlap),
                "losses_finite": all(j["loss_finite"] for j in replies)}
            if 1 in jobs and n != 1:
                row["aggregate_vs_1_job"] = ratio_summary(aggregate[n], aggregate[1])
            if device.type == "cuda":
                row["peak_allocated_mib_per_job_max"] = max(j["peak_allocated_mib"] for j in replies)
                row["device_used_mib_max"] = max(j["device_used_mib"] for j in replies)
            else:
                row["peak_memory"] = {"skipped": "peak memory is measured on CUDA only"}
            results.append(row)
        out["results"] = results
    except Exception as exc:
        tails = {f"job{i}": w.stderr_tail() for i, w in enumerate(workers) if w.stderr_tail()}
        raise RuntimeError(f"{exc}; worker stderr: {json.dumps(tails)[-4000:]}") from exc
    finally:
        for w in workers:
            w.close()
    return out


def section_compile(s: dict, device: torch.device, deadline: float, tmp: Path) -> dict[str, Any]:
    amp = s["compile_amp"]
    out: dict[str, Any] = {
        "what": f"torch.compile(model, backend={s['compile_backend']!r}) (default mode) trained through the same train_step, in a subprocess on the "
                "same device; compile_s = first compiled call - eager median step; then eager vs compiled "
                f"interleaved at amp {amp}; compile_speedup = eager / compiled step time per round",
        "arch": s["arch"], "image_size": s["size"], "batch_size": s["batch"], "amp": amp,
        "backend": s["compile_backend"], "steps_per_round": s["steps_per_round"], "teacher": TEACHER_NOTE,
        "results": []}
    spec = {"mode": "compile", "device": "cuda:0" if device.type == "cuda" else "cpu", "arch": s["arch"],
            "variants": ["skrd4ad", "rd4ad"], "size": s["size"], "batch": s["batch"], "amp": amp,
            "backend": s["compile_backend"],
            "rounds": s["compile_rounds"], "steps_per_round": s["steps_per_round"],
            "threads": torch.get_num_threads(), "deadline_wall": time.time() + (deadline - time.monotonic())}
    worker = Worker(spec, device, tmp / "compile.log")
    t0 = time.monotonic()
    try:
        while True:
            try:
                msg = worker.receive(deadline - time.monotonic())
            except TimeoutError:
                out["stopped_early"] = (f"time budget: killed after {time.monotonic() - t0:.0f} s with "
                                        f"{len(out['results'])} of {len(spec['variants'])} variants done")
                worker.kill()
                break
            if msg.get("done"):
                break
            out["results"].append(msg)
            if any(r.get("stopped_early") for r in out["results"]):
                out["stopped_early"] = "time budget: the compiled side stopped before all rounds"
        out.setdefault("stopped_early", None)
        if not out["results"]:  # the budget ran out during the first compile (a failure raises above)
            return {"skipped": out["stopped_early"] or "the compile worker sent no result", **out}
    finally:
        worker.close(wait=10)
    return out


def worker_main(spec: dict[str, Any]) -> None:
    """Body of a ``--worker`` subprocess: training jobs for ``concurrent_jobs``, or ``compile``."""
    try:
        device = torch.device(spec["device"])
        torch.set_num_threads(spec["threads"])
        if spec["mode"] == "train":
            _worker_train(spec, device)
        elif spec["mode"] == "compile":
            threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
            _worker_compile(spec, device)
        else:
            raise ValueError(f"unknown worker mode {spec['mode']!r}")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the section
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)


def _exit_when_parent_goes() -> None:
    """The compile worker reads nothing from stdin: end it when the parent closes it (exits or dies)."""
    sys.stdin.read()
    os._exit(3)


def _worker_train(spec: dict[str, Any], device: torch.device) -> None:
    model, optimizer, scaler, data = train_setup(spec["arch"], spec["variant"], spec["size"], spec["batch"], device,
                                                 seed=os.getpid() % 1000)
    config = train_config(spec["arch"], spec["variant"], spec["amp"], device)
    losses = None
    for _ in range(spec["warmup_steps"]):
        losses = train_step(model, optimizer, scaler, data, config, torch.channels_last)
    sync(device)
    emit({"ready": True, "pid": os.getpid(), "device": device_identity(device),
          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            return
        torch.set_num_threads(cmd["threads"])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        delay = cmd["start_at"] - time.time()
        if delay > 0:
            time.sleep(delay)
        sync(device)
        wall0, t0, steps = time.time(), time.perf_counter(), 0
        while True:  # no sync per step: the final sync waits for every step issued
            losses = train_step(model, optimizer, scaler, data, config, torch.channels_last)
            steps += 1
            if time.perf_counter() - t0 >= cmd["seconds"]:
                break
        sync(device)
        elapsed = time.perf_counter() - t0
        reply: dict[str, Any] = {"steps": steps, "seconds": elapsed, "images_per_s": steps * spec["batch"] / elapsed,
                                 "t_start": wall0, "t_end": time.time(),
                                 "loss_finite": bool(losses is not None and torch.isfinite(losses).all())}
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            reply.update(peak_allocated_mib=torch.cuda.max_memory_allocated(device) / MIB,
                         device_used_mib=(total - free) / MIB)
        emit(reply)


def _compile_variant(spec: dict[str, Any], variant: str, device: torch.device, deadline: float) -> dict[str, Any]:
    steps_per_round = spec["steps_per_round"]
    model, optimizer, scaler, data = train_setup(spec["arch"], variant, spec["size"], spec["batch"], device)
    config = train_config(spec["arch"], variant, spec["amp"], device)
    compiled = torch.compile(model, backend=spec["backend"])
    last: dict[str, torch.Tensor] = {}

    def step(side: str, net: torch.nn.Module, n: int = 1) -> None:
        for _ in range(n):
            last[side] = train_step(net, optimizer, scaler, data, config, torch.channels_last)  # type: ignore[arg-type]

    step("eager", model)  # Adam's state and the eager kernels exist before the compiled call is timed
    calls = []
    for _ in range(2):  # the first call compiles (forward and backward graphs); the second should not
        sync(device)
        t0 = time.perf_counter()
        step("compiled", compiled)
        sync(device)
        calls.append(time.perf_counter() - t0)
    times, info = timed_rounds({"eager": lambda: step("eager", model, steps_per_round),
                                "compiled": lambda: step("compiled", compiled, steps_per_round)},
                               spec["rounds"], deadline=deadline, device=device)
    per_step = {k: [t / steps_per_round for t in v] for k, v in times.items()}
    summaries = {k: side_summary(v) for k, v in per_step.items()}
    return {"variant": variant, **info, "first_call_s": calls[0], "second_call_s": calls[1],
            "compile_s": calls[0] - summaries["eager"]["median_s"], "step_seconds": summaries,
            "images_per_s_of_median_step": {k: spec["batch"] / v["median_s"] for k, v in summaries.items()},
            "compile_speedup": ratio_summary(per_step["eager"], per_step["compiled"]),
            "losses_finite": {k: bool(torch.isfinite(v).all()) for k, v in last.items()}}


def _worker_compile(spec: dict[str, Any], device: torch.device) -> None:
    deadline = time.monotonic() + (spec["deadline_wall"] - time.time())
    for variant in spec["variants"]:
        emit(_compile_variant(spec, variant, device, deadline))
        free_memory(device)
        if time.monotonic() > deadline:
            break
    emit({"done": True})


# --------------------------------------------------------------------------- main

def _settings(args: argparse.Namespace) -> dict[str, Any]:
    s = dict(QUICK if args.quick else FULL)
    for key in ("arch", "size", "batch", "budget_s", "window_s"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.jobs is not None:
        s["jobs"] = [int(n) for n in args.jobs.split(",")]
    s["jobs_amp"] = args.jobs_amp
    s["compile_amp"] = args.compile_amp
    s["compile_backend"] = args.compile_backend
    return s


def _peak_memory_table(sections: Mapping[str, Any]) -> dict[str, Any]:
    """Every peak-memory figure of the run in one place (MiB of torch.cuda.max_memory_allocated)."""
    table: dict[str, Any] = {}
    for row in sections.get("training", {}).get("results", []):
        for side, mem in row.get("peak_memory", {}).items():
            if "peak_allocated_mib" in mem:
                table[f"train_{row['variant']}_{side}"] = mem["peak_allocated_mib"]
    for row in sections.get("inference", {}).get("results", []):
        for side, mem in row.get("peak_memory", {}).items():
            if "peak_allocated_mib" in mem:
                table[f"infer_b{row['batch_size']}_{side}"] = mem["peak_allocated_mib"]
    for row in sections.get("concurrent_jobs", {}).get("results", []):
        if "device_used_mib_max" in row:
            table[f"jobs{row['jobs']}_device_used"] = row["device_used_mib_max"]
    return table


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings, the same code paths (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu_check.json"))
    parser.add_argument("--budget-s", dest="budget_s", type=float, default=None,
                        help="total time budget in seconds (default 400; 240 with --quick)")
    parser.add_argument("--arch", default=None, help="teacher (default wide_resnet50_2; resnet18 with --quick)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 256; 64 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 16; 2 with --quick)")
    parser.add_argument("--jobs", default=None, help="concurrent job counts, comma-separated (default 1,2,4; 1,2 quick)")
    parser.add_argument("--window-s", dest="window_s", type=float, default=None,
                        help="seconds each concurrent-jobs window trains (default 8; 1 with --quick)")
    parser.add_argument("--jobs-amp", dest="jobs_amp", choices=["none", "bf16"], default="none",
                        help="precision of the concurrent jobs (default none: params.yaml's train.amp)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile section: auto = on CUDA only (minutes of C++ build on a CPU)")
    parser.add_argument("--compile-amp", dest="compile_amp", choices=["none", "bf16"], default="bf16")
    parser.add_argument("--compile-backend", dest="compile_backend", default="inductor",
                        help="torch.compile backend (default inductor; aot_eager checks the section's plumbing fast)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated sections to run (default all: {','.join(SHARES)}); the others are skipped")
    parser.add_argument("--map-rtol", dest="map_rtol", type=float, default=2e-2,
                        help="CUDA vs CPU map tolerance, relative to the CPU map's maximum (default 0.02: TF32 convs)")
    args = parser.parse_args(argv)
    only = set(SHARES) if args.only is None else {x.strip() for x in args.only.split(",") if x.strip()}
    if only - set(SHARES):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(only - set(SHARES)))}; choose from {', '.join(SHARES)}")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available")
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    s = _settings(args)
    start = time.monotonic()
    deadlines = {name: start + share * s["budget_s"] for name, share in SHARES.items()}
    result: dict[str, Any] = {
        "benchmark": "gpu_check", "machine": machine(), "config": {k: str(v) for k, v in vars(args).items()},
        "settings": s, "device": device_identity(device), "teacher": TEACHER_NOTE,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "budget": {"budget_s": s["budget_s"], "section_deadlines_s": {k: v - start for k, v in deadlines.items()}},
        "sections": {}, "errors": []}
    compile_skip = None
    if args.compile == "off":
        compile_skip = "--compile off"
    elif args.compile == "auto" and device.type != "cuda":
        compile_skip = ("torch.compile on the CPU: inductor's C++ build of the training graphs takes minutes; "
                        "measured on CUDA only (pass --compile on to force it)")

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp_name:  # worker logs
        tmp = Path(tmp_name)
        sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("training", lambda: section_training(s, device, deadlines["training"])),
            ("inference", lambda: section_inference(s, device, deadlines["inference"])),
            ("map_agreement", lambda: section_map_agreement(s, device, args.map_rtol)),
            ("concurrent_jobs", lambda: section_concurrent_jobs(s, device, deadlines["concurrent_jobs"], tmp)),
            ("compile", lambda: ({"skipped": compile_skip} if compile_skip else
                                 section_compile(s, device, deadlines["compile"], tmp))),
        ]
        for name, run in sections:
            t0 = time.monotonic()
            if name not in only:
                result["sections"][name] = {"skipped": "not selected (--only)"}
            elif t0 > start + s["budget_s"]:
                result["sections"][name] = {"skipped": f"time budget of {s['budget_s']:.0f} s used up before this section"}
            else:
                try:
                    result["sections"][name] = run()
                except Exception as exc:  # noqa: BLE001 - keep the other sections' numbers; exit status 1
                    traceback.print_exc()
                    result["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                    result["errors"].append(name)
                result["sections"][name]["section_s"] = time.monotonic() - t0
            print(json.dumps({"section": name, "seconds": round(time.monotonic() - t0, 1),
                              "status": _status(result["sections"][name])}), flush=True)
            result["budget"]["elapsed_s"] = time.monotonic() - start
            result["budget"]["stopped_early"] = [k for k, v in result["sections"].items()
                                                 if v.get("stopped_early") or "time budget" in str(v.get("skipped", ""))]
            result["peak_memory_mib"] = (_peak_memory_table(result["sections"]) if device.type == "cuda" else
                                         {"skipped": "CUDA only", "process_peak_rss_mib": rss_mib()})
            write_result(args.out, result)  # after every section: a killed run keeps what it measured
    print(f"wrote {args.out} in {time.monotonic() - start:.1f} s")
    return 1 if result["errors"] else 0


def _status(section: Mapping[str, Any]) -> str:
    if "error" in section:
        return "error: " + section["error"][:200]
    if "skipped" in section:
        return "skipped: " + section["skipped"]
    return "stopped early: " + section["stopped_early"] if section.get("stopped_early") else "ok"


if __name__ == "__main__":
    sys.exit(main())
