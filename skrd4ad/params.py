"""Params files: read (YAML errors name the file and line), merge overlays as Snakemake's
``--configfile`` does, validate against the full schema (defaults filled in, cross-key rules),
write the merged file for DVC (``skrd4ad params``).  Both engines validate through here."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .contrasts import contrasts
from .data import sources
from .errors import ParamsError
from .models import variants

__all__ = ["NO_DATA_FOLDER", "ParamsError", "full_schema", "validate_params", "read_yaml", "load_params",
           "merge_params", "merged_params", "write_params", "lookup"]

#: ``data.folder`` of the sources that are not the user's folder: a constant file every stage already depends on
#: (DVC's download depends on ``${data.folder}``; their code is tracked by the ``code`` stage's stamp instead).
NO_DATA_FOLDER = "data/params.ok"


def full_schema() -> dict[str, Any]:
    """The params schema with the registries' fragments: the variants' names and own settings, the
    sources' names and own settings."""
    return sources.inject_schema(variants.inject_schema(schema.load()))


def _register_hint(err: Any) -> str:
    """`` (or register a plug-in: ...)`` for a schema error about a name no registry knows (a variant of
    ``model.variants`` or a key of ``train.variant_overrides``, ``data.dataset``); else empty."""
    path = tuple(err.absolute_path)
    unknown_variant = ((err.validator == "enum" and path[:2] == ("model", "variants"))
                       or (err.validator == "additionalProperties" and path == ("train", "variant_overrides")))
    unknown_source = err.validator == "enum" and path == ("data", "dataset")
    hint = variants.REGISTER_HINT if unknown_variant else sources.REGISTER_HINT if unknown_source else ""
    return f" (or {hint})" if hint else ""


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` in place against the full schema, fill defaults, check cross-key rules;
    returns ``params``.  Raises :class:`ParamsError` naming the offending key."""
    import jsonschema  # pipeline extra; imported here so the core package does not need it

    full = full_schema()
    schema.fill_defaults(params, full)
    validator = jsonschema.Draft202012Validator(full)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {where}: {err.message}{_register_hint(err)}")
        raise ParamsError("invalid params:\n" + "\n".join(lines))
    data, train = params["data"], params["train"]
    kind = data["dataset"]
    data.setdefault("name", kind)
    if data["folder"].startswith("~"):
        raise ParamsError(f"data.folder: {data['folder']!r}: DVC does not expand '~'; write the full path")
    if sources.get(kind).user_folder:
        if data["folder"] == NO_DATA_FOLDER:
            raise ParamsError(f"data.folder: dataset {kind!r} needs data.folder set to an MVTec-layout directory")
        if data["name"] in sources.names():
            raise ParamsError(f"data.name: give your folder dataset a name of its own (e.g. "
                              f"{Path(data['folder']).name!r}); {data['name']!r} would mix its outputs "
                              "with those of other datasets")
    elif data["name"] in sources.names() and data["name"] != kind:
        raise ParamsError(f"data.name: {data['name']!r} names the {data['name']} dataset's outputs, but "
                          f"data.dataset is {kind!r}; set data.name (e.g. {kind!r})")
    elif data["folder"] != NO_DATA_FOLDER:
        readers = [n for n in sources.names() if sources.get(n).user_folder]
        raise ParamsError(f"data.folder is only read for dataset {' / '.join(map(repr, readers))} (data.dataset is {kind!r}); "
                          f"set it to {NO_DATA_FOLDER} or null")
    source = sources.get(kind)
    unknown = [c for c in data["classes"] if source.downloadable and source.classes and c not in source.classes]
    if unknown:
        raise ParamsError(f"data.classes: {unknown[0]!r} is not a class of {kind} ({', '.join(source.classes)})")
    missing = [c for c in data["classes"] if c not in train["class_overrides"]]
    if train["class_overrides"] and missing:
        raise ParamsError(f"train.class_overrides: add an entry for every class in data.classes "
                          f"(use {{}} for none); missing: {', '.join(missing)}")
    missing_v = [v for v in params["model"]["variants"] if v not in train["variant_overrides"]]
    if train["variant_overrides"] and missing_v:
        raise ParamsError(f"train.variant_overrides: add an entry for every variant in model.variants "
                          f"(use {{}} for none); missing: {', '.join(missing_v)}")
    contrasts(params)  # raises naming report.baseline / report.contrasts
    return params


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path`` (``None`` when empty); a syntax error raises :class:`ParamsError`
    naming the file and line: ``<file>, line N, column C: <problem>; fix the YAML syntax there``."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        what = f"{context}, {problem}" if context else problem
        raise ParamsError(f"{path}{where}: invalid YAML ({what}); fix the syntax there") from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate a params file (see :func:`validate_params`)."""
    return validate_params(_read_mapping(path, "params file not found (run from the repository root)"))


def _read_mapping(path: str | Path, not_found: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; :class:`ParamsError` naming the file if it is missing (``not_found``),
    not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: {not_found}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def merge_params(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on a copy of ``base``, as Snakemake merges ``--configfile`` files: mappings
    merge key by key, every other value (lists included) replaces the old one."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merged_params(base: str | Path, overlays: Sequence[str | Path]) -> dict[str, Any]:
    """``overlays`` (in order) merged onto the params file ``base`` and validated (nothing written);
    every error names the file (and line) or the key."""
    params = _read_mapping(base, "params file not found (run from the repository root)")
    for overlay in overlays:
        params = merge_params(params, _read_mapping(overlay, "overlay file not found"))
    validate_params(params)
    return params


def write_params(base: str | Path, overlays: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge ``overlays`` (in order) onto the params file ``base``, validate, and write the result
    with every default filled in (DVC tracks a key only when it is in the file) to ``out``.  When
    ``out`` already holds exactly that (every key present, equal values), it is left as it is: its
    bytes, which DVC hashes, and its comments do not change."""
    from .io import write_text_atomic

    params = merged_params(base, overlays)
    if Path(out).is_file():
        try:
            if _read_mapping(out, "") == params:  # as written: a default it lacks must be written in
                return params
        except ParamsError:
            pass  # not YAML: replaced below
    header = f"# written by `skrd4ad params`: {Path(base).name} + {' + '.join(str(o) for o in overlays)}\n"
    write_text_atomic(out, header + yaml.safe_dump(params, sort_keys=False, default_flow_style=None, width=110))
    return params


def lookup(params: Mapping[str, Any], dotted: str) -> Any:
    """``params["a"]["b"]`` for ``"a.b"``; None where a key is absent."""
    value: Any = params
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
