"""A pipeline job dies with the engine that started it (issue 21, item 14).

When Snakemake or DVC is killed (SIGKILL, OOM killer), its running jobs would otherwise go on as
orphans until they end, holding the CPU/GPU and racing the next run for the same outputs.
:func:`die_with_parent` (called by every stage script at start) makes the job receive SIGTERM:

* at once through Linux's ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, when its direct parent dies;
* within ``poll_s`` seconds from a watcher thread when any ancestor up to the engine dies (the
  job may be started through a shell, ``bash -c``, that outlives a killed engine): the watcher
  records the ancestor pids at start and checks that each is still alive.

Run by hand (no engine among the ancestors) nothing changes but the SIGTERM handling.
SIGTERM raises :class:`Terminated` in the main thread, so ``finally`` blocks and atomic writes
clean up (no temporary or half-written output is left under a final name) and the stage exits
with status 143; training resumes from its last saved state at the next run. On other systems
only the watcher runs (no ``prctl``); on non-POSIX systems nothing is done.

What a stopped job leaves (issue 33): a SIGTERM while the stage script is still importing ends it
with the same one line (:func:`stop_on_sigterm`, the first call of every stage script; this module
imports nothing heavy), and its Snakemake log survives the re-run (:func:`attempt_log`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Parent logger of the stage scripts' own lines (``skrd4ad.stage.<stage>``).
STAGE_LOGGER = "skrd4ad.stage"
#: How every line of a stage's log reads (Snakemake's log file and the console).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The message a stage stopped by SIGTERM ends with.
TERMINATED = "terminated (SIGTERM): stopped; outputs are either complete or absent, training resumes at the next run"
#: The start of the line that separates two attempts of a job in its log.
ATTEMPT_MARK = "===== attempt "

PR_SET_PDEATHSIG = 1
#: Process names that count as the engine (the watcher follows ancestors up to the first of these).
ENGINES = ("snakemake", "dvc")


class Terminated(BaseException):
    """SIGTERM received (the engine died, or someone stopped the job); not an ``Exception``, so
    ``except Exception`` in library code does not swallow it."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signum}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def ancestors(limit: int = 4) -> list[int]:
    """Pids from the parent up to the engine process (``snakemake``/``dvc`` in its command line),
    at most ``limit`` of them; empty when no engine is found (``/proc`` missing, or run by hand)."""
    chain, pid = [], os.getppid()
    while pid > 1 and len(chain) < limit:
        chain.append(pid)
        if any(os.path.basename(part) in ENGINES for part in _cmdline(pid).split()[:3]):
            return chain
        pid = _ppid_of(pid)
    return []


def _alive(pid: int, start: str) -> bool:
    """Whether ``pid`` is still the process it was (same start time in /proc: pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return _start_time(pid) in ("", start)


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here, not at the top: stop_on_sigterm runs before a stage script's imports
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(poll_s: float = 1.0) -> bool:
    """Make this process get SIGTERM when its engine (or the shell in between) dies, and turn
    SIGTERM into :class:`Terminated`. Call from the main thread at the start of a job. Returns
    whether a guard is active (False on non-POSIX systems or outside the main thread)."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    parent = os.getppid()
    chain = ancestors()
    if not chain:  # run by hand (nohup, a terminal): the job outlives its shell as it always did
        return False
    _set_pdeathsig(signal.SIGTERM)
    watched = [(pid, _start_time(pid)) for pid in chain]
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    me = os.getpid()

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if os.getppid() != parent or not all(_alive(pid, start) for pid, start in watched):
                log.error("the engine that started this job is gone: stopping (the next run resumes)")
                os.kill(me, signal.SIGTERM)
                return

    threading.Thread(target=watch, name="skrd4ad-lifeline", daemon=True).start()
    return True


def _log_line(name: str, level: int, message: str) -> str:
    """One line as the stage's logging writes it (:data:`LOG_FORMAT`), for writes outside logging."""
    record = logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                                    "msg": message})
    return logging.Formatter(LOG_FORMAT).format(record) + "\n"


def stop_on_sigterm(stage: str, script_globals: dict[str, Any]) -> None:
    """First call of a stage script, before its other imports: a SIGTERM from here until
    :func:`die_with_parent` takes over ends the job with the one ``ERROR`` line :data:`TERMINATED`
    on stderr (and in Snakemake's log file, ``snakemake`` in ``script_globals``) and status 143,
    instead of a silent kill or a traceback from the middle of an import.  Python's own start and
    Snakemake's preamble, before the script's first line, stay as they were.  A script imported as
    a module (tests) changes nothing."""
    if (os.name != "posix" or script_globals.get("__name__") != "__main__"
            or threading.current_thread() is not threading.main_thread()):
        return
    sm = script_globals.get("snakemake")
    log_file = next(iter(sm.log), None) if sm is not None else None

    def starting(signum: int, frame: object) -> None:
        line = _log_line(f"{STAGE_LOGGER}.{stage}", logging.ERROR, TERMINATED)
        sys.stderr.write(line)
        if log_file:
            try:
                with open(attempt_log(log_file), "a", encoding="utf-8") as f:
                    f.write(line)
            except OSError:
                pass  # the console has the line
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, starting)


#: The log files this process has prepared for its attempt (see :func:`attempt_log`).
_opened: set[str] = set()


def _keeper(log_file: Path) -> Path:
    return log_file.with_name(f".{log_file.name}.attempts")


def attempt_log(log_file: str | Path) -> Path:
    """Snakemake's ``log:`` file of this job, ready to append to: after a stopped or failed attempt,
    the earlier attempts' lines, then a separator line ``===== attempt N ...``; a fresh file otherwise.

    Snakemake deletes a job's log before it runs the job again.  A hidden hard link beside it,
    ``.<name>.attempts``, holds the same file until the job completes (:func:`log_completed`
    removes it), so a re-run finds the earlier attempts there, even after a SIGKILL, and puts them
    back: the log of a job that completed at its Nth try reads attempt 1 to N, the last line
    ``<stage> done in``; the re-run of a completed job starts a fresh log.  Where the file system
    has no hard links, each attempt starts a fresh log.  Called once per process per file (later
    calls return the same path)."""
    path = Path(log_file)
    if str(path) in _opened:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = _keeper(path)
    try:
        if keep.exists() and (not path.exists() or os.path.samefile(keep, path)):
            if not path.exists():
                os.link(keep, path)
            attempt = path.read_text(encoding="utf-8", errors="replace").count(ATTEMPT_MARK) + 2
            with open(path, "a", encoding="utf-8") as f:
                f.write(_log_line(STAGE_LOGGER, logging.INFO, f"{ATTEMPT_MARK}{attempt} of this job starts here; "
                                  "the lines above are its earlier attempt(s) ====="))
        else:
            path.write_text("")
            keep.unlink(missing_ok=True)
            os.link(path, keep)
    except OSError:  # no hard links here: this attempt's log alone, as before
        path.touch()
    _opened.add(str(path))
    return path


def log_completed(log_file: str | Path) -> None:
    """The job whose log this is completed: its next run starts a fresh log (see :func:`attempt_log`)."""
    path = Path(log_file)
    _opened.discard(str(path))
    _keeper(path).unlink(missing_ok=True)
