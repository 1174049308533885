"""Small file helpers shared by every module: atomic writes, hashing, JSON, staging folders.

Every output the package writes goes through :func:`atomic_path` (or the helpers built on
it), so an interrupted run never leaves a half-written file under the final name. A full disk
(``ENOSPC``) or an exceeded quota (``EDQUOT``) while writing raises :class:`DiskFullError`
naming the final file; the previous file, if any, is kept and no temporary file is left. An
output that cannot be written at all (read-only file system, a parent that is a file, permission
denied) raises :class:`OutputError` naming the final path, the cause and what to do.

Folders built in place and renamed when complete (prepared caches, extracted archives) live in
a :class:`StagingDir` that the next run of the same kind removes if its owner was killed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: staging liveness falls back to never removing
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
"""``errno`` values reported as :class:`DiskFullError`: no space left, disk quota exceeded."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


# ---------------------------------------------------------------------------------- full disk


class DiskFullError(OSError):
    """No space left on the device (or quota exceeded) while writing a file.

    ``str(err)`` is ``no space left on device while writing <file>; <N> MB needed`` (the size
    part only where it is known; ``disk quota exceeded while writing ...`` for ``EDQUOT``);
    ``err.errno`` is ``ENOSPC`` or ``EDQUOT`` and ``err.filename`` the file.
    """

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


def format_mb(n_bytes: int | float, *, up: bool = True) -> str:
    """Bytes as megabytes (10**6 bytes) with one decimal, rounded up (1 byte -> ``0.1``) or down."""
    tenths = math.ceil(n_bytes / 1e5) if up else math.floor(max(n_bytes, 0) / 1e5)
    return f"{tenths / 10:.1f}"


def disk_full_error(
    path: str | os.PathLike[str],
    needed: int | None = None,
    *,
    free: int | None = None,
    err_no: int = errno.ENOSPC,
) -> DiskFullError:
    """A :class:`DiskFullError` for ``path`` (``needed``/``free`` bytes appear in the message when given)."""
    what = "no space left on device" if err_no != getattr(errno, "EDQUOT", None) else "disk quota exceeded"
    msg = f"{what} while writing {path}"
    if needed is not None:
        msg += f"; {format_mb(needed)} MB needed"
        if free is not None:
            msg += f", {format_mb(free, up=False)} MB free"
    return DiskFullError(err_no, msg, str(path))


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike[str], needed: int | None = None) -> Iterator[None]:
    """Turn an ``OSError`` with ``ENOSPC``/``EDQUOT`` raised in the block into :class:`DiskFullError`
    naming ``path`` (and ``needed`` bytes where known). A :class:`DiskFullError` passes unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path, needed, err_no=err.errno) from err
        raise


# ---------------------------------------------------------------------------------- unwritable output


class OutputError(OSError):
    """An output path that cannot be written: read-only file system, a parent that is a file, or
    permission denied. ``str(err)`` is one line, ``cannot write <path>: <cause>; <what to do>``;
    ``err.errno`` is the original one (``EROFS``, ``ENOTDIR``/``EEXIST``, ``EACCES``/``EPERM``)."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


_UNWRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` that is not a folder (a file where a folder must be)."""
    for parent in path.parents:
        if os.path.lexists(parent):
            return None if parent.is_dir() else parent
    return None


def output_error(path: str | os.PathLike[str], err: OSError) -> OSError:
    """The :class:`OutputError` for ``err`` met while creating ``path`` (or ``err`` itself when it is
    not one of: read-only file system, a file in place of a parent folder, permission denied)."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        why = f"{blocker} is a file, not a folder; move it away or choose another output path"
    elif err.errno == errno.EISDIR and path.is_dir():
        why = "a folder of that name is in the way; give a file path or move the folder away"
    elif err.errno == errno.EROFS:
        why = "the file system is read-only; choose another output path (or remount it read-write)"
    elif err.errno in (errno.EACCES, errno.EPERM):
        where = err.filename if err.filename else path.parent
        folder = Path(where) if Path(where).is_dir() else Path(where).parent
        why = f"permission denied in {folder}; choose another output path or fix the folder's permissions"
    else:
        return err
    return OutputError(err.errno, f"cannot write {path}: {why}", str(path))


@contextlib.contextmanager
def unwritable_as_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block while creating ``path`` (its folders, a temporary
    beside it, the final rename) into :class:`OutputError` naming ``path`` and the fix."""
    try:
        yield
    except (OutputError, DiskFullError):
        raise
    except OSError as err:
        if err.errno in _UNWRITABLE_ERRNOS:
            raise output_error(path, err) from err
        raise


def writable_dir(folder: str | os.PathLike[str], target: str | os.PathLike[str] | None = None) -> Path:
    """Create ``folder`` and check that it can be written (before a long job or a download):
    :class:`OutputError` naming ``target`` (default: ``folder``) when it cannot. Returns ``folder``."""
    folder = Path(folder)
    with unwritable_as_error(folder if target is None else target):
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, "Read-only file system", str(folder))
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
    return folder


def space_margin(needed: int) -> int:
    """Safety margin added to a size estimate before comparing it with the free space: 1 MiB + 1 %."""
    return (1 << 20) + needed // 100


def check_free_space(directory: str | os.PathLike[str], needed: int, target: str | os.PathLike[str]) -> None:
    """Raise :class:`DiskFullError` naming ``target`` when the file system of ``directory`` has less
    than ``needed`` bytes plus :func:`space_margin` free (for this user: ``shutil.disk_usage``)."""
    total = needed + space_margin(needed)
    free = shutil.disk_usage(directory).free
    if free < total:
        raise disk_full_error(target, total, free=free)


# ---------------------------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory (so the final ``os.replace`` is atomic)
    and is removed if the block raises. A full disk or quota raises :class:`DiskFullError`
    naming ``path`` (and ``size`` bytes, when the caller knows what it writes).

    >>> with atomic_path("out.txt") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("hello")
    """
    path = Path(path)
    with disk_full_as_error(path, size):
        with unwritable_as_error(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the final file the usual mode
            yield tmp
            with unwritable_as_error(path):  # e.g. a folder where the file goes
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path, size=len(text.encode("utf-8"))) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, keys sorted, trailing newline."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def save_torch_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` into memory, then write atomically.

    Saving to a file path names the zip archive inside after the (random) temporary file, so
    the same object would give different bytes each run; saving to a buffer gives identical
    bytes for identical content, which keeps DVC hashes and provenance stable.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename the finished directory ``staging`` onto ``target`` (same filesystem).  An existing
    ``target`` is moved aside first and deleted afterwards; if the final rename fails it is put
    back, so ``target`` is always either the old or the new directory."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        with unwritable_as_error(target):
            os.replace(staging, target)
        return
    with unwritable_as_error(target):
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, trash / "old")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(trash / "old", target)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- staging folders

STAGING_LOCK = ".skrd4ad-staging.lock"
"""Lock file inside a live :class:`StagingDir`, ``flock``-ed by its owner for the folder's lifetime."""

HOST_TAG = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"
"""This machine's name as it appears in staging folder names (dots and other characters as ``-``)."""

_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp puts between prefix and suffix


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (an unknown answer counts as alive)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, belongs to someone else
        return True
    return True


