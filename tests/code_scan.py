"""The string literals of the project's code: what the "no plug-in name outside its own module"
tests scan (sources in test_sources.py, variants in test_variant_plugin.py)."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

from pipeline_fixtures import REPO


def code_files() -> list[Path]:
    """Every Python file of ``skrd4ad/`` and ``workflow/``, the rule files and the Snakefile."""
    return [*sorted((REPO / "skrd4ad").rglob("*.py")), *sorted((REPO / "workflow").rglob("*.py")),
            *sorted((REPO / "workflow").rglob("*.smk")), REPO / "Snakefile"]


def string_tokens(path: Path) -> list[tuple[int, str]]:
    """``(line, literal as written)`` for each string token of a Python or Snakemake file."""
    if path.suffix != ".py" and path.name != "Snakefile" and path.suffix != ".smk":
        return []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], t.string) for t in tokens if t.type == tokenize.STRING]
