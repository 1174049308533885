"""The code a pipeline job runs: its files and one digest of them, the one notion both engines
re-run on (Snakemake through a rule param, DVC through the files dvc.yaml lists).

A job's code is

- **shared**: its stage script and the package modules the script imports, followed through
  imports (also those inside functions; not those under ``if TYPE_CHECKING:``), stopping at the
  registries' plug-in modules (variants, dataset sources);
- **own**: for ``train`` and ``evaluate`` the variant's, for ``download`` and ``prepare`` the
  dataset source's: its module (a built-in's package folder) and what it imports that the
  stage's shared code does not, wherever the plug-in is installed (an entry point or
  ``SKRD4AD_VARIANTS``/``SKRD4AD_SOURCES`` module is followed within its own top-level package
  and ``skrd4ad``).

So editing RD++'s loss re-runs RD++'s trainings and evaluations only; editing the student,
teacher, loss or training loop re-runs every training (and, through the new checkpoints, every
evaluation); editing evaluation code re-runs every evaluation and no training.  The digest is
over the files' bytes and their names relative to their import root (``skrd4ad/train.py``,
``my_plugins/variant.py``), so a fresh clone, a new mtime or a reinstall elsewhere re-runs
nothing, while any byte changed, comments and docstrings included, re-runs (DVC hashes bytes,
and both engines must agree).  Importing this module imports neither numpy nor torch.

>>> "skrd4ad/train.py" in shared_files("train") and "skrd4ad/evaluate.py" not in shared_files("train")
True
>>> own_files("variant", "rdpp")[0]
'skrd4ad/models/variants/rdpp/__init__.py'
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sys
from pathlib import Path

__all__ = ["JOBS", "OWN", "shared_files", "dvc_deps", "expand_dvc_deps", "own_files", "own_stamp", "stamp_name", "job_files", "job_digest",
           "builtin_folder", "import_closure"]

#: Repository root (the folder holding ``workflow/`` and the package).
ROOT = Path(__file__).resolve().parents[1]
#: This package's import name (also under ``python -m``, where ``__name__`` is ``__main__``).
PACKAGE = (__spec__.name if __spec__ is not None else __name__).split(".")[0]
#: Each job's stage script, relative to :data:`ROOT`.
JOBS = {name: f"workflow/scripts/{name}.py" for name in
        ("validate_params", "code", "download", "fetch_teacher", "prepare", "train", "evaluate", "aggregate")}
#: Which plug-in kind's own code each job adds (``variant`` or ``source``).
OWN = {"train": "variant", "evaluate": "variant", "download": "source", "prepare": "source"}
#: Each plug-in kind's built-in package (its modules are not followed as shared code).
_REGISTRY_PACKAGE = {"variant": "skrd4ad.models.variants", "source": "skrd4ad.data.sources"}
#: Modules of a registry package that are shared, not plug-ins.
_NOT_PLUGINS = ("__init__", "base")


def _package_root(top: str) -> Path | None:
    """The folder that holds top-level module or package ``top`` (its import root), or None."""
    if top == PACKAGE:
        return ROOT
    spec = importlib.util.find_spec(top)  # a top-level name: imports nothing
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    origin = Path(spec.origin)
    return origin.parent.parent if origin.name == "__init__.py" else origin.parent


def _module_file(name: str) -> Path | None:
    """The file of module ``name`` (``pkg/mod.py`` or ``pkg/mod/__init__.py``) found on disk, or None."""
    root = _package_root(name.split(".")[0])
    if root is None:
        return None
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _py_files(folder: Path) -> set[Path]:
    """The Python files below ``folder`` (``__pycache__`` aside)."""
    return {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported_names(path: Path, here: str) -> list[str]:
    """Module names ``path`` (module ``here``) imports anywhere in its body, relative ones resolved;
    for ``from pkg import x`` both ``pkg`` and ``pkg.x`` (x may be a module)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in node.body for n in ast.walk(stmt)}
    is_pkg = path.name == "__init__.py"
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def _is_plugin_module(name: str) -> bool:
    for package in _REGISTRY_PACKAGE.values():
        if name.startswith(package + "."):
            return name[len(package) + 1:].split(".")[0] not in _NOT_PLUGINS
    return False


