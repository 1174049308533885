"""Snakemake and DVC on one tree (skrd4ad/engines.py): each refuses to start while the other runs;
and DVC checks params.yaml in its first stage, before any stage removes an output."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from pipeline_fixtures import BIN, ENV, REPO, TINY, dvc_pending, make_copy, run

from skrd4ad import engines

SNAKEMAKE, DVC = str(BIN / "snakemake"), str(BIN / "dvc")

#: TINY with one class and one variant: the fewest jobs.
SMALL = copy.deepcopy(TINY)
SMALL["data"]["classes"] = ["brick"]
SMALL["model"]["variants"] = ["rd4ad"]
SMALL["train"].update(class_overrides={"brick": {}}, variant_overrides={"rd4ad": {}})
#: SMALL with a train job that outlasts every check (the run is killed afterwards).
LONG = copy.deepcopy(SMALL)
LONG["train"].update(epochs=100000, checkpoint_every=100000)

CHECKPOINT = "results/synthetic/checkpoints/rd4ad/seed111/brick.pt"
TRAIN_LOG = "results/synthetic/train/rd4ad/seed111/brick.tsv"


def dvc_repo(tmp_path: Path) -> Path:
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float = 150) -> None:
    """Poll ``condition`` until true; fail if ``proc`` exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@contextmanager
