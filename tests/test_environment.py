"""The pinned environment (issue 33, item 21): README commands 1 and 2, CI and the Snakemake conda
env install with ``constraints.txt``, which pins every package whose version provenance records
and every declared dependency, so a fresh clone reproduces the committed provenance."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            m = PIN.match(line.strip())
            assert m, f"constraints.txt: {line!r} is not name==version"
            pins[_norm(m[1])] = m[2]
    return pins


def test_every_declared_dependency_is_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("pipeline", "export", "test"):
        declared += [d for d in project["optional-dependencies"][extra] if not d.startswith("skrd4ad")]
    names = {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in declared}
    missing = sorted(names - set(_pins()))
    assert not missing, f"constraints.txt does not pin {missing}: regenerate it (its header says how)"


def test_the_installed_versions_are_the_pinned_ones() -> None:
    """What provenance.json records (skrd4ad.provenance) is what constraints.txt installs."""
    from skrd4ad.provenance import _PACKAGES

    pins = _pins()
    drift = {name: (metadata.version(name), pins.get(_norm(name))) for name in _PACKAGES
             if name != "skrd4ad" and metadata.version(name) != pins.get(_norm(name))}
    assert not drift, f"installed vs pinned: {drift}; pip install -c constraints.txt -e '.[pipeline,test]'"


def test_every_install_uses_the_constraints() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [line for line in readme[:20] if line.startswith("python3.11 -m venv")]
    assert len(commands) == 2 and all("pip install -c constraints.txt -e" in c for c in commands), commands
    assert "pip install -q -c constraints.txt -e" in (REPO / ".ci" / "run").read_text()
    assert "- -c ../../constraints.txt" in (REPO / "workflow" / "envs" / "skrd4ad.yaml").read_text()