def import_closure(start: Path, tops: tuple[str, ...], *, stop_at_plugins: bool = False,
                   skip: frozenset[Path] = frozenset()) -> set[Path]:
    """Files of the modules ``start`` imports, directly or through others, within the top-level
    packages ``tops`` (each module's parent packages too); ``start`` itself included.  With
    ``stop_at_plugins`` the registries' built-in plug-in modules are neither included nor
    followed; files in ``skip`` are neither included nor followed."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen or path in skip:
            continue
        seen.add(path)
        top = next((t for t in tops if (r := _package_root(t)) is not None and path.is_relative_to(r / t)), None)
        here = _module_name(path, _package_root(top)) if top else ""
        for name in _imported_names(path, here):
            parts = name.split(".")
            if parts[0] not in tops:
                continue
            for k in range(1, len(parts) + 1):  # the module and its parent packages
                module = ".".join(parts[:k])
                if stop_at_plugins and _is_plugin_module(module):
                    break
                found = _module_file(module)
                if found is not None:
                    todo.append(found)
    return seen


def _script(job: str, cwd: Path) -> Path:
    """The stage script of ``job``: in the workflow being run (``cwd``), else beside the package."""
    if job not in JOBS:
        raise ValueError(f"unknown pipeline job {job!r}; one of {', '.join(JOBS)}")
    here = cwd / JOBS[job]
    return here.resolve() if here.is_file() else ROOT / JOBS[job]


@functools.lru_cache(maxsize=4096)
def _name(path: Path) -> str:
    """``path`` relative to its import root: the package's files to the repository, the stage
    scripts to the workflow, a plug-in's to the longest ``sys.path`` entry holding it (so a venv
    inside the repository or another Python version names it the same)."""
    if path.is_relative_to(ROOT / PACKAGE):
        return path.relative_to(ROOT).as_posix()
    for base in (Path.cwd().resolve(), ROOT):
        if path.is_relative_to(base / "workflow"):
            return path.relative_to(base).as_posix()
    roots = []
    for entry in sys.path:
        try:
            root = Path(entry or ".").resolve()
        except OSError:  # pragma: no cover - an unreadable sys.path entry
            continue
        if root.is_dir() and path.is_relative_to(root):
            roots.append(root)
    if roots:
        return path.relative_to(max(roots, key=lambda r: len(r.parts))).as_posix()
    return path.name  # pragma: no cover - a module off sys.path


def _sha256(path: Path) -> str:
    """sha256 hex of a file's bytes, remembered while its size and time stay the same."""
    st = path.stat()
    return _sha256_of(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shared(job: str) -> frozenset[Path]:
    return _shared_in(job, Path.cwd())


@functools.lru_cache(maxsize=None)
def _shared_in(job: str, cwd: Path) -> frozenset[Path]:
    return frozenset(import_closure(_script(job, cwd), (PACKAGE,), stop_at_plugins=True))


def shared_files(job: str) -> list[str]:
    """The stage script and package files every ``job`` runs, repository-relative and sorted."""
    return sorted(_name(p) for p in _shared(job))


def _plugin(kind: str, name: str) -> object:
    if kind == "variant":
        from skrd4ad.models import variants

        return variants.get(name)
    if kind == "source":
        from skrd4ad.data import sources

        return sources.get(name)
    raise ValueError(f"unknown plug-in kind {kind!r}; variant or source")


def _plugin_module(kind: str, name: str) -> tuple[str, Path]:
    """The module that defines plug-in ``name`` of ``kind``, and its file."""
    module_name = type(_plugin(kind, name)).__module__
    return module_name, Path(sys.modules[module_name].__file__).resolve()


def _own_paths(kind: str, name: str) -> tuple[Path, ...]:
    return _own_closure(kind, *_plugin_module(kind, name), Path.cwd())


@functools.lru_cache(maxsize=None)
def _own_closure(kind: str, module_name: str, start: Path, cwd: Path) -> tuple[Path, ...]:
    tops = tuple(dict.fromkeys((PACKAGE, module_name.split(".")[0])))
    # what every stage running the plug-in shares (its imports are the stages' code); a file only
    # some of them share stays its own, so each job's code holds all that the plug-in imports
    shared = frozenset.intersection(*(_shared(job) for job, k in OWN.items() if k == kind))
    own = import_closure(start, tops, skip=shared)
    if module_name.startswith(_REGISTRY_PACKAGE[kind] + "."):  # a built-in: its whole folder
        folder = start.parent if start.name == "__init__.py" else start
        own |= {folder} if folder.is_file() else _py_files(folder)
    return tuple(sorted(own, key=_name))


def own_files(kind: str, name: str) -> list[str]:
    """The own code of variant or source ``name``: its module (package) first, then the files it
    imports that the stages running it do not share, each relative to its import root."""
    module = _plugin_module(kind, name)[1]
    return [_name(module)] + [_name(p) for p in _own_paths(kind, name) if p != module]


def builtin_folder(kind: str) -> str:
    """Repository-relative folder of a kind's built-in plug-ins (``<folder>/<name>`` holds one's code)."""
    return _REGISTRY_PACKAGE[kind].replace(".", "/")


def _paths(job: str, plugin: str | None) -> list[Path]:
    paths = set(_shared(job))
    kind = OWN.get(job)
    if kind is not None:
        if plugin is None:
            raise ValueError(f"job {job} runs one {kind}: pass its name")
        paths |= set(_own_paths(kind, plugin))
    elif plugin is not None:
        raise ValueError(f"job {job} runs no variant or source; got {plugin!r}")
    return sorted(paths, key=_name)


def job_files(job: str, plugin: str | None = None) -> list[str]:
    """Every file of ``job`` (with ``plugin``, the variant or source it runs), sorted."""
    return [_name(p) for p in _paths(job, plugin)]


def _digest(files: dict[str, str]) -> str:
    """sha256 hex over ``{name: sha256 hex}`` in name order."""
    h = hashlib.sha256()
    for name, sha in sorted(files.items()):
        h.update(name.encode() + b"\0" + bytes.fromhex(sha))
    return h.hexdigest()


def job_digest(job: str, plugin: str | None = None) -> str:
    """sha256 hex over the names and bytes of :func:`job_files`: equal for equal code anywhere."""
    return _digest({_name(p): _sha256(p) for p in _paths(job, plugin)})


def stamp_name(kind: str, name: str) -> str:
    """File name of a plug-in's own-code stamp in ``data/code/`` (DVC's ``code`` stage)."""
    return f"{kind}-{name}.json"


def own_stamp(kind: str, name: str) -> dict[str, object]:
    """What DVC's ``code`` stage records of a plug-in's own code: each file's sha256 by name, and
    their digest (``own_sha256``); equal for equal code wherever it is installed."""
    files = {_name(p): _sha256(p) for p in _own_paths(kind, name)}
    return {"kind": kind, "name": name, "own_sha256": _digest(files), "files": dict(sorted(files.items()))}


def dvc_deps(job: str) -> list[str]:
    """:func:`shared_files` of ``job`` as dvc.yaml lists them: a folder whose every module the
    job runs (and which holds no plug-in) stands for its files."""
    files = set(shared_files(job))
    plugins = {builtin_folder(kind) for kind in _REGISTRY_PACKAGE}
    entries: list[str] = []
    for folder in sorted({str(Path(f).parent) for f in files}, key=len):
        if any(folder == e or folder.startswith(e + "/") for e in entries):
            continue
        inside = expand_dvc_deps([folder])
        if folder not in (PACKAGE, "workflow/scripts") and inside <= files and not any(
                folder == p or folder.startswith(p + "/") or p.startswith(folder + "/") for p in plugins):
            entries.append(folder)
    rest = [f for f in files if not any(f.startswith(e + "/") for e in entries)]
    return sorted(entries + rest)


def expand_dvc_deps(entries: list[str]) -> set[str]:
    """The files that dvc.yaml's code entries stand for (a folder: its ``.py`` files)."""
    out: set[str] = set()
    for entry in entries:
        path = ROOT / entry
        out |= {p.relative_to(ROOT).as_posix() for p in _py_files(path)} if path.is_dir() else {entry}
    return out


def main() -> None:
    """``python -m skrd4ad.jobcode``: each job's code entries as dvc.yaml lists them, and the own
    files of every registered variant and source."""
    from skrd4ad.data import sources
    from skrd4ad.models import variants

    for job in JOBS:
        print(f"{job}:")
        print("\n".join(f"  - {f}" for f in dvc_deps(job)))
    for kind, names in (("variant", variants.names()), ("source", sources.names())):
        for name in names:
            print(f"{kind} {name}:")
            print("\n".join(f"  - {f}" for f in own_files(kind, name)))


if __name__ == "__main__":
    main()
