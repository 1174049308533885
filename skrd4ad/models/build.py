"""A reverse-distillation model by name: the teacher for an architecture, the student of a
registered variant.

>>> model = build_model("resnet18", "skrd4ad", teacher_weights=None)  # random teacher: tests only
>>> t, s = model(torch.zeros(2, 3, 64, 64))
>>> [tuple(f.shape) for f in s]
[(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch  # noqa: F401  (the doctest)

from . import variants
from .rd4ad import ReverseDistillation
from .teacher import Teacher, build_teacher


def model_for(teacher: Teacher, variant: str, settings: dict[str, Any] | None = None) -> ReverseDistillation:
    """``teacher`` + a new student of ``variant`` (a registered name; ValueError naming the choices
    otherwise) with its own ``settings`` (defaults filled in, checked)."""
    return ReverseDistillation(teacher, variants.get(variant), variants.check_settings(variant, settings))


def build_model(arch: str, variant: str, *, teacher_weights: str | Path | None = "imagenet",
                settings: dict[str, Any] | None = None) -> ReverseDistillation:
    """Build teacher + the student of ``variant`` (a registered name) for ``arch`` (see
    :data:`~skrd4ad.models.student.ARCH_SPECS`).

    ``teacher_weights``: ``"imagenet"``, a local ``.pth`` file, or ``None`` (random: tests only).
    ``settings``: the variant's own settings.  Student weights are initialised from the global
    torch RNG (seed it first).
    """
    variants.get(variant)
    return model_for(build_teacher(arch, teacher_weights), variant, settings)
