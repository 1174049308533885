"""Training: Adam over the student of the configured variant on a prepared class, resumable, seeded.

The variant (:mod:`skrd4ad.models.variants`) supplies the forward pass, the loss and its named
terms (the training-log columns, after ``epoch``), the parameter groups and how many batches
each optimiser step accumulates; this loop is the same for every variant.  The frozen teacher's
maps of the training images come from the per-job teacher cache (``train.teacher_cache``,
:mod:`skrd4ad.teacher_cache`), built before the first epoch of each run.

On CPU the same seed gives bitwise the same weights, also across a kill and resume: the
resume state holds the student, optimiser and both RNG states, and is written atomically every
``checkpoint_every`` epochs.  The reported model is the last epoch's (no model selection).

A resume state that cannot be read (empty, truncated, corrupt) is set aside as
``<name>.corrupt`` with a warning, and training starts again from epoch 0.  Progress: a tqdm bar
on a terminal, otherwise one INFO line per epoch (loss, seconds per epoch, ETA).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import DAMAGED_FILE_ERRORS, save_checkpoint, short_error
from .config import TrainConfig
from .data.prepared import PreparedClass, batch_from, iterate_batches, to_model_input
from .device import autocast, compile_for, memory_format_for, resolve_device, slow_bf16_warning
from .io import save_torch_atomic, write_text_atomic
from .models.fold import fold_batchnorm
from .models.build import build_model
from .models.rd4ad import ReverseDistillation
from .teacher_cache import open_cache

log = logging.getLogger(__name__)

STATE_FORMAT = "skrd4ad-train-state-v1"


@dataclass
class TrainResult:
    model_path: Path
    log_path: Path
    epochs_run: int
    resumed_from: int
    final_loss: float


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_log(path: Path, history: list[dict[str, float]], terms: tuple[str, ...]) -> None:
    """The TSV ``epoch, <terms>``: values only (no timings), so an identical rerun writes the same bytes."""
    columns = ("epoch", *terms)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.8g}" if k != "epoch" else int(row[k])) for k in columns})
    write_text_atomic(path, buf.getvalue())


def default_state_path(model_path: Path) -> Path:
    """Where the resume state of ``model_path`` lives (``<dir>/resume/<stem>.state.pt``)."""
    return model_path.parent / "resume" / f"{model_path.stem}.state.pt"


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def make_optimizer(model: ReverseDistillation, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """One Adam over the variant's parameter groups (``Variant.param_groups``; a group without its
    own ``lr`` gets the configured one) with the configured betas.

    Uses PyTorch's fused kernel on CPU and CUDA instead of its default per-tensor loop (CPU) or
    foreach (CUDA): training steps 1.05-1.18x faster on 2 CPU cores (``benchmarks/bench_optimizer.py``);
    it rounds differently from the loop, so weights differ in the last bits from runs made with
    the loop (runs of the same code stay bitwise reproducible)."""
    fused = True if device.type in ("cpu", "cuda") else None
    groups = model.plugin.param_groups(model.student, config)
    return torch.optim.Adam(groups, lr=config.lr, betas=config.betas, fused=fused)


def train_step(model: ReverseDistillation, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batch_uint8: torch.Tensor | None, config: TrainConfig,
               memory_format: torch.memory_format = torch.contiguous_format, *,
               zero_grad: bool = True, step: bool = True,
               teacher_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Forward, loss and backward on a uint8 batch ``(B, H, W, 3)``: gradients are cleared first
    when ``zero_grad`` (else added to), the optimiser steps when ``step``.  ``teacher_feats``: the
    batch's cached teacher maps (:meth:`TeacherCache.gather <skrd4ad.teacher_cache.TeacherCache.gather>`);
    the batch may then be None unless the variant ``needs_image_with_cache``.  Returns the
    detached loss terms ``(len(log_columns),)`` of the variant on the device (no host sync)."""
    variant = model.plugin
    device = next(model.student.parameters()).device
    x = None if batch_uint8 is None else to_model_input(batch_uint8, device).contiguous(memory_format=memory_format)
    with autocast(device, config.amp):
        if teacher_feats is None:
            outputs = variant.training_forward(model, x)
        else:
            outputs = variant.training_forward(model, x, teacher_feats)
    terms = variant.loss(outputs, config)
    columns = variant.log_columns(config)
    if set(terms) != set(columns):
        raise KeyError(f"variant {variant.name}: loss() returned terms {sorted(terms)} but log_columns() names "
                       f"{sorted(columns)}; make them the same")
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"]).backward()
    if step:
        scaler.step(optimizer)
        scaler.update()
    return torch.stack([terms[k].detach().reshape(()).float() for k in columns])


