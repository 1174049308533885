"""The named choices of the models (architectures, losses, map options; the variants are
in the registry :mod:`skrd4ad.models.variants`), without
importing torch: :mod:`skrd4ad.config` and the Snakefile (through :mod:`skrd4ad.params`) read
them on every invocation, where importing torch would add seconds."""

from __future__ import annotations

from typing import Literal, get_args

TeacherArch = Literal["resnet18", "resnet34", "resnet50", "wide_resnet50_2", "mobilenet_v2"]
TEACHER_ARCHS: tuple[str, ...] = get_args(TeacherArch)

LossKind = Literal["cosine", "mse", "mse_cosine"]
LOSS_KINDS: tuple[str, ...] = get_args(LossKind)

Combine = Literal["sum", "mul"]
COMBINES: tuple[str, ...] = get_args(Combine)
ScoreKind = Literal["max", "topk_mean"]
SCORE_KINDS: tuple[str, ...] = get_args(ScoreKind)
