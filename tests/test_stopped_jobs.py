"""What a stopped job leaves (issue 33, items 15 and 19): a SIGTERM while a stage script is still
importing ends it with the one ``terminated (SIGTERM)`` line and status 143, under both engines; and
the re-run of a stopped job keeps the first attempt's log above a separator line, while the re-run
of a completed job starts a fresh one (Snakemake 9 deletes a job's ``log:`` before running it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_fixtures import BIN, ENV, REPO

from skrd4ad.lifeline import TERMINATED
from skrd4ad.jobcode import JOBS

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGTERM")

#: Stands in for PyYAML, which every stage script imports (through skrd4ad.stage) after its first
#: line: in a stage script it writes its pid to $SLOW_IMPORT_MARK and waits there, still importing,
#: for the test's SIGTERM; anywhere else (Snakemake itself) it is PyYAML.
SLOW_YAML = '''
import os, sys, time

if os.environ.get("SLOW_IMPORT_MARK") and os.path.basename(os.path.dirname(sys.argv[0])) == "scripts":
    with open(os.environ["SLOW_IMPORT_MARK"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.environ["SLOW_IMPORT_MARK"] + ".tmp", os.environ["SLOW_IMPORT_MARK"])
    time.sleep(120)
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
del sys.modules["yaml"]
import yaml as _real  # noqa: E402
sys.modules["yaml"] = _real
'''


def slow_import_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "yaml.py").write_text(SLOW_YAML)
    mark = tmp_path / "importing.pid"
    path = os.pathsep.join([str(shadow), *filter(None, [ENV.get("PYTHONPATH")])])
    return {**ENV, "PYTHONPATH": path, "SLOW_IMPORT_MARK": str(mark)}, mark


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid written to ``path`` once it appears (while ``proc`` runs)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} first:\n{proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def test_sigterm_while_a_stage_script_imports_is_one_line_under_dvc(tmp_path: Path) -> None:
    """Every stage script, as DVC runs it: SIGTERM in the middle of its imports gives exit 143 and
    the one ERROR line (before: killed silently, status -15, no line)."""
    env, mark = slow_import_env(tmp_path)
    for stage, script in JOBS.items():
        mark.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, str(REPO / script), "--out", "x"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            os.kill(wait_for(mark, proc), signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 143 and len(err.splitlines()) == 1, (stage, proc.returncode, err)
        assert err.rstrip().endswith(f" ERROR skrd4ad.stage.{stage}: {TERMINATED}"), (stage, err)


def snakemake(workdir: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "snakemake"), "--cores", "1", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def completes(workdir: Path, env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "1", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_sigterm_while_importing_under_snakemake_is_one_line_and_the_rerun_keeps_it(tmp_path: Path) -> None:
    """A real stage script run by Snakemake's ``script:``: SIGTERM while it imports puts the one
    line into its log file and on the console (exit 143); the re-run keeps that line above the
    separator of attempt 2 and ends with ``done in``."""
    work = tmp_path / "wf"
    work.mkdir()
    (work / "Snakefile").write_text(f'rule ok:\n    output: "ok.txt"\n    log: "logs/ok.log"\n'
                                    f'    script: "{REPO / JOBS["validate_params"]}"\n')
    env, mark = slow_import_env(tmp_path)
    engine = snakemake(work, env)
    try:
        os.kill(wait_for(mark, engine), signal.SIGTERM)
        console = engine.communicate(timeout=120)[0]
    finally:
        engine.kill()
    line = f" ERROR skrd4ad.stage.validate_params: {TERMINATED}"
    assert engine.returncode != 0 and "exit status 143" in console, console[-3000:]
    assert line in console and "Traceback (most recent call last)" not in console, console[-3000:]
    log = (work / "logs/ok.log").read_text().splitlines()
    assert len(log) == 1 and log[0].endswith(line), log

    completes(work, {k: v for k, v in env.items() if k != "SLOW_IMPORT_MARK"})
    log = (work / "logs/ok.log").read_text().splitlines()
    assert log[0].endswith(line) and "===== attempt 2 of this job starts here" in log[1], log
    assert "validate_params done in" in log[-1], log


#: A stage as the scripts run it (``run_script``): logs a line, then works for $WORK_S seconds (the
#: test stops it meanwhile) and writes its output.
JOB = '''
import logging, os, time

from skrd4ad.stage import run_script


def body():
    logging.getLogger("skrd4ad.stage.job").info("working, attempt pid %d", os.getpid())
    time.sleep(float(os.environ.get("WORK_S", "0")))
    open(snakemake.output[0], "w").write("done\\n")


run_script("job", body, snakemake.log[0])
'''


def test_the_rerun_of_a_stopped_job_appends_to_its_log(tmp_path: Path) -> None:
    """Attempt 1 is stopped mid-work (SIGTERM), attempt 2 completes: the log holds attempt 1's lines
    and its terminated line, the separator naming attempt 2, then attempt 2's lines, ``done in``
    last.  Re-running the completed job (-F) starts a fresh log."""
    (tmp_path / "Snakefile").write_text('rule job:\n    output: "out.txt"\n    log: "logs/job.log"\n'
                                        '    script: "job.py"\n')
    (tmp_path / "job.py").write_text(JOB)
    log = tmp_path / "logs/job.log"
    engine = snakemake(tmp_path, {**ENV, "WORK_S": "120"})
    try:
        deadline = time.monotonic() + 120
        while "working" not in (log.read_text() if log.exists() else ""):
            assert engine.poll() is None and time.monotonic() < deadline, engine.communicate()[0][-3000:]
            time.sleep(0.05)
        pid = int(log.read_text().split("attempt pid ")[1].split()[0])
        os.kill(pid, signal.SIGTERM)
        engine.communicate(timeout=120)
        assert engine.returncode != 0
    finally:
        engine.kill()
    first = log.read_text().splitlines()
    assert len(first) == 2 and first[1].endswith(f" ERROR skrd4ad.stage.job: {TERMINATED}"), first

    completes(tmp_path, ENV)
    lines = log.read_text().splitlines()
    assert lines[:2] == first, lines  # the stopped attempt's lines, kept
    assert "INFO skrd4ad.stage: ===== attempt 2 of this job starts here; the lines above are its earlier " \
           "attempt(s) =====" in lines[2], lines
    assert "working, attempt pid" in lines[3] and "job done in" in lines[4] and len(lines) == 5, lines

    completes(tmp_path, ENV, "-F")
    fresh = log.read_text().splitlines()
    assert len(fresh) == 2 and "working" in fresh[0] and "job done in" in fresh[1], fresh
    assert [p.name for p in log.parent.iterdir()] == ["job.log"]  # nothing kept once completed
