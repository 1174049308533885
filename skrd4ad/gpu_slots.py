"""One GPU per concurrent job on a multi-GPU workstation.

Snakemake's ``--resources gpu=N`` limits how many GPU jobs run at once but does not say which
GPU each one gets, so without help every job would use GPU 0.  :func:`gpu_slot` gives each job
an exclusive device: it takes an ``flock`` on ``<lock_dir>/gpu<id>.lock`` for the first free
device among those visible (``CUDA_VISIBLE_DEVICES`` when set, else all GPUs found), and sets
``CUDA_VISIBLE_DEVICES`` to that one device for the rest of the process.  The kernel drops the
lock when the process ends, even if it is killed, so a crashed job never blocks a device.

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


@contextlib.contextmanager
def gpu_slot(lock_dir: str | Path | None = None, *, timeout: float = 24 * 3600,
             poll: float = 0.5) -> Iterator[str | None]:
    """Hold one visible GPU exclusively for the ``with`` block; yields its id (None without GPUs).

    Inside the block ``CUDA_VISIBLE_DEVICES`` names only that GPU (so it is ``cuda:0``); the
    previous value is restored afterwards.  Waits (polling every ``poll`` s) while all visible
    GPUs are held by other jobs; raises ``TimeoutError`` after ``timeout`` seconds.
    """
    gpus = visible_gpus()
    if not gpus:
        yield None
        return
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for gpu in gpus:
            fh = open(lock_dir / f"gpu{gpu}.lock", "a+")  # noqa: SIM115 - held for the block
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
            log.info("using GPU %s (lock %s)", gpu, fh.name)
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
            raise TimeoutError(f"no free GPU among {gpus} after {timeout:.0f} s (locks in {lock_dir}); "
                               "lower --resources gpu=N to the number of GPUs")
        time.sleep(poll)
