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

``auto`` picks ``memory`` when the maps fit :func:`memory_budget`, else ``disk`` when the output
folder's file system has room (:func:`disk_budget`: free bytes less
:func:`~skrd4ad.io.space_margin`), else ``off``; also ``off`` when the variant cannot use it
(``Variant.uses_teacher_cache``).  The memory budget is a fraction :data:`MEMORY_FRACTION` of
what is available, divided by the number of jobs that may run at once (:func:`concurrent_jobs`):

- on CUDA, the GPU's free memory after the model is placed, shared by
  ``$SKRD4AD_JOBS_PER_GPU`` jobs (:mod:`skrd4ad.gpu_slots`);
- on the host, ``MemAvailable``, or less when the process's cgroup (a Slurm job, a container)
  leaves less (:func:`cgroup_memory_room`), shared by ``usable CPUs // $SKRD4AD_JOB_THREADS``
  jobs: the Snakemake train job sets :data:`JOB_THREADS_ENV` to its ``threads``, so with
  ``--cores`` up to the CPU count at most that many train jobs run at once; without it (the
  CLI, DVC's one-stage-at-a-time ``repro``) the job counts as alone.

If filling the memory cache runs out of memory anyway, ``auto`` falls back to ``disk`` (else
``off``) with one WARNING line; an explicit ``memory`` raises one line naming the setting.  One
INFO line says what was chosen and why, with the sizes.  Sizes: wide_resnet50_2 at 256 px is
about 7.3 MB of float32 maps per image, mobilenet_v2 at 256 px about 1.3 MB.
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
from .gpu_slots import JOBS_PER_GPU_ENV, jobs_per_gpu_setting
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
#: The threads of this training job as the workflow engine allotted them (set by the Snakemake
#: train script to the rule's ``threads``); with it, ``usable CPUs // threads`` jobs may run at once.
JOB_THREADS_ENV = "SKRD4AD_JOB_THREADS"
#: Where :func:`host_memory_available` reads ``proc/meminfo``, ``proc/self/cgroup`` and
#: ``sys/fs/cgroup``; tests point it at a fake tree.
ROOT = Path("/")
#: A cgroup limit at or above this is no limit (cgroup v1 says "unlimited" as 2**63 less a page).
NO_LIMIT = 2**60


def _meminfo_available(root: Path) -> int:
    """Bytes of host memory available without swapping (``MemAvailable``; else free pages)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open(root / "proc" / "meminfo") as f:
            line = next(ln for ln in f if ln.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _read_int(path: Path) -> int | None:
    """The number in a cgroup file; None when missing, unreadable, ``max`` or :data:`NO_LIMIT` and up."""
    try:
        text = path.read_text().strip()
        value = int(text)
    except (OSError, ValueError):
        return None
    return value if value < NO_LIMIT else None


def _inactive_file(path: Path, key: str) -> int:
    """Bytes of inactive page cache in a cgroup's ``memory.stat`` (reclaimable, as in MemAvailable)."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return max(0, int(value))
    return 0


def _cgroup_chain(mount: Path, rel: str) -> list[Path]:
    """The folders of cgroup ``rel`` under ``mount`` and of its ancestors up to ``mount`` (folders
    that do not exist have no files to read); only ``mount`` when ``rel`` climbs above it (``/..``:
    a cgroup namespace's view of a cgroup outside it; the mount shows the container's own)."""
    parts = [p for p in rel.strip().split("/") if p not in ("", ".")]
    if ".." in parts:
        return [mount]
    return [mount.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def cgroup_memory_room(root: Path | None = None) -> int | None:
    """Bytes the memory limits of this process's cgroup and its ancestors still allow (None: no
    limit found): the smallest ``limit - usage + inactive page cache`` over the chain.

    cgroup v2 (``0::<path>`` in ``/proc/self/cgroup``): ``memory.max``, ``memory.current``,
    ``inactive_file`` of ``memory.stat`` under ``/sys/fs/cgroup``; else cgroup v1 (the
    ``memory`` controller's line): ``memory.limit_in_bytes``, ``memory.usage_in_bytes``,
    ``total_inactive_file`` under ``/sys/fs/cgroup/memory``.  ``max`` or a limit of
    :data:`NO_LIMIT` and up is no limit.  ``root`` (default :data:`ROOT`) prefixes every path."""
    root = ROOT if root is None else Path(root)
    try:
        lines = (root / "proc" / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    v2 = [ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")]
    v1 = [ln.split(":", 2)[2] for ln in lines
          if ln.count(":") >= 2 and "memory" in ln.split(":", 2)[1].split(",")]
    layouts = []
    if v2:
        layouts.append((root / "sys" / "fs" / "cgroup", v2[0], "memory.max", "memory.current", "inactive_file"))
    if v1:
        layouts.append((root / "sys" / "fs" / "cgroup" / "memory", v1[0], "memory.limit_in_bytes",
                        "memory.usage_in_bytes", "total_inactive_file"))
    for mount, rel, limit_name, usage_name, inactive_key in layouts:
        chain, rooms = _cgroup_chain(mount, rel), []
        for folder in chain:
            limit = _read_int(folder / limit_name)
            usage = _read_int(folder / usage_name)
            if limit is None or usage is None:
                continue
            rooms.append(max(0, limit - usage + _inactive_file(folder / "memory.stat", inactive_key)))
        if rooms:
            return min(rooms)
        if any((folder / limit_name).exists() for folder in chain):
            return None  # this hierarchy has the memory controller and sets no limit
    return None


def host_memory_available(root: Path | None = None) -> tuple[int, str]:
    """``(bytes of host memory available to this process, where the number comes from)``:
    ``MemAvailable``, or the cgroup's room (:func:`cgroup_memory_room`) when that is smaller."""
    root = ROOT if root is None else Path(root)
    available = _meminfo_available(root)
    room = cgroup_memory_room(root)
    if room is not None and room < available:
        return room, "host memory available (cgroup limit)"
    return available, "host memory available"


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a Slurm job's allocation), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def concurrent_jobs(device: torch.device) -> tuple[int, str]:
    """``(how many training jobs may share the budget's memory at once, why)``: on CUDA the jobs
    per GPU (``$SKRD4AD_JOBS_PER_GPU``, default 1); on the host ``max(1, usable CPUs //
    $SKRD4AD_JOB_THREADS)`` when the workflow engine set the job's threads, else 1."""
    if device.type == "cuda":
        n = jobs_per_gpu_setting()
        return n, f"{JOBS_PER_GPU_ENV}={n}"
    value = os.environ.get(JOB_THREADS_ENV, "").strip()
    if not value:
        return 1, f"{JOB_THREADS_ENV} not set"
    try:
        threads = int(value)
        if threads < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"{JOB_THREADS_ENV}: expected a whole number >= 1 (threads of this training job), "
                         f"got {value!r}") from None
    cpus = _usable_cpus()
    return max(1, cpus // threads), f"{cpus} usable CPUs / {threads} threads per job"


def memory_budget(device: torch.device) -> tuple[int, str]:
    """``(bytes auto may keep in memory, how that was worked out)`` for ``device``:
    :data:`MEMORY_FRACTION` of the GPU's free memory (CUDA) or of the host's available memory
    (:func:`host_memory_available`), divided by :func:`concurrent_jobs`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"free on {device}"
    else:
        free, where = host_memory_available()
    jobs, why = concurrent_jobs(device)
    how = f"{MEMORY_FRACTION:.0%} of {format_mb(free)} MB {where}"
    if jobs > 1:
        how += f", shared by {jobs} concurrent jobs ({why})"
    return int(free * MEMORY_FRACTION) // jobs, how


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


def _disk_room(folder: Path) -> int:
    return disk_budget(folder) if folder.is_dir() and os.access(folder, os.W_OK) else 0


def after_out_of_memory(nbytes: int, folder: Path) -> Plan:
    """Where ``auto`` puts maps of ``nbytes`` when the memory cache ran out of memory: ``disk`` when
    ``folder`` has room, else ``off``."""
    size, room = f"{format_mb(nbytes)} MB", _disk_room(folder)
    if nbytes <= room:
        return Plan("disk", f"{size} in {folder} ({format_mb(room)} MB free)")
    return Plan("off", f"{size} exceed the {format_mb(room)} MB free in {folder}")


#: Words of a RuntimeError that mean an allocation failed (CUDA's and the CPU allocator's).
OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def out_of_memory_text(exc: BaseException) -> str | None:
    """One short line saying how ``exc`` ran out of memory, or None when it is not an out-of-memory
    error (``MemoryError``, ``torch.OutOfMemoryError``, a RuntimeError saying so)."""
    text = str(exc).strip()
    pieces = [p.strip() for line in text.splitlines() for p in line.split(". ") if p.strip()]
    said = next((p for p in pieces if any(m in p.lower() for m in OOM_MESSAGES)), None)
    if not isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) and not (
            isinstance(exc, RuntimeError) and said is not None):
        return None
    said = said or (pieces[0] if pieces else type(exc).__name__)
    return said if len(said) <= 160 else said[:157] + "..."


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
    room = _disk_room(folder)
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


def _memory_tensors(shapes: list[tuple[int, ...]], dtypes: list[torch.dtype],
                    device: torch.device) -> list[torch.Tensor]:
    """The memory cache's per-stage tensors on ``device`` (uninitialised)."""
    return [torch.empty(s, dtype=d, device=device) for s, d in zip(shapes, dtypes, strict=True)]


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
    if mode != "off" and not model.plugin.uses_teacher_cache():
        plan = Plan("off", f"variant {model.plugin.name} does not take cached teacher maps "
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
        try:
            features = compute_features(model, images, batch_size, amp, device, memory_format,
                                        lambda shapes, dtypes: _memory_tensors(shapes, dtypes, device))
        except (MemoryError, RuntimeError) as exc:
            failure = out_of_memory_text(exc)
            if failure is None:
                raise
            if mode == "memory":
                raise MemoryError(f"train.teacher_cache is memory, but the teacher maps ({format_mb(nbytes)} MB) do "
                                  f"not fit in memory on {device} ({failure}); set train.teacher_cache to auto "
                                  "(falls back to disk), disk or off") from exc
            plan = after_out_of_memory(nbytes, out_path.parent)
        else:
            yield TeacherCache(features, device, memory_format)
            return
        if device.type == "cuda":  # the partly filled maps are gone with the exception
            torch.cuda.empty_cache()
        log.warning("teacher cache: %s after all for %d train images: the memory cache ran out of memory (%s); %s",
                    plan.mode, n, failure, plan.reason)
        if plan.mode == "off":
            yield None
            return
    check_free_space(out_path.parent, nbytes, out_path.parent / f".{out_path.name}.{STAGING_KIND}")
    with StagingDir(out_path.parent, out_path.name, STAGING_KIND) as staging:
        features = compute_features(model, images, batch_size, amp, device, memory_format,
                                    lambda shapes, dtypes: _disk_tensors(staging.path, shapes, dtypes))
        yield TeacherCache(features, device, memory_format)
