"""The frozen teacher's maps of the training images, computed once per job (``train.teacher_cache``).

RD4AD-style training sees each training image unaltered every epoch and the teacher is frozen
(BatchNorm folded, eval mode), so its maps of an image never change: :func:`open_cache` runs the
teacher once over the prepared train images, in fixed batches of ``batch_size`` in file order, and
keeps the maps per stage; each step then gathers its batch's maps by index
(:meth:`TeacherCache.gather`) and the variant runs only the student and the loss
(``Variant.training_forward(model, x, teacher_feats)``).  Nothing here draws random numbers, so
the training RNG stream is the same with and without the cache.

Where the maps live (``mode``):

- ``memory``: on the training device in the dtype the teacher computes under the configured
  autocast (float32, or bf16/fp16 under ``amp``);
- ``disk``: one memory-mapped file per stage in a staging folder beside the model output
  (:class:`~skrd4ad.io.StagingDir`, kind ``teacher-cache``): preallocated (a full disk fails
  before the teacher runs, never as SIGBUS), removed when training ends, and a folder left by a
  killed run is removed by the next training of the same output;
- ``off``: the teacher runs every step (as before the cache existed).

``auto`` picks ``memory`` when the maps fit :func:`memory_budget` (a fraction
:data:`MEMORY_FRACTION` of the host's available memory, or of the GPU's free memory after the
model is placed), else ``disk`` when the output folder's file system has room
(:func:`disk_budget`: free bytes less :func:`~skrd4ad.io.space_margin`), else ``off``; also
``off`` when the variant cannot use it (``Variant.uses_teacher_cache``).  One INFO line says
what was chosen and why, with the sizes.  Sizes: wide_resnet50_2 at 256 px is about 7.3 MB of
float32 maps per image, mobilenet_v2 at 256 px about 1.3 MB.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from .data.prepared import batch_from, to_model_input
from .device import autocast
from .io import StagingDir, check_free_space, clean_stale_staging, disk_full_as_error, format_mb, space_margin

if TYPE_CHECKING:  # pragma: no cover
    from .models.rd4ad import ReverseDistillation

log = logging.getLogger(__name__)

#: ``train.teacher_cache``; False is ``off`` (what YAML 1.1 makes of an unquoted ``off``).
Mode = Literal["auto", "memory", "disk", "off", False]
#: The staging-folder kind of the disk cache (``.<model name>.<host>-p<pid>.<random>.teacher-cache``).
STAGING_KIND = "teacher-cache"
#: Share of the available host memory (CPU) or free GPU memory (CUDA) that ``auto`` may fill.
MEMORY_FRACTION = 0.5


def _host_available() -> int:
    """Bytes of host memory available without swapping (``MemAvailable``; else free pages)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(ln for ln in f if ln.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_budget(device: torch.device) -> tuple[int, str]:
    """``(bytes auto may keep in memory, how that was worked out)`` for ``device``:
    :data:`MEMORY_FRACTION` of the GPU's free memory (CUDA) or of the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"free on {device}"
    else:
        free, where = _host_available(), "host memory available"
    return int(free * MEMORY_FRACTION), f"{MEMORY_FRACTION:.0%} of {format_mb(free)} MB {where}"


def disk_budget(folder: Path) -> int:
    """Bytes a disk cache may take in ``folder`` (free space less a margin; 0 if it cannot be read)."""
    try:
        import shutil

        free = shutil.disk_usage(folder).free
    except OSError:
        return 0
    return max(0, free - space_margin(free))


@dataclass(frozen=True)
class Plan:
    """What :func:`choose` decided: ``mode`` (memory, disk or off) and ``reason`` (one line, sizes)."""

    mode: Literal["memory", "disk", "off"]
    reason: str


def choose(mode: Mode, nbytes: int, device: torch.device, folder: Path) -> Plan:
    """Where maps of ``nbytes`` go for the setting ``mode`` (see the module docstring)."""
    size = f"{format_mb(nbytes)} MB"
    if mode == "off":
        return Plan("off", "train.teacher_cache is off")
    if mode == "memory":
        return Plan("memory", f"train.teacher_cache is memory: {size} on {device}")
    if mode == "disk":
        return Plan("disk", f"train.teacher_cache is disk: {size} in {folder}")
    budget, how = memory_budget(device)
    if nbytes <= budget:
        return Plan("memory", f"{size} fit the memory budget of {format_mb(budget)} MB ({how})")
    room = disk_budget(folder) if folder.is_dir() and os.access(folder, os.W_OK) else 0
    if nbytes <= room:
        return Plan("disk", f"{size} exceed the memory budget of {format_mb(budget)} MB ({how}); "
                            f"{format_mb(room)} MB free in {folder}")
    return Plan("off", f"{size} exceed the memory budget of {format_mb(budget)} MB ({how}) and the "
                       f"{format_mb(room)} MB free in {folder}")


class TeacherCache:
    """The teacher's maps of every training image, per stage ``(N, C_k, H_k, W_k)``, fine to coarse."""

    def __init__(self, features: list[torch.Tensor], device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.features, self.device, self.memory_format = features, device, memory_format

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.features)

    def gather(self, indices: np.ndarray) -> list[torch.Tensor]:
        """The maps of the images ``indices`` (int64, as :func:`iterate_batches` yields them) on the
        training device, in the training layout; no host sync."""
        idx = torch.from_numpy(indices)
        out = []
        for f in self.features:
            rows = f.index_select(0, idx.to(f.device, non_blocking=True))
            out.append(rows.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format))
        return out


