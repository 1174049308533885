"""GPU slot allocation: N simulated GPUs, N+2 concurrent jobs, never two on one device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skrd4ad.gpu_slots import gpu_slot, visible_gpus

JOB = """
import json, os, sys, time
from skrd4ad.gpu_slots import gpu_slot
lock_dir, log, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
with gpu_slot(lock_dir, poll=0.02) as gpu:
    start = time.time()
    seen = os.environ["CUDA_VISIBLE_DEVICES"]
    time.sleep(hold)
    end = time.time()
with open(log, "a") as fh:
    fh.write(json.dumps({"gpu": gpu, "seen": seen, "start": start, "end": end, "pid": os.getpid()}) + "\\n")
"""


def _spawn(devices: str, lock_dir: Path, log: Path, hold: float) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices}
    return subprocess.Popen([sys.executable, "-c", JOB, str(lock_dir), str(log), str(hold)], env=env)


@pytest.mark.parametrize("devices", ["0,1,2", "3,5"])
def test_concurrent_jobs_never_share_a_gpu(devices: str, tmp_path: Path) -> None:
    gpus = devices.split(",")
    n_jobs = len(gpus) + 2
    log = tmp_path / "log.jsonl"
    procs = [_spawn(devices, tmp_path / "locks", log, 0.6) for _ in range(n_jobs)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == n_jobs
    assert all(r["gpu"] in gpus and r["seen"] == r["gpu"] for r in rows)  # honours the visible set
    for gpu in gpus:
        spans = sorted((r["start"], r["end"]) for r in rows if r["gpu"] == gpu)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"two jobs overlapped on GPU {gpu}: {spans}"
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= len(gpus)
    assert len({r["gpu"] for r in rows}) == len(gpus)  # every GPU was used


def test_killed_job_releases_its_gpu(tmp_path: Path) -> None:
    holder = _spawn("0", tmp_path / "locks", tmp_path / "a.jsonl", 60)
    lock = tmp_path / "locks" / "gpu0.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    waiter = _spawn("0", tmp_path / "locks", tmp_path / "b.jsonl", 0.0)
    time.sleep(0.5)
    assert waiter.poll() is None  # blocked while the GPU is held
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert waiter.wait(timeout=60) == 0
    assert json.loads((tmp_path / "b.jsonl").read_text())["gpu"] == "0"


def test_no_gpu_yields_none_and_restores_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    with gpu_slot(tmp_path) as gpu:
        assert gpu is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    with gpu_slot(tmp_path) as gpu:
        assert gpu == "4" and os.environ["CUDA_VISIBLE_DEVICES"] == "4"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,7"


def test_timeout_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with gpu_slot(tmp_path):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        with pytest.raises(TimeoutError, match="--resources gpu"):
            with gpu_slot(tmp_path, timeout=0.2, poll=0.05):
                pass
