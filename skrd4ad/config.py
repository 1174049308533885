"""Typed configuration of training and evaluation, built from plain dicts (``params.yaml``
sections, CLI flags).  Unknown keys and bad values fail at once, naming the key.

Defaults are the RD4AD paper's: Adam(lr 0.005, betas (0.5, 0.999)), batch 16, 200 epochs,
256 px, cosine loss, wide_resnet50_2 teacher with ImageNet weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from .models.choices import COMBINES, LOSS_KINDS, SCORE_KINDS, TEACHER_ARCHS, VARIANTS

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

    arch: str = "wide_resnet50_2"
    variant: str = "rd4ad"
    teacher_weights: str | None = "imagenet"
    epochs: int = 200
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    loss: str = "cosine"
    consistency_weight: float = 0.0
    seed: int = 111
    checkpoint_every: int = 10
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = True  # NHWC layout: faster convolutions on CPU (oneDNN) and GPU

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

    batch_size: int = 32
    combine: str = "sum"
    sigma: float = 4.0
    score: str = "max"
    topk: int = 100
    fpr_limit: float = 0.3
    max_curve_points: int = 1000
    num_figures: int = 3
    device: str = "auto"
    amp: str = "none"

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
