"""GPU slot allocation: N simulated GPUs, N+2 concurrent jobs, never two on one device; with
``jobs_per_gpu`` M, at most M jobs on one device, spread over the GPUs before any is shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skrd4ad.gpu_slots import JOBS_PER_GPU_ENV, gpu_slot, jobs_per_gpu_setting, visible_gpus

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


def _spawn(devices: str, lock_dir: Path, log: Path, hold: float, jobs_per_gpu: int = 1) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices, JOBS_PER_GPU_ENV: str(jobs_per_gpu)}
    return subprocess.Popen([sys.executable, "-c", JOB, str(lock_dir), str(log), str(hold)], env=env)


#: Holds its slot until ``<release>`` exists; writes ``<acquired>`` (its GPU) once it holds it.
HOLDER = """
import os, sys, time
from pathlib import Path
from skrd4ad.gpu_slots import gpu_slot
lock_dir, acquired, release = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with gpu_slot(lock_dir, poll=0.02) as gpu:
    assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu
    acquired.write_text(gpu)
    while not release.exists():
        time.sleep(0.02)
"""


class _Holders:
    """Holder processes started one at a time, each released on demand."""

    def __init__(self, tmp: Path, devices: str, jobs_per_gpu: int) -> None:
        self.tmp, self.devices, self.jobs_per_gpu = tmp, devices, jobs_per_gpu
        self.procs: list[subprocess.Popen] = []

    def start(self) -> int:
        i = len(self.procs)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": self.devices, JOBS_PER_GPU_ENV: str(self.jobs_per_gpu)}
        self.procs.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(self.tmp / "locks"),
                                            str(self.tmp / f"acquired{i}"), str(self.tmp / f"release{i}")], env=env))
        return i

    def gpu(self, i: int, wait: float = 60) -> str | None:
        """The GPU holder ``i`` got, waiting up to ``wait`` s; None if it still has none."""
        path = self.tmp / f"acquired{i}"
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if path.exists() and path.read_text():
                return path.read_text()
            assert self.procs[i].poll() is None, f"holder {i} exited with {self.procs[i].returncode}"
            time.sleep(0.02)
        return None

    def release(self, i: int) -> None:
        (self.tmp / f"release{i}").touch()
        assert self.procs[i].wait(timeout=60) == 0

    def close(self) -> None:
        for i in range(len(self.procs)):
            (self.tmp / f"release{i}").touch()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


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


def test_two_jobs_per_gpu_share_it_and_a_third_waits(tmp_path: Path) -> None:
    holders = _Holders(tmp_path, "0", jobs_per_gpu=2)
    try:
        a, b = holders.start(), holders.start()
        assert holders.gpu(a) == "0" and holders.gpu(b) == "0"  # both hold GPU 0 at the same time
        assert {p.name for p in (tmp_path / "locks").iterdir()} == {"gpu0.lock", "gpu0.slot1.lock"}
        c = holders.start()
        assert holders.gpu(c, wait=1.0) is None  # both slots taken: the third waits
        holders.release(a)
        assert holders.gpu(c) == "0"  # and gets the slot that was freed
        holders.release(b)
        holders.release(c)
    finally:
        holders.close()


def test_jobs_spread_over_gpus_before_sharing_one(tmp_path: Path) -> None:
    holders = _Holders(tmp_path, "3,5", jobs_per_gpu=2)
    try:
        first = [holders.gpu(holders.start()) for _ in range(2)]
        assert sorted(first) == ["3", "5"]  # one job per GPU while a GPU is idle
        second = [holders.gpu(holders.start()) for _ in range(2)]
        assert sorted(second) == ["3", "5"]  # then the second slot of each
        fifth = holders.start()
        assert holders.gpu(fifth, wait=1.0) is None  # 2 GPUs x 2 slots are all held
        holders.release(1)  # the first job on GPU first[1]
        assert holders.gpu(fifth) == first[1]
    finally:
        holders.close()


def test_killed_job_releases_its_shared_slot(tmp_path: Path) -> None:
    holders = _Holders(tmp_path, "0", jobs_per_gpu=2)
    try:
        a, b = holders.start(), holders.start()
        assert holders.gpu(a) == holders.gpu(b) == "0"
        c = holders.start()
        assert holders.gpu(c, wait=1.0) is None
        holders.procs[b].send_signal(signal.SIGKILL)
        holders.procs[b].wait(timeout=30)
        assert holders.gpu(c) == "0"
    finally:
        holders.close()


def test_at_most_m_concurrent_jobs_per_gpu(tmp_path: Path) -> None:
    gpus, per_gpu, n_jobs = ["0", "1"], 2, 6
    log = tmp_path / "log.jsonl"
    procs = [_spawn(",".join(gpus), tmp_path / "locks", log, 0.6, jobs_per_gpu=per_gpu) for _ in range(n_jobs)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == n_jobs and all(r["gpu"] in gpus and r["seen"] == r["gpu"] for r in rows)
    for gpu in gpus:
        events = sorted([(r["start"], 1) for r in rows if r["gpu"] == gpu]
                        + [(r["end"], -1) for r in rows if r["gpu"] == gpu])  # an end sorts before a start
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert 1 <= peak <= per_gpu, f"{peak} jobs at once on GPU {gpu}"


def test_jobs_per_gpu_in_process_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(JOBS_PER_GPU_ENV, "2")
    with gpu_slot(tmp_path, poll=0.02) as first:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        with gpu_slot(tmp_path, poll=0.02) as second:  # the env var's 2 slots
            assert first == second == "0"
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
            with pytest.raises(TimeoutError, match="--resources gpu"):
                with gpu_slot(tmp_path, timeout=0.2, poll=0.05):
                    pass
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
            with gpu_slot(tmp_path, timeout=5, poll=0.02, jobs_per_gpu=3) as third:  # the argument wins
                assert third == "0"
    monkeypatch.delenv(JOBS_PER_GPU_ENV)
    assert jobs_per_gpu_setting() == 1  # default: one job per GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with gpu_slot(tmp_path):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        with pytest.raises(TimeoutError):
            with gpu_slot(tmp_path, timeout=0.2, poll=0.05):
                pass


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", ""])
def test_bad_jobs_per_gpu_names_the_variable(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(JOBS_PER_GPU_ENV, bad)
    if bad == "":  # unset-like: the default
        assert jobs_per_gpu_setting() == 1
        return
    with pytest.raises(ValueError, match=JOBS_PER_GPU_ENV):
        with gpu_slot(tmp_path):
            pass
    with pytest.raises(ValueError, match="jobs_per_gpu"):
        jobs_per_gpu_setting(0)
