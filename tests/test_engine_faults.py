"""A killed engine takes its jobs along (issue 21, item 14): after SIGKILL of Snakemake or DVC the
training job stops within seconds instead of running on as an orphan, and leaves no half-written
output under a final name."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_fixtures import ENV, TINY, make_copy


CKPT = "results/synthetic/checkpoints/rd4ad/seed111/brick.pt"


def _train_pids(repo: Path) -> list[int]:
    """Pids of python processes running this repository's train stage script."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        here = str(repo) in cmd or cwd == str(repo)  # Snakemake: absolute script path; DVC: run in repo
        if "train.py" in cmd and here and "python" in cmd.split(" ")[0]:
            pids.append(int(entry.name))
    return pids


def _tree() -> str:
    return subprocess.run(["ps", "-eo", "pid,ppid,stat,cmd"], capture_output=True, text=True).stdout[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the job through /proc (Linux)")
@pytest.mark.parametrize("engine", ["snakemake", "dvc"])
def test_sigkill_of_the_engine_stops_the_training_job(tmp_path: Path, engine: str) -> None:
    params = copy.deepcopy(TINY)
    params["train"]["epochs"] = 500  # long enough to be running when the engine dies
    repo = make_copy(tmp_path, params)
    if engine == "snakemake":
        cmd = ["snakemake", "--cores", "1", CKPT]
    else:
        cmd = ["dvc", "repro", "train@brick-rd4ad-111"]
    eng = subprocess.Popen(cmd, cwd=repo, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        pids: list[int] = []
        while time.monotonic() < deadline and not pids and eng.poll() is None:
            time.sleep(0.5)
            pids = _train_pids(repo)
        assert pids, f"no training job started; engine rc={eng.poll()}\n{eng.stderr.read() if eng.poll() else ''}"
        time.sleep(4)  # the job is past its start (imports, lifeline armed, first epochs)
        tree = _tree()
        eng.send_signal(signal.SIGKILL)
        eng.wait()
        t0 = time.monotonic()
        while _train_pids(repo) and time.monotonic() - t0 < 15:
            time.sleep(0.2)
        left = _train_pids(repo)
        assert not left, f"training job(s) {left} outlived the killed {engine} by 15 s\n{tree}"
    finally:
        for pid in _train_pids(repo):
            os.kill(pid, signal.SIGKILL)
        if eng.poll() is None:
            eng.kill()
    ckpt = repo / CKPT
    assert not ckpt.exists(), "a killed job left a final checkpoint"
    leftovers = [p for p in ckpt.parent.glob(".*.tmp")] if ckpt.parent.exists() else []
    assert not leftovers, leftovers


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the engine through /proc (Linux)")
def test_the_guard_is_armed_under_an_engine_only(tmp_path: Path) -> None:
    """Run by hand (parent: pytest) a job is not tied to its shell (nohup works); started through a
    shell by a process named ``snakemake``, it is, and it watches the shell and the engine."""
    code = "from skrd4ad.lifeline import ancestors, die_with_parent; print(die_with_parent(), len(ancestors()))"
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert alone.stdout.split() == ["False", "0"]
    engine = tmp_path / "snakemake"  # a stand-in engine: the guard goes by the command's name
    engine.write_text(f"#!/bin/sh\n/bin/sh -c '{sys.executable} -c \"{code}\"; true'\n")
    engine.chmod(0o755)
    under = subprocess.run([str(engine)], capture_output=True, text=True, env=ENV, check=True)
    assert under.stdout.split() == ["True", "2"], under.stderr


@pytest.mark.slow
def test_snakemake_touch_reconciles_after_dvc_rewrote_identical_inputs(tmp_path: Path) -> None:
    """Item 13: a forced DVC run rewrites upstream outputs with the same bytes but new mtimes, and
    Snakemake would re-run what follows; the README's ``snakemake --touch`` marks them current."""
    repo = make_copy(tmp_path, copy.deepcopy(TINY))
    target = "data/prepared/synthetic/brick"

    def dry_run() -> str:
        proc = subprocess.run(["snakemake", "-n", "--cores", "1", target], cwd=repo, env=ENV, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run = subprocess.run(["snakemake", "--cores", "1", target], cwd=repo, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Nothing to be done" in dry_run()
    later = time.time() + 5  # what `dvc repro -f` does to an upstream output: same content, newer
    for path in [repo / "data/raw/synthetic", *(repo / "data/raw/synthetic").rglob("*")]:
        os.utime(path, (later, later))
    assert "prepare" in dry_run() and "Nothing to be done" not in dry_run()
    touched = subprocess.run(["snakemake", "--cores", "1", "--touch", target], cwd=repo, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert touched.returncode == 0, touched.stderr[-3000:]
    assert "Nothing to be done" in dry_run()