@dataclass
class _Run:
    """What a training run changes as it goes: the model and its optimiser state, the shuffle
    generator, the loss history, and the epoch it started from."""

    model: ReverseDistillation
    teacher_state: dict[str, torch.Tensor] | None  # a random teacher's weights, for the checkpoint
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    history: list[dict[str, float]]
    start: int = 0


def _fresh(config: TrainConfig, device: torch.device, memory_format: torch.memory_format) -> _Run:
    """Model, random-teacher weights, optimiser, scaler and shuffle generator at epoch 0 (seeded)."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, config.variant, teacher_weights=config.teacher_weights, settings=config.settings)
    # a random teacher cannot be rebuilt from a name: its (unfolded) weights go into the checkpoint
    teacher_state = model.teacher.state_dict() if config.teacher_weights is None else None  # folding
    # replaces the modules but leaves these tensors as they are
    fold_batchnorm(model.teacher)  # frozen and always in eval mode: ~1.5x faster steps on CPU
    model = model.to(device, memory_format=memory_format)
    if compile_for(config.compile, device):
        model.compile()  # in place: state_dict keys unchanged
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    return _Run(model, teacher_state, optimizer, scaler, torch.Generator().manual_seed(config.seed), [])


def _resume_or_start(config: TrainConfig, identity: dict[str, Any], state_path: Path, model_path: Path,
                     device: torch.device, memory_format: torch.memory_format) -> _Run:
    """A fresh run, or the one saved in ``state_path`` when it was made with the same ``identity``;
    a damaged state is set aside as ``.corrupt`` and the run starts fresh."""
    run = _fresh(config, device, memory_format)
    if not state_path.exists():
        return run
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a skrd4ad resume state (format {STATE_FORMAT})")
        if state.get("identity") != identity:
            log.warning("ignoring resume state %s: it was made by a different configuration or "
                        "dataset; starting from epoch 0", state_path)
            return run
        run.history = [dict(row) for row in state["history"]]
        run.start = int(state["epoch"])
        if not 0 < run.start <= config.epochs or len(run.history) != run.start:
            raise ValueError(f"epoch {run.start} with {len(run.history)} logged epochs")
        run.model.load_student_state_dict(state["student"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], run.gen, device)
        log.info("resuming %s from epoch %d/%d", model_path, run.start, config.epochs)
        return run
    except torch.cuda.OutOfMemoryError:
        raise
    except DAMAGED_FILE_ERRORS as exc:  # set aside, start again: the state only saves time
        corrupt = state_path.with_name(state_path.name + ".corrupt")
        os.replace(state_path, corrupt)
        log.warning("resume state %s is damaged (%s): moved it to %s and training %s from epoch 0 "
                    "(delete the .corrupt file when done looking at it)", state_path, short_error(exc), corrupt,
                    model_path)
        return _fresh(config, device, memory_format)  # nothing half-loaded


def _save_state(run: _Run, identity: dict[str, Any], state_path: Path, device: torch.device, epoch: int) -> None:
    save_torch_atomic({"format": STATE_FORMAT, "identity": identity, "epoch": epoch,
                       "student": run.model.student_state_dict(), "optimizer": run.optimizer.state_dict(),
                       "scaler": run.scaler.state_dict(), "rng": _rng_state(run.gen, device),
                       "history": run.history}, state_path)


def _run_epochs(run: _Run, config: TrainConfig, images: Any, stop: int, *, identity: dict[str, Any],
                device: torch.device, memory_format: torch.memory_format, model_path: Path, log_path: Path,
                state_path: Path, show: bool) -> None:
    """Epochs ``run.start + 1 .. stop``: the teacher cache filled first, one host sync per epoch,
    the loss log written after each and the resume state every ``checkpoint_every``."""
    n = len(images)
    terms = run.model.plugin.log_columns(config)
    accumulate = run.model.plugin.accumulate
    n_batches = math.ceil(n / config.batch_size)
    run_t0 = time.perf_counter()
    with open_cache(config.teacher_cache if run.start < stop else "off", run.model, images,
                    batch_size=config.batch_size, amp=config.amp, device=device, memory_format=memory_format,
                    out_path=model_path) as cache:
        need_images = cache is None or run.model.plugin.needs_image_with_cache
        run.model.train()
        epochs = tqdm(range(run.start, stop), initial=run.start, total=stop, desc="train", unit="epoch",
                      dynamic_ncols=True, disable=not show)
        for epoch in epochs:
            sums = torch.zeros(len(terms), device=device)  # the variant's loss terms, weighted by batch size
            for i, idx in enumerate(iterate_batches(n, config.batch_size, shuffle=True, generator=run.gen)):
                batch = batch_from(images, idx, pin_memory=device.type == "cuda") if need_images else None
                feats = cache.gather(idx) if cache is not None else None
                # with accumulate N: gradients summed over N batches (and the epoch's last few), then one step
                sums += train_step(run.model, run.optimizer, run.scaler, batch, config, memory_format,
                                   zero_grad=i % accumulate == 0, step=(i + 1) % accumulate == 0 or i + 1 == n_batches,
                                   teacher_feats=feats) * len(idx)
            means = (sums / n).tolist()  # one host sync per epoch
            if not all(math.isfinite(v) for v in means):
                raise FloatingPointError(f"training diverged at epoch {epoch + 1} of {model_path}: loss "
                                         f"{means[0]}; lower the learning rate (train.lr, --lr) or set amp to none")
            run.history.append({"epoch": epoch + 1, **dict(zip(terms, means, strict=True))})
            per_epoch = (time.perf_counter() - run_t0) / (epoch + 1 - run.start)
            if show:
                epochs.set_postfix(loss=f"{means[0]:.5f}", refresh=False)
            else:
                log.info("epoch %d/%d loss %.5f (%.1f s/epoch, ETA %s)", epoch + 1, config.epochs, means[0], per_epoch,
                         _duration(per_epoch * (stop - epoch - 1)))
            _write_log(log_path, run.history, terms)
            done = epoch + 1
            if done % config.checkpoint_every == 0 or done == stop:
                _save_state(run, identity, state_path, device, done)


def train(config: TrainConfig, data_dir: str | Path, model_path: str | Path, *,
          log_path: str | Path | None = None, state_path: str | Path | None = None,
          progress: bool | None = None, max_epochs_this_run: int | None = None) -> TrainResult:
    """Train on the prepared class in ``data_dir``; write the final checkpoint to ``model_path``
    and the per-epoch loss table (TSV) to ``log_path`` (default ``train_log.tsv`` beside it).

    Resumes from ``state_path`` (default :func:`default_state_path`) when it exists and was made
    by the same configuration and data; deletes it once the final model is written.
    ``max_epochs_this_run`` stops early after that many epochs (the state is kept): for tests
    and for splitting long runs into cluster jobs.
    """
    model_path = Path(model_path)
    log_path = Path(log_path) if log_path else model_path.with_name("train_log.tsv")
    state_path = Path(state_path) if state_path else default_state_path(model_path)
    show = sys.stderr.isatty() if progress is None else progress

    data = PreparedClass(data_dir)
    images = data.train_images
    if len(images) == 0:
        raise ValueError(f"{data_dir}: the prepared train set is empty; re-run prepare on a class with train/good images")
    identity = {"config": config.model_identity(), "data": data.meta.get("source_digest"),
                "image_size": data.image_size, "train_files": data.train_files_digest()}
    device = resolve_device(config.device)
    memory_format = memory_format_for(config.memory_format, device, config.arch, config.amp)
    if (warning := slow_bf16_warning(device, config.amp)) is not None:
        log.warning("%s", warning)

    run = _resume_or_start(config, identity, state_path, model_path, device, memory_format)
    stop = config.epochs if max_epochs_this_run is None else min(config.epochs, run.start + max_epochs_this_run)
    log.info("training %s (%s, %s teacher) on %s: %d train images at %d px, epochs %d-%d of %d, batch %d, "
             "device %s, %d threads, %s layout", model_path, config.variant, config.arch, data_dir, len(images),
             data.image_size, run.start + 1, stop, config.epochs, config.batch_size, device, torch.get_num_threads(),
             "channels_last" if memory_format == torch.channels_last else "contiguous")
    t0 = time.perf_counter()
    _run_epochs(run, config, images, stop, identity=identity, device=device, memory_format=memory_format,
                model_path=model_path, log_path=log_path, state_path=state_path, show=show)
    _finish(run, config, data, model_path, state_path, time.perf_counter() - t0)
    history = run.history
    return TrainResult(model_path=model_path, log_path=log_path, epochs_run=len(history) - run.start,
                       resumed_from=run.start, final_loss=history[-1]["loss"] if history else float("nan"))


def _finish(run: _Run, config: TrainConfig, data: PreparedClass, model_path: Path, state_path: Path,
            seconds: float) -> None:
    """After the last epoch: the checkpoint written and the resume state removed; otherwise say how to resume."""
    history = run.history
    if len(history) < config.epochs:
        log.info("stopped after epoch %d of %d; run again to resume from %s", len(history), config.epochs,
                 state_path)
        return
    save_checkpoint(model_path, run.model, config, data, history, teacher_state=run.teacher_state)
    state_path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state_path.parent.rmdir()
    log.info("wrote %s: %d epochs, final loss %.5f (this run: %d epochs in %s)", model_path, len(history),
             history[-1]["loss"], len(history) - run.start, _duration(seconds))
