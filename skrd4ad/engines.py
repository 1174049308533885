"""Snakemake and DVC on one tree: one engine at a time.

Both engines write the same outputs (skrd4ad/paths.py ``PATHS``), so running them at once
lets DVC check cached outputs out over files Snakemake is writing.  What DVC leaves on disk while
it runs (DVC 3, read from its source and checked by sampling a ``dvc repro`` / ``dvc exp run``):

* its repository lock ``.dvc/tmp/lock`` (``dvc.lock.Lock``: zc.lockfile, an exclusive
  non-blocking ``flock``; the file then holds `` <pid>``), taken on start and held while DVC
  itself reads or writes the tree, but *released while a stage's command runs*
  (``dvc.stage.decorators.unlocked_repo``);
* meanwhile ``.dvc/tmp/rwlock``, a JSON file naming the stage's deps and outs with DVC's pid and
  command line (``dvc.rwlock``);
* for ``dvc exp run`` in the workspace, ``.dvc/tmp/exps/run/workspace/workspace.json`` with its
  pid, for the whole experiment.

A real Snakemake run takes a *shared* ``flock`` on ``.dvc/tmp/lock`` in its main process for as
long as it runs (:func:`hold_for_snakemake`, from ``onstart`` in workflow/rules/common.smk), then
checks the other two files.  So:

* DVC started during a Snakemake run cannot take its lock and stops before touching anything,
  with its own message ("Unable to acquire lock.  Most likely another DVC process is running or
  was terminated abruptly ..."): DVC cannot be made to name Snakemake, but the lock file says
  `` <pid> snakemake``.  ``dvc repro --wait-for-lock`` waits instead of failing.
* Snakemake started while DVC runs stops before its first job with :data:`BUSY`.
* Several Snakemake runs on disjoint targets may still share the tree (shared locks coexist);
  Snakemake's own ``.snakemake/locks`` keeps overlapping ones apart, as before.

The kernel drops a ``flock`` when its process exits, however it exits, and entries of dead pids
are ignored, as DVC does: no stale locks.  Not covered: ``core.hardlink_lock`` (DVC then uses
flufl.lock: the guard is off, with a warning), platforms without ``fcntl`` (Windows), the ~0.1 s
between a ``dvc exp run`` staging its params and recording its pid, and Snakemake modes that
write without running jobs (``--touch`` is covered; ``--delete-all-output`` is not).
"""

from __future__ import annotations

import configparser
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ModuleNotFoundError:  # pragma: no cover - Windows: DVC locks with msvcrt there; no guard
    fcntl = None  # type: ignore[assignment]

#: DVC's repository lock, relative to the repository root.
DVC_LOCK = Path(".dvc/tmp/lock")
#: DVC's record of the stages running now: ``{"write": {path: info}, "read": {path: [info]}}``.
DVC_RWLOCK = Path(".dvc/tmp/rwlock")
#: The pid of a ``dvc exp run`` running in the workspace (dvc_task ``ProcessInfo``).
DVC_WORKSPACE_EXP = Path(".dvc/tmp/exps/run/workspace/workspace.json")
#: Written by the first DVC stage (workflow/scripts/validate_params.py) once params.yaml is valid;
#: every other stage depends on it, so DVC validates before it removes any output.  Constant
#: content: a valid params change re-runs nothing through it.  Snakemake validates while parsing
#: and writes the same file (rule validate_params) so both engines declare the same outputs.
PARAMS_CHECK = "data/params.ok"

BUSY = "DVC is running on this tree ({who}); wait until it finishes{hint}, then start Snakemake again"
WAIT_HINT = " (`while kill -0 {pid} 2>/dev/null; do sleep 5; done` waits for it)"

_held: list[IO[str]] = []  # open lock files of this process: closing one drops its lock


class EngineBusy(RuntimeError):
    """The other engine is running on this tree."""


