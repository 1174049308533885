"""The params schema (``skrd4ad/params.schema.yaml``): the one declaration of every setting's
type, default, choices and range, read by both engines, the command line and the typed configs.

This module is the ground floor: it imports nothing of the package.  The registries add their
fragments on top (:func:`skrd4ad.models.variants.inject_schema`: the variants' names and own
settings; :func:`skrd4ad.data.sources.inject_schema`: the sources' names and own settings);
:func:`skrd4ad.params.full_schema` puts the three together for validation.

>>> section("train")["epochs"]["default"]
200
>>> at("model.variants.items")["type"]
'string'
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: The params schema, shipped inside the package (workflow/schemas/params.schema.yaml links to it).
SCHEMA_PATH = Path(__file__).resolve().with_name("params.schema.yaml")


@functools.cache
def _loaded() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def load() -> dict[str, Any]:
    """A fresh copy of the schema as the file declares it (the registries' fragments not added)."""
    return copy.deepcopy(_loaded())


def at(dotted: str) -> dict[str, Any]:
    """The schema of one key, ``"train.epochs"``; ``properties`` levels implied, other JSON-schema
    keywords (``items``) spelled: ``"model.variants.items"``.  A copy; KeyError naming the key."""
    node: Any = _loaded()
    for part in dotted.split("."):
        props = node.get("properties", {})
        node = props[part] if part in props else node[part]
    return copy.deepcopy(node)


def section(name: str) -> dict[str, Any]:
    """The schema of every key of a top-level section (``train``, ``evaluate``, ...), in file order."""
    return at(name)["properties"]


def defaults(name: str) -> dict[str, Any]:
    """The default of every key of section ``name`` that has one."""
    return {key: sub["default"] for key, sub in section(name).items() if "default" in sub}


def changes_model(key_schema: Mapping[str, Any]) -> bool:
    """False for a setting marked ``x-changes-model: false`` (where and how a job runs, not what it learns)."""
    return bool(key_schema.get("x-changes-model", True))


def fill_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Insert ``default`` values for absent object properties of ``instance``, recursively, in place."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            fill_defaults(instance[key], sub)