def tree_disk_usage(path: Path) -> int:
    """Bytes allocated on disk by the files under ``path`` (apparent size where blocks are unknown)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            blocks = getattr(st, "st_blocks", None)
            total += blocks * 512 if blocks is not None else st.st_size
    return total


def _try_lock(folder: Path) -> tuple[bool | None, int | None]:
    """Test the owner's lock of ``folder``: ``(True, fd)`` it was free and is now ours (owner gone),
    ``(False, None)`` it is held (owner alive), ``(None, None)`` no lock file or no working flock."""
    if fcntl is None:
        return None, None
    try:
        fd = os.open(folder / STAGING_LOCK, os.O_RDWR)
    except OSError:  # no lock file (legacy folder, being created or sealed), or not ours to open
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False, None
    except OSError:  # ENOLCK / EOPNOTSUPP...: the file system has no flock
        os.close(fd)
        return None, None
    return True, fd


def clean_stale_staging(parent: str | os.PathLike[str], name: str, kind: str) -> list[Path]:
    """Remove staging folders ``<parent>/.<name>.*.<kind>`` whose owner is gone; return them.

    Only this kind and name are considered (``.<name>.<host>-p<pid>.<random>.<kind>``, and the
    older ``.<name>.<random>.<kind>`` without owner). A folder is removed when

    * its lock file can be locked (``flock``: the owner holds it until the folder is gone, and
      the kernel releases it when the owner dies, even by SIGKILL), or
    * it has no lock file, or the file system has no ``flock``, and its name says it was made on
      this machine by a process that no longer exists, or
    * it has the old name without owner (written by versions before staging folders were locked).

    Anything else (a held lock; no usable lock and another machine or a live pid) is kept. One
    warning line per removed folder gives its size.
    """
    parent = Path(parent)
    pattern = re.compile(
        rf"\.{re.escape(name)}\.(?:(?P<host>[A-Za-z0-9-]+)-p(?P<pid>\d+)\.)?{_RANDOM}\.{re.escape(kind)}"
    )
    try:
        entries = sorted(os.scandir(parent), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        free, fd = _try_lock(folder)
        if free is None:
            if match["pid"] is None:
                free = True  # pre-lock name: only older versions made these
            else:
                free = match["host"] == HOST_TAG and not _pid_alive(int(match["pid"]))
        try:
            if not free:
                continue
            size = tree_disk_usage(folder)
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
                log.warning("removed stale staging folder %s (%s MB) left by an interrupted run", folder,
                            format_mb(size))
        finally:
            if fd is not None:
                os.close(fd)
    return removed


class StagingDir:
    """A new temporary folder ``<parent>/.<name>.<host>-p<pid>.<random>.<kind>`` owned by this process.

    On entering, stale folders of the same ``name`` and ``kind`` left by killed runs are removed
    (:func:`clean_stale_staging`), then the folder is made with a lock file that this process
    holds (``flock``) until the folder is gone. Build the output in :attr:`path`, call
    :meth:`seal` (removes the lock file) and rename the folder into place; on leaving, whatever is
    still at :attr:`path` is deleted. ``with StagingDir(out.parent, out.name, "prepare") as st: ...``
    """

    def __init__(self, parent: str | os.PathLike[str], name: str, kind: str) -> None:
        self.parent, self.name, self.kind = Path(parent), name, kind
        self.path = self.parent / f".{name}.{kind}"  # replaced on enter
        self._fd: int | None = None

    def __enter__(self) -> StagingDir:
        with disk_full_as_error(self.parent / self.name), unwritable_as_error(self.parent / self.name):
            self.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_staging(self.parent, self.name, self.kind)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.name}.{HOST_TAG}-p{os.getpid()}.",
                                              suffix=f".{self.kind}", dir=self.parent))
            try:
                self._lock()
            except BaseException:
                self._remove()
                raise
        return self

    def _lock(self) -> None:
        """Create the lock file already locked: made under another name, locked, then renamed, so a
        cleaner never finds an unlocked lock file of a live folder."""
        if fcntl is None:
            return
        new = self.path / (STAGING_LOCK + ".new")
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no flock on this file system: the pid in the name decides
            os.close(fd)
            new.unlink(missing_ok=True)
            return
        self._fd = fd
        os.replace(new, self.path / STAGING_LOCK)

    def seal(self) -> None:
        """Remove the lock file (keep holding its lock) before renaming the folder into place."""
        (self.path / STAGING_LOCK).unlink(missing_ok=True)

    def _remove(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:  # release only once the folder is gone
            os.close(self._fd)
            self._fd = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._remove()