def _uses_flock(root: Path) -> bool:
    """False where DVC's lock is not a ``flock``: no fcntl, or ``core.hardlink_lock`` set in the
    repository's DVC config (global and system configs are not read)."""
    if fcntl is None:
        return False
    config = configparser.ConfigParser()
    config.read([root / ".dvc/config", root / ".dvc/config.local"])
    return not config.getboolean("core", "hardlink_lock", fallback=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _command(argv: list[str]) -> str:
    """``dvc repro`` from ``[".../python", ".../bin/dvc", "repro"]``: short, on one line."""
    if len(argv) > 1 and Path(argv[0]).name.startswith("python"):
        argv = argv[1:]
    words = [Path(argv[0]).name, *argv[1:4]] if argv else []
    return " ".join(" ".join(words).split())[:60]


def _who(pid: int, cmd: str | None = None) -> str:
    """``pid N: dvc repro``: the command from /proc (Linux), else as DVC recorded it."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        argv = cmd.split() if cmd else []
    return f"pid {pid}: {_command(argv)}" if argv else f"pid {pid}"


def _busy(pid: int | None, who: str) -> EngineBusy:
    return EngineBusy(BUSY.format(who=who, hint=WAIT_HINT.format(pid=pid) if pid else ""))


def _lock_owner(root: Path) -> tuple[int | None, str]:
    """Pid and description of the process that last took DVC's lock (zc.lockfile writes `` <pid>``)."""
    try:
        pid = int((root / DVC_LOCK).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None, f"it holds {DVC_LOCK}"
    return pid, f"{_who(pid)}; it holds {DVC_LOCK}"


def _running_stage(root: Path) -> tuple[int, str] | None:
    """A live DVC process that recorded a running stage or a workspace experiment, or None."""
    infos: list[dict[str, Any]] = []
    rwlock = root / DVC_RWLOCK
    if rwlock.is_file():
        # read under DVC's guard of the file (an exclusive flock, held for a few ms per edit)
        with open(root / DVC_RWLOCK.with_name("rwlock.lock"), "a+") as guard:
            fcntl.flock(guard.fileno(), fcntl.LOCK_SH)
            try:
                data = json.loads(rwlock.read_text() or "{}")
            except (OSError, ValueError):
                data = {}
        infos += list(data.get("write", {}).values())
        infos += [info for readers in data.get("read", {}).values() for info in readers]
    try:
        infos.append(json.loads((root / DVC_WORKSPACE_EXP).read_text()))
    except (OSError, ValueError):
        pass
    for info in infos:
        if isinstance(info, dict) and isinstance(info.get("pid"), int) and _alive(info["pid"]):
            return info["pid"], _who(info["pid"], info.get("cmd"))
    return None


def _try_shared(lock: Path) -> IO[str] | None:
    """The lock file opened with a shared ``flock`` taken, or None while DVC holds it."""
    fp = open(lock, "a+")  # like zc.lockfile: never truncate DVC's content before locking
    try:
        fcntl.flock(fp.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        fp.close()
        return None
    return fp


def dvc_holder(root: str | Path = ".") -> str | None:
    """Who runs DVC on ``root`` (``pid N: dvc repro; ...``), or None.

    Takes and drops a shared lock at once: a DVC command wanting it in that instant retries for
    3 s (``dvc.lock.Lock``), so probing never makes it fail."""
    root = Path(root)
    lock = root / DVC_LOCK
    if not lock.is_file() or not _uses_flock(root):
        return None
    fp = _try_shared(lock)
    if fp is None:
        return _lock_owner(root)[1]
    try:
        running = _running_stage(root)
    finally:
        fp.close()
    return running[1] if running else None


def hold_for_snakemake(root: str | Path = ".", wait_s: float = 3.0) -> bool:
    """Take DVC's lock (shared) for the rest of this process; True if taken, False where there is
    nothing to lock (not a DVC repository, or ``core.hardlink_lock``).  Raises
    :class:`EngineBusy` with :data:`BUSY` while a DVC command runs on ``root``.  Retries the lock
    for ``wait_s`` seconds first, as DVC does: short commands (``dvc status``) hold it briefly.

    Call it only from Snakemake's main process of a real run (``onstart``): remote jobs re-parse
    the Snakefile while the main process holds the lock, and dry runs must not block DVC."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        return False
    if not _uses_flock(root):
        print("Warning: DVC's core.hardlink_lock is set; Snakemake cannot tell whether DVC runs on "
              "this tree, so do not start both at once", file=sys.stderr)
        return False
    lock = root / DVC_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)  # DVC makes .dvc/tmp on first use; a fresh clone lacks it
    deadline = time.monotonic() + wait_s
    while (fp := _try_shared(lock)) is None and time.monotonic() < deadline:
        time.sleep(0.25)
    if fp is None:
        raise _busy(*_lock_owner(root))
    # DVC releases its lock while a stage's command runs: look for that stage too, now that no DVC
    # can take the lock (and so start a new stage) behind our back.
    running = _running_stage(root)
    if running:
        fp.close()
        raise _busy(*running)
    # Say who holds it to anyone reading the file after DVC's "Unable to acquire lock" (DVC itself
    # never reads it); several Snakemake runs may hold it, the last one to start is named.
    fp.seek(0)
    fp.truncate()
    fp.write(f" {os.getpid()} snakemake\n")
    fp.flush()
    _held.append(fp)
    return True


def release() -> None:
    """Drop the locks :func:`hold_for_snakemake` took (Snakemake just exits; tests call this)."""
    while _held:
        _held.pop().close()
