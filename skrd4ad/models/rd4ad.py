"""The full reverse-distillation network: frozen teacher -> the student of a variant plug-in
(built by name with :func:`skrd4ad.models.build.build_model`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .student import ARCH_SPECS, ArchSpec  # noqa: F401  (ArchSpec: importable from here as before)
from .teacher import Teacher


#: Input sides must be multiples of this: the teacher and the bottleneck halve the resolution 5 times.
SIZE_MULTIPLE = 32


def check_image_size(size: int, what: str = "image_size") -> int:
    """Return ``size`` if the model accepts it (a positive multiple of 32), else raise ValueError
    naming ``what`` and the nearest valid sizes."""
    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        lower = max(size // SIZE_MULTIPLE * SIZE_MULTIPLE, 0)
        nearest = " or ".join(str(v) for v in (lower, lower + SIZE_MULTIPLE) if v >= SIZE_MULTIPLE)
        raise ValueError(f"{what}={size} must be a positive multiple of {SIZE_MULTIPLE} (the model halves "
                         f"the resolution 5 times); use {nearest}")
    return size


class ReverseDistillation(nn.Module):
    """Frozen teacher + the trained ``student`` of a variant plug-in
    (:mod:`skrd4ad.models.variants`).  ``forward(x)`` is the variant's: ``(teacher_maps,
    student_maps)``, both fine to coarse; only the student side carries gradients.

    ``plugin``: the variant (a registry entry); ``settings``: its own settings, defaults filled
    in and checked (:func:`skrd4ad.models.variants.check_settings`).  ``variant`` is its name."""

    def __init__(self, teacher: Teacher, plugin: Any, settings: dict[str, Any]) -> None:  # plugin: a variants.base.Variant
        super().__init__()
        self.plugin = plugin
        self.variant = plugin.name
        self.settings = settings
        spec = ARCH_SPECS.get(teacher.arch)
        if spec is None:
            raise ValueError(f"no bottleneck/decoder spec for teacher {teacher.arch!r}; "
                             f"known: {', '.join(ARCH_SPECS)}")
        self.arch = teacher.arch
        self.teacher = teacher
        self.student = plugin.build_student(teacher, spec, settings)

    def student_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters: the student's (the teacher is never trained)."""
        return list(self.student.parameters())

    def student_state_dict(self) -> dict[str, Tensor]:
        """The student's state dict (for RD4AD's student ``{'bottleneck.*': ..., 'decoder.*': ...}``):
        everything that training changes."""
        return dict(self.student.state_dict())

    def load_student_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`student_state_dict` (strict: a missing or unexpected key raises)."""
        self.student.load_state_dict(state)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # export keeps sizes symbolic
            h, w = (int(v) for v in x.shape[-2:])
            if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or min(h, w) < SIZE_MULTIPLE:
                bad = w if h % SIZE_MULTIPLE == 0 and h >= SIZE_MULTIPLE else h
                check_image_size(bad, f"input of {h}x{w} px: side")
        return self.plugin.forward(self, x)