def started(cmd: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``cmd`` running in its own process group (output in ``log``), killed with its jobs on exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def holder_process(root: Path) -> subprocess.Popen:
    """A process holding the lock as Snakemake's main process does, until its stdin closes."""
    code = ("import sys; from skrd4ad import engines; engines.hold_for_snakemake(sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def dvc_lock(root: Path):
    """DVC's own repository lock object (``dvc.lock.Lock``, as ``Repo`` makes it)."""
    from dvc.lock import make_lock

    return make_lock(str(root / engines.DVC_LOCK), tmp_dir=str(root / ".dvc/tmp"))


# ----------------------------------------------------------------------------- the lock itself

def test_dvc_holding_its_lock_stops_snakemake_naming_the_process(tmp_path: Path) -> None:
    root = dvc_repo(tmp_path)
    (root / ".dvc/tmp").mkdir()
    lock = dvc_lock(root)
    lock.lock()
    try:
        holder = engines.dvc_holder(root)
        assert holder is not None and holder.startswith(f"pid {os.getpid()}: "), holder
        with pytest.raises(engines.EngineBusy) as err:
            engines.hold_for_snakemake(root, wait_s=0.5)
        message = str(err.value)
        assert message.startswith(f"DVC is running on this tree (pid {os.getpid()}: "), message
        assert message.endswith(f"; it holds .dvc/tmp/lock); wait until it finishes (`while kill -0 {os.getpid()} "
                                "2>/dev/null; do sleep 5; done` waits for it), then start Snakemake again"), message
    finally:
        lock.unlock()
    assert engines.dvc_holder(root) is None


@pytest.mark.parametrize("record", ["rwlock", "workspace_exp"])
def test_dvc_running_a_stage_stops_snakemake(tmp_path: Path, record: str) -> None:
    """DVC drops its lock while a stage's command runs; its record of the stage (or of the
    workspace experiment) still names it, until that process is gone."""
    root = dvc_repo(tmp_path)
    (root / ".dvc/tmp/exps/run/workspace").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    for pid in (int(dead.stdout), os.getpid()):
        if record == "rwlock":
            info = {"pid": pid, "cmd": "/venv/bin/dvc repro"}
            (root / engines.DVC_RWLOCK).write_text(json.dumps({"write": {str(root / "data/raw"): info},
                                                               "read": {str(root / "params.yaml"): [info]}}))
        else:
            (root / engines.DVC_WORKSPACE_EXP).write_text(json.dumps({"pid": pid, "stdin": None, "stdout": None,
                                                                      "stderr": None, "returncode": None}))
        if pid != os.getpid():  # a process killed mid-stage leaves its record: ignored, as DVC does
            assert engines.dvc_holder(root) is None
            try:
                assert engines.hold_for_snakemake(root) is True
            finally:
                engines.release()
            continue
        assert engines.dvc_holder(root).startswith(f"pid {pid}: ")
        with pytest.raises(engines.EngineBusy, match=rf"^DVC is running on this tree \(pid {pid}: .*\); wait"):
            engines.hold_for_snakemake(root)
    lock = dvc_lock(root)  # refusing left no lock behind
    lock.lock()
    lock.unlock()


def test_snakemake_holding_the_lock_stops_dvc_but_not_another_snakemake(tmp_path: Path) -> None:
    from dvc.lock import LockError

    root = dvc_repo(tmp_path)  # no .dvc/tmp yet, as in a fresh clone
    first = holder_process(root)
    second = holder_process(root)  # runs on disjoint targets may share the tree, as before
    try:
        assert (root / engines.DVC_LOCK).read_text() == f" {second.pid} snakemake\n"
        assert engines.dvc_holder(root) is None  # Snakemake is not DVC
        with pytest.raises(LockError, match="Unable to acquire lock"):
            dvc_lock(root).lock()
        first.kill()  # however a holder ends, the kernel drops its lock
        first.wait(timeout=10)
        with pytest.raises(LockError):
            dvc_lock(root).lock()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait(timeout=10)
    lock = dvc_lock(root)
    lock.lock()
    lock.unlock()


def test_no_lock_where_dvc_does_not_use_flock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert engines.hold_for_snakemake(tmp_path) is False  # not a DVC repository
    root = dvc_repo(tmp_path)
    (root / ".dvc/config").write_text("[core]\n    hardlink_lock = true\n")
    assert engines.hold_for_snakemake(root) is False
    assert "hardlink_lock" in capsys.readouterr().err
    assert not (root / engines.DVC_LOCK).exists()  # flufl.lock would read a file left there as held


# ----------------------------------------------------------------------------- params first

def test_validate_params_script(tmp_path: Path) -> None:
    script = [sys.executable, str(REPO / "workflow/scripts/validate_params.py")]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["epochs"] = "ten"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([*script, "--params", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "ok")],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and not (tmp_path / "ok").exists()
    assert "validate_params: invalid params: train.epochs: 'ten' is not of type 'integer'\n" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    run([*script, "--out", str(tmp_path / "sub/ok")], REPO)
    assert (tmp_path / "sub/ok").read_text() == "ok\n"


def test_dvc_validates_params_before_every_other_stage() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    check = stages.pop("validate_params")
    assert check["outs"] == [engines.PARAMS_CHECK] and check["params"] == [{"params.yaml": None}]
    assert "workflow/scripts/validate_params.py" in check["deps"]
    assert {name for name, stage in stages.items()
            if engines.PARAMS_CHECK not in stage.get("do", stage)["deps"]} == set()
    assert not [name for name, stage in stages.items() if "validate_params.py" in str(stage)]


@pytest.mark.slow
def test_invalid_params_stop_dvc_before_it_removes_any_output(tmp_path: Path) -> None:
    repo = make_copy(tmp_path, copy.deepcopy(SMALL))
    run([DVC, "repro"], repo)
    before = {rel: (repo / rel).read_bytes() for rel in (CHECKPOINT, TRAIN_LOG)}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    good = (repo / "params.yaml").read_text()
    params["train"]["epochs"] = "ten"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    proc = subprocess.run([DVC, "repro"], cwd=repo, env=ENV, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "invalid params" in out and "train.epochs" in out, out
    assert "Traceback" not in out and "Running stage 'train" not in out, out
    assert {rel: (repo / rel).read_bytes() for rel in before} == before  # byte for byte, both still there

    (repo / "params.yaml").write_text(good)  # fixed: nothing re-runs but the check itself
    assert "Running stage 'train" not in run([DVC, "repro"], repo).stdout
    assert dvc_pending(repo) == {}


# ----------------------------------------------------------------------------- real engines

@pytest.mark.slow
def test_dvc_refuses_to_start_while_snakemake_runs(tmp_path: Path) -> None:
    repo = make_copy(tmp_path, copy.deepcopy(LONG))
    log = tmp_path / "snakemake.log"
    with started([SNAKEMAKE, "--cores", "1"], repo, log) as snakemake:
        # Snakemake orders independent jobs as it likes (validate_params may come last): wait until the
        # inputs of the long train job are done and the job has started
        done = [*(f"(Rule: {rule})" for rule in ("download", "fetch_teacher", "prepare")), "Training rd4ad on"]
        wait_for(lambda: all(d in log.read_text() for d in done), snakemake, log)  # now in the long train job
        assert (repo / engines.DVC_LOCK).read_text() == f" {snakemake.pid} snakemake\n"
        before = {p: p.stat().st_mtime_ns for p in (repo / "data").rglob("*")}
        t0 = time.monotonic()
        proc = subprocess.run([DVC, "repro"], cwd=repo, env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "Unable to acquire lock" in proc.stderr, proc.stdout + proc.stderr
        assert time.monotonic() - t0 < 60
        assert snakemake.poll() is None, log.read_text()[-3000:]  # it was running all along
        # DVC ran no stage: Snakemake's outputs so far untouched, nothing recorded or cached
        assert {p: p.stat().st_mtime_ns for p in (repo / "data").rglob("*")} == before
        assert not (repo / "dvc.lock").exists() and not (repo / ".dvc/cache").exists()


@pytest.mark.slow
def test_snakemake_refuses_to_start_while_dvc_runs(tmp_path: Path) -> None:
    repo = make_copy(tmp_path, copy.deepcopy(LONG))
    log = tmp_path / "dvc.log"
    with started([DVC, "repro"], repo, log) as dvc:
        wait_for(lambda: (repo / engines.DVC_LOCK).is_file()
                 and (repo / engines.DVC_LOCK).read_text() == f" {dvc.pid}\n"
                 and "Running stage 'train" in log.read_text(), dvc, log)
        busy = f"DVC is running on this tree (pid {dvc.pid}: dvc repro"  # its lock, or its running stage

        dry = run([SNAKEMAKE, "-n"], repo)  # read-only modes work, dry runs warn
        assert f"Warning: {busy}" in dry.stderr, dry.stderr
        run([SNAKEMAKE, "--summary"], repo)

        proc = subprocess.run([SNAKEMAKE, "--cores", "1"], cwd=repo, env=ENV, capture_output=True, text=True,
                              timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and busy in out and "wait until it finishes" in out, out
        assert "Traceback" not in out and "Finished jobid" not in out, out
        assert not (repo / "logs").exists()  # no Snakemake job ran (only Snakemake's jobs write logs/)
        assert dvc.poll() is None, log.read_text()[-3000:]
