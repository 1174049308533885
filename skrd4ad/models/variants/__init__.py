"""The registry of model variants: a variant is one module, found here by its name.

- Built-ins: every module of this package (except ``base`` and ``_private`` ones) that defines
  ``VARIANT`` (a :class:`~.base.Variant` instance or subclass); ``rd4ad`` and ``skrd4ad`` first,
  the others by module name.  Found by listing the package, so an editable install from any
  checkout sees its own.
- Plug-ins, after the built-ins: the entry points of group ``skrd4ad.variants`` (value
  ``module:attr``, a Variant instance or subclass), then the modules named in the environment
  variable ``SKRD4AD_VARIANTS`` (comma-separated importable module names, each defining
  ``VARIANT``), for code that is not packaged.

Importing this package and reading names, labels and settings schemas does not import torch
(the Snakefile and :mod:`skrd4ad.config` read them on every invocation).

>>> names()[:2]
('rd4ad', 'skrd4ad')
>>> label("skrd4ad")
'SK-RD4AD'
"""

from __future__ import annotations

from typing import Any

from skrd4ad.plugins import PluginRegistry

from .base import Variant

__all__ = ["REGISTER_HINT", "Variant", "names", "get", "label", "settings_schema", "check_settings", "inject_schema",
           "refresh"]

ENTRY_POINT_GROUP = "skrd4ad.variants"
ENV_VAR = "SKRD4AD_VARIANTS"
#: Built-in modules listed first, in this order (the paper's baseline, then ours).
_FIRST = ("rd4ad", "skrd4ad")

_registry: PluginRegistry[Variant] = PluginRegistry(
    kind="variant", kinds="variants", attr="VARIANT", base=Variant, package=__name__, package_path=__path__,
    group=ENTRY_POINT_GROUP, env_var=ENV_VAR, first=_FIRST, readme="Adding a variant in one file")
#: How to add a variant, for every message about an unknown one (params, CLI, checkpoints).
REGISTER_HINT = _registry.register_hint


def refresh() -> None:
    """Forget the variants found so far (after changing ``SKRD4AD_VARIANTS`` or installing one)."""
    _registry.refresh()


def names() -> tuple[str, ...]:
    """Every variant name: built-ins first, then plug-ins."""
    return tuple(_registry())


def get(name: str) -> Variant:
    """The variant called ``name``; ValueError naming the valid choices otherwise."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model variant {name!r}; choose one of {', '.join(registry)} (or {REGISTER_HINT})")
    return registry[name]


def label(name: str) -> str:
    """Display label of ``name`` (e.g. ``"SK-RD4AD"``); the name itself if it sets none."""
    return get(name).label or name


def settings_schema(name: str) -> dict[str, Any]:
    """JSON-schema properties of the variant's own settings (``train.variant_overrides.<name>``)."""
    return dict(get(name).settings)


def check_settings(name: str, settings: dict[str, Any] | None, where: str = "") -> dict[str, Any]:
    """``settings`` with the variant's defaults filled in, validated against its schema; ValueError
    ``<where>.<key>: <what is wrong>`` otherwise."""
    import jsonschema

    where = where or f"train.variant_overrides.{name}"
    schema = settings_schema(name)
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(schema))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)} of variant {name}; "
                         f"valid: {', '.join(schema) or 'none'}")
    for key, value in settings.items():
        errors = list(jsonschema.Draft202012Validator(schema[key]).iter_errors(value))
        if errors:
            raise ValueError(f"{where}.{key}: {jsonschema.exceptions.best_match(errors).message}")
    return {**get(name).settings_defaults(), **settings}


def inject_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill the params schema (in place, and return it) from the registry: the choices of
    ``model.variants`` and one key per variant in ``train.variant_overrides``, holding the train
    overrides (``$defs.train_override``) and that variant's own settings."""
    props = schema["properties"]
    props["model"]["properties"]["variants"]["items"]["enum"] = list(names())
    override = schema["$defs"]["train_override"]
    per_variant = {}
    for name in names():
        own = settings_schema(name)
        clash = sorted(set(own) & set(override["properties"]))
        if clash:
            raise ValueError(f"variant {name}: setting(s) {', '.join(clash)} clash with train settings of the "
                             "same name; rename them in its settings")
        per_variant[name] = {"type": "object", "additionalProperties": False,
                             "properties": {**override["properties"], **own}}
    overrides = props["train"]["properties"]["variant_overrides"]
    overrides.pop("additionalProperties", None)
    overrides.update(properties=per_variant, additionalProperties=False)
    return schema
