"""One GPU per concurrent job (or up to N jobs per GPU) on a multi-GPU workstation.

Snakemake's ``--resources gpu=N`` limits how many GPU jobs run at once but does not say which
GPU each one gets, so without help every job would use GPU 0.  :func:`gpu_slot` gives each job
a slot on one device: it takes an ``flock`` on a slot's lock file for the first free slot among
the visible devices (``CUDA_VISIBLE_DEVICES`` when set, else all GPUs found), and sets
``CUDA_VISIBLE_DEVICES`` to that one device for the rest of the process.  The kernel drops the
lock when the process ends, even if it is killed, so a crashed job never blocks a device.

Each GPU has ``jobs_per_gpu`` slots (the argument, else ``$SKRD4AD_JOBS_PER_GPU``, else 1):
slot 0 of GPU ``<id>`` is ``<lock_dir>/gpu<id>.lock``, slot ``k >= 1`` is
``<lock_dir>/gpu<id>.slot<k>.lock``.  Free slots are taken slot by slot across the GPUs (slot 0
of every GPU first, then slot 1, ...), so jobs spread over idle GPUs before any GPU gets a second
job.  With the default of 1 every job has a GPU to itself.  Every job sharing a lock directory
must use the same ``jobs_per_gpu``: a job with 1 looks only at slot 0 and does not see jobs
holding the other slots.

On a Slurm node the allocated GPU is already the only visible one; the lock is then a no-op.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "SKRD4AD_GPU_LOCK_DIR"
JOBS_PER_GPU_ENV = "SKRD4AD_JOBS_PER_GPU"


def visible_gpus() -> list[str]:
    """Device ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set (``""``/``-1`` = none),
    else every GPU ``nvidia-smi`` lists, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if ids in ([], ["-1"]) else ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "skrd4ad-gpu-locks")


def jobs_per_gpu_setting(value: int | str | None = None) -> int:
    """How many jobs may share one GPU: ``value`` if given, else ``$SKRD4AD_JOBS_PER_GPU``, else 1.

    Raises ``ValueError`` naming the source unless it is a whole number >= 1."""
    source = "jobs_per_gpu"
    if value is None:
        value = os.environ.get(JOBS_PER_GPU_ENV, "").strip() or 1
        source = JOBS_PER_GPU_ENV
    try:
        n = int(value)
        ok = not isinstance(value, bool) and n >= 1 and str(n) == str(value).strip()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{source}: expected a whole number >= 1 (jobs sharing one GPU), got {value!r}")
    return n


def slot_lock_path(lock_dir: Path, gpu: str, slot: int) -> Path:
    """Lock file of ``slot`` on ``gpu`` (slot 0 keeps the one-job-per-GPU name ``gpu<id>.lock``)."""
    return lock_dir / (f"gpu{gpu}.lock" if slot == 0 else f"gpu{gpu}.slot{slot}.lock")


@contextlib.contextmanager
def gpu_slot(lock_dir: str | Path | None = None, *, timeout: float = 24 * 3600,
             poll: float = 0.5, jobs_per_gpu: int | None = None) -> Iterator[str | None]:
    """Hold a slot on one visible GPU for the ``with`` block; yields the GPU's id (None without GPUs).

    A GPU has ``jobs_per_gpu`` slots (default ``$SKRD4AD_JOBS_PER_GPU``, else 1: the GPU is the
    job's alone).  Inside the block ``CUDA_VISIBLE_DEVICES`` names only that GPU (so it is
    ``cuda:0``); the previous value is restored afterwards.  Waits (polling every ``poll`` s)
    while every slot of every visible GPU is held by other jobs; raises ``TimeoutError`` after
    ``timeout`` seconds.
    """
    slots = jobs_per_gpu_setting(jobs_per_gpu)
    gpus = visible_gpus()
    if not gpus:
        yield None
        return
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    candidates = [(gpu, slot) for slot in range(slots) for gpu in gpus]  # spread before sharing
    while True:
        for gpu, slot in candidates:
            fh = open(slot_lock_path(lock_dir, gpu, slot), "a+")  # noqa: SIM115 - held for the block
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            previous = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            log.info("using GPU %s, slot %d of %d (lock %s)", gpu, slot + 1, slots, fh.name)
            try:
                yield gpu
            finally:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU slot among {gpus} ({slots} job(s) per GPU, "
                               f"{JOBS_PER_GPU_ENV}) after {timeout:.0f} s (locks in {lock_dir}); "
                               "lower --resources gpu=N to the number of GPUs times the jobs per GPU")
        time.sleep(poll)
