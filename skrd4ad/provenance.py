"""What produced an artefact: package versions, git revision, device."""

from __future__ import annotations

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
