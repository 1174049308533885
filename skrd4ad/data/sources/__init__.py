"""The registry of dataset sources: a source is one module, found here by its name.

- Built-ins: every module of this package (except ``base`` and ``_private`` ones) that defines
  ``SOURCE`` (a :class:`~.base.Source` instance or subclass); ``synthetic`` (the default) first,
  the others by module name.
- Plug-ins, after the built-ins: the entry points of group ``skrd4ad.sources`` (value
  ``module:attr``, a Source instance or subclass), then the modules named in the environment
  variable ``SKRD4AD_SOURCES`` (comma-separated importable module names, each defining ``SOURCE``).

Everything that lists datasets reads this registry: the params schema's ``data.dataset`` choices
(:func:`inject_schema`), the CLI's ``download --dataset``, the pipeline's name rules, the
download stage and the README's table of sources (:func:`markdown_table`).  Importing it imports
neither numpy nor torch.

>>> names()[0]
'synthetic'
>>> get("vad").extra_sets
{'train/bad': 'labelled_anomalies'}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skrd4ad.data.layout import LABELLED_ANOMALIES, DatasetError, list_classes
from skrd4ad.plugins import PluginRegistry

from .base import FETCH_MARKER, Location, Source, copy_tree, layout_root

__all__ = ["FETCH_MARKER", "LABELLED_ANOMALIES", "Location", "Source", "names", "get", "label", "downloadable", "extra_train_folders",
           "extra_train_owners", "fetched_as",
           "inject_schema", "markdown_table", "refresh", "fetch_dataset", "dataset_root", "copy_tree",
           "layout_root", "convert_visa", "import_two_folders"]

ENTRY_POINT_GROUP = "skrd4ad.sources"
ENV_VAR = "SKRD4AD_SOURCES"


def _check(source: Source) -> None:
    for key in source.extra_sets:
        if not key.startswith("train/") or key.count("/") != 1 or key == "train/good":
            raise ValueError(f"dataset source {source.name}: extra set {key!r} must be train/<folder> "
                             "(not train/good)")


_registry: PluginRegistry[Source] = PluginRegistry(
    kind="source", kinds="dataset sources", attr="SOURCE", base=Source, package=__name__, package_path=__path__,
    group=ENTRY_POINT_GROUP, env_var=ENV_VAR, first=("synthetic",), check=_check,
    readme="Adding a dataset in one file")
#: How to add a source, for every message about an unknown one (params, CLI).
REGISTER_HINT = _registry.register_hint


def refresh() -> None:
    """Forget the sources found so far (after changing ``SKRD4AD_SOURCES`` or installing one)."""
    _registry.refresh()


def names() -> tuple[str, ...]:
    """Every source name: built-ins first, then plug-ins."""
    return tuple(_registry())


def downloadable() -> tuple[str, ...]:
    """The names of the sources that are downloaded (``skrd4ad download --dataset``)."""
    return tuple(n for n, s in _registry().items() if s.downloadable)


def get(name: str) -> Source:
    """The source called ``name``; :class:`DatasetError` naming the valid choices otherwise."""
    registry = _registry()
    if name not in registry:
        raise DatasetError(f"unknown dataset source {name!r}; choose one of {', '.join(registry)} (or {REGISTER_HINT})")
    return registry[name]


def label(name: str) -> str:
    """Display label of ``name`` (e.g. ``"MVTec AD"``); the name itself if it sets none."""
    return get(name).label or name


def fetched_as(root: str | Path) -> str | None:
    """The name of the source that fetched the dataset folder ``root`` (from its
    :data:`FETCH_MARKER`); None for any other folder (generated, a user's, hand-assembled)."""
    import json

    try:
        name = json.loads((Path(root) / FETCH_MARKER).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def extra_train_folders(root: str | Path) -> tuple[str, ...]:
    """The folder names under ``<class>/train`` besides ``good`` that hold labelled anomalies
    (never trained on) in the dataset folder ``root``: those of the source that fetched it
    (:func:`fetched_as`, e.g. VAD's ``bad``); none for any other folder, or a source not registered."""
    name = fetched_as(root)
    source = _registry().get(name) if name is not None else None
    return source.extra_train_folders if source is not None else ()


def extra_train_owners(folder: str) -> tuple[str, ...]:
    """The sources whose extra sets hold ``train/<folder>`` (for error messages)."""
    return tuple(n for n, s in _registry().items() if folder in s.extra_train_folders)


def inject_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill the params schema (in place, and return it) from the registry: the choices of
    ``data.dataset`` and its description, and ``data.<name>`` for every source with settings
    of its own (:attr:`Source.settings`)."""
    data = schema["properties"]["data"]["properties"]
    data["dataset"]["enum"] = list(names())
    data["dataset"]["description"] = "; ".join(f"{n}: {s.description or s.label}" for n, s in _registry().items())
    for name, source in _registry().items():
        if source.settings:
            if name in data:
                raise ValueError(f"dataset source {name}: its settings would replace the data.{name} key of the "
                                 "params schema; rename the source")
            data[name] = {"type": "object", "additionalProperties": False, "default": {},
                          "description": f"settings of the {source.label or name} source",
                          "properties": dict(source.settings)}
    return schema


def markdown_table() -> str:
    """The README's table of sources (``skrd4ad sources`` prints it)."""
    rows = ["| `data.dataset` | dataset | classes | masks | labelled anomalies | licence |",
            "|---|---|---|---|---|---|"]
    for n, s in _registry().items():
        masks = {True: "yes", False: "no (image level)", None: "if `ground_truth/`"}[s.has_masks]
        extra = ", ".join(f"`{k}`" + ("" if v == LABELLED_ANOMALIES else f" ({v})")
                          for k, v in s.extra_sets.items()) or "-"
        classes = str(len(s.classes)) if s.classes else "yours"
        rows.append(f"| `{n}` | {s.label or n} | {classes} | {masks} | {extra} | {s.licence or '-'} |")
    return "\n".join(rows) + "\n"


def fetch_dataset(name: str, root: str | Path, *, url: str | None = None, urls: list[str] | None = None,
                  sha256: str | None = None, progress: bool = True, sha256_key: str = "--sha256") -> Path:
    """Download, verify, extract and convert the source ``name`` into ``<root>/<name>``
    (:meth:`Source.fetch`); ``url``/``urls`` and ``sha256`` override its locations (mirrors, tests);
    messages name ``sha256_key`` (``skrd4ad download --sha256``) as the setting to fix."""
    source = get(name)
    if not source.downloadable:
        raise DatasetError(f"dataset {name!r} is not downloaded; choose one of {', '.join(downloadable())}")
    given = ([url] if url else []) + list(urls or [])
    locations = tuple(Location(u) for u in given) or None
    return source.fetch(root, locations=locations, sha256=sha256, progress=progress, sha256_key=sha256_key)


def dataset_root(source: str, data_dir: str | Path, *, progress: bool = True) -> Path:
    """Resolve a dataset spec to an MVTec-layout root: a downloadable source's name fetches it
    into ``data_dir``; anything else is a path to a folder already in MVTec layout."""
    if source in downloadable():
        return fetch_dataset(source, data_dir, progress=progress)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset {source!r} is neither one of {', '.join(downloadable())} nor an existing folder; "
            "pass a folder in MVTec layout (<root>/<class>/train/good/...)"
        )
    if not list_classes(root):
        raise DatasetError(f"{root} holds no <class>/train folders; it is not in MVTec layout")
    return root


def __getattr__(attr: str) -> Any:  # the converters of built-ins, importable from here as before
    if attr == "convert_visa":
        from .visa import convert_visa

        return convert_visa
    if attr in ("import_two_folders", "binarise_mask_file"):
        from . import folder

        return getattr(folder, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
