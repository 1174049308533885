"""The package's import structure (issue 31): no import circle between its files, the params
schema on the ground floor, data/ and models/ below the configs and the workflow glue, and the
deploy-time modules free of the workflow glue.  Imports inside functions count (they run);
those under ``if TYPE_CHECKING:`` do not.  Read from the source with ``ast``, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skrd4ad"
#: The workflow glue: what the stage scripts and the engines use, not a deployed model.
GLUE = {"skrd4ad.params", "skrd4ad.stage", "skrd4ad.jobparams", "skrd4ad.contrasts", "skrd4ad.jobcode",
        "skrd4ad.aggregate", "skrd4ad.engines", "skrd4ad.cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> set[str]:
    """The package modules ``name`` imports (a package stands for its ``__init__``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "skrd4ad":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "skrd4ad":
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    add(full if full in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _reaches(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_reader_sees_imports() -> None:
    """The reader is not blind: known edges, including one inside a function."""
    assert "skrd4ad.schema" in GRAPH["skrd4ad.params"]
    assert "skrd4ad.models.variants" in GRAPH["skrd4ad.models.build"]
    assert "skrd4ad.user_cache" in GRAPH["skrd4ad.models.teacher"]  # imported inside a method
    assert "skrd4ad.models.rd4ad" not in GRAPH["skrd4ad.models.variants.base"]  # TYPE_CHECKING only


def test_no_import_circle() -> None:
    circles = sorted(name for name in GRAPH if name in _reaches(name))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_the_schema_is_the_ground_floor() -> None:
    assert GRAPH["skrd4ad.schema"] == set()


@pytest.mark.parametrize("layer", ["skrd4ad.data", "skrd4ad.models"])
def test_data_and_models_stay_below_the_configs_and_the_glue(layer: str) -> None:
    above = {"skrd4ad.config", *GLUE, "skrd4ad.train", "skrd4ad.evaluate"}
    bad = {name: sorted(GRAPH[name] & above) for name in GRAPH
           if (name == layer or name.startswith(layer + ".")) and GRAPH[name] & above}
    assert not bad, bad


@pytest.mark.parametrize("module", ["skrd4ad.thresholds", "skrd4ad.predict", "skrd4ad.export", "skrd4ad.inference"])
def test_deploy_modules_do_not_reach_the_workflow_glue(module: str) -> None:
    assert not _reaches(module) & GLUE, sorted(_reaches(module) & GLUE)
