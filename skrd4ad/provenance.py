"""What produced an artefact: package versions, the package's source digest, git revision.

Tracked outputs record :func:`code_provenance` (version + sha256 of the package source), never
the git revision: a same-code rerun must write the same bytes, and the revision differs (or
ends in ``-dirty``) while a run rewrites tracked files.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("skrd4ad", "torch", "torchvision", "numpy", "scipy", "scikit-image", "pandas")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that influence our numbers (``'missing'`` if absent)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def git_revision(cwd: str | Path | None = None) -> str | None:
    """``HEAD`` commit (with ``-dirty`` when the tree has changes) or None outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


#: The package folder whose source :func:`source_digest` hashes.
_PACKAGE = Path(__file__).resolve().parent
#: What counts as source: the Python modules and the params schema (defaults live there).
_SOURCE_PATTERNS = ("**/*.py", "params.schema.yaml")


def source_digest(root: str | Path = _PACKAGE) -> str:
    """sha256 hex over the package source files under ``root`` (sorted relative paths and bytes;
    ``__pycache__`` ignored): equal for equal code wherever and whenever it runs."""
    root = Path(root)
    files = sorted({p for pattern in _SOURCE_PATTERNS for p in root.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts})
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def code_provenance() -> dict[str, str]:
    """``{"skrd4ad": version, "source_sha256": source_digest()}``: the code that produced an output."""
    try:
        version = metadata.version("skrd4ad")
    except metadata.PackageNotFoundError:
        version = "missing"
    return {"skrd4ad": version, "source_sha256": source_digest()}