def compute_features(model: ReverseDistillation, images: np.ndarray, batch_size: int, amp: str,
                     device: torch.device, memory_format: torch.memory_format, allocate) -> list[torch.Tensor]:
    """Run ``model.teacher`` (no gradients, under the ``amp`` autocast) over ``images`` (uint8
    ``(N, H, W, 3)``) in file order, ``batch_size`` at a time, writing into the per-stage tensors
    ``allocate(shapes, dtypes)`` returns (called once, after the first batch)."""
    n = len(images)
    out: list[torch.Tensor] | None = None
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size), dtype=np.int64)
        x = to_model_input(batch_from(images, idx, pin_memory=device.type == "cuda"), device)
        with torch.no_grad(), autocast(device, amp):
            maps = model.teacher(x.contiguous(memory_format=memory_format))
        if out is None:
            out = allocate([(n, *m.shape[1:]) for m in maps], [m.dtype for m in maps])
        for dst, m in zip(out, maps, strict=True):
            dst[start:start + len(idx)].copy_(m, non_blocking=True)
    assert out is not None
    return out


def _disk_tensors(folder: Path, shapes: list[tuple[int, ...]], dtypes: list[torch.dtype]) -> list[torch.Tensor]:
    """One preallocated, memory-mapped file per stage in ``folder``, as CPU tensors of ``shapes``."""
    tensors = []
    for k, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
        path = folder / f"stage{k + 1}.bin"
        numel = int(np.prod(shape))
        with disk_full_as_error(path, numel * dtype.itemsize):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if hasattr(os, "posix_fallocate"):  # blocks reserved now: no SIGBUS on a full disk later
                    os.posix_fallocate(fd, 0, numel * dtype.itemsize)
                else:  # pragma: no cover
                    os.ftruncate(fd, numel * dtype.itemsize)
            finally:
                os.close(fd)
        tensors.append(torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape))
    return tensors


def per_image_bytes(model: ReverseDistillation, height: int, width: int, amp: str, device: torch.device) -> int:
    """Bytes of the teacher's maps of one image (from a forward pass of one blank image)."""
    with torch.no_grad(), autocast(device, amp):
        maps = model.teacher(torch.zeros(1, 3, height, width, device=device))
    return sum(m.numel() * m.element_size() for m in maps)


@contextlib.contextmanager
def open_cache(mode: Mode, model: ReverseDistillation, images: np.ndarray, *, batch_size: int, amp: str,
               device: torch.device, memory_format: torch.memory_format, out_path: Path):
    """Yield the :class:`TeacherCache` of ``images`` for training ``out_path``, or None when the
    choice is ``off`` (see the module docstring); a disk cache is removed on leaving.  Stale disk
    caches of ``out_path`` left by killed runs are removed first, whatever the mode."""
    out_path = Path(out_path)
    mode = "off" if mode is False else mode
    clean_stale_staging(out_path.parent, out_path.name, STAGING_KIND)
    n = len(images)
    if mode != "off" and not model.impl.uses_teacher_cache():
        plan = Plan("off", f"variant {model.impl.name} does not take cached teacher maps "
                           "(Variant.uses_teacher_cache)")
    else:
        nbytes = 0
        if mode != "off":
            nbytes = per_image_bytes(model, int(images.shape[1]), int(images.shape[2]), amp, device) * n
            with contextlib.suppress(OSError):  # training writes there anyway; if it cannot, no disk cache
                out_path.parent.mkdir(parents=True, exist_ok=True)
        plan = choose(mode, nbytes, device, out_path.parent)
    log.info("teacher cache: %s for %d train images (%s)", plan.mode, n, plan.reason)
    if plan.mode == "off":
        yield None
        return
    if plan.mode == "memory":
        def allocate(shapes, dtypes):
            return [torch.empty(s, dtype=d, device=device) for s, d in zip(shapes, dtypes, strict=True)]
        yield TeacherCache(compute_features(model, images, batch_size, amp, device, memory_format, allocate),
                           device, memory_format)
        return
    check_free_space(out_path.parent, nbytes, out_path.parent / f".{out_path.name}.{STAGING_KIND}")
    with StagingDir(out_path.parent, out_path.name, STAGING_KIND) as staging:
        features = compute_features(model, images, batch_size, amp, device, memory_format,
                                    lambda shapes, dtypes: _disk_tensors(staging.path, shapes, dtypes))
        yield TeacherCache(features, device, memory_format)
