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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

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
