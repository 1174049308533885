"""The full reverse-distillation network: frozen teacher -> the student of a registered variant.

>>> model = build_model("resnet18", "skrd4ad", teacher_weights=None)  # random teacher: tests only
>>> t, s = model(torch.zeros(2, 3, 64, 64))
>>> [tuple(f.shape) for f in s]
[(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import variants
from .blocks import BasicBlock, Bottleneck, DecoderBasicBlock, DecoderBottleneck, _Block
from .student import Student
from .teacher import Teacher, build_teacher


@dataclass(frozen=True)
class ArchSpec:
    """Bottleneck and decoder shape for one teacher architecture."""

    block: type[_Block]
    decoder_block: type[_Block]
    bottleneck_blocks: int
    decoder_layers: tuple[int, int, int]
    base_width: int = 64

    def student(self, teacher: Teacher) -> Student:
        """RD4AD's student for ``teacher`` with these shapes: OCBE + decoder (random weights)."""
        return Student(teacher, self)


#: Shapes of the reference RD4AD code for ResNets; mobilenet_v2 uses the small BasicBlock form.
ARCH_SPECS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(BasicBlock, DecoderBasicBlock, 2, (2, 2, 2)),
    "resnet34": ArchSpec(BasicBlock, DecoderBasicBlock, 3, (3, 4, 6)),
    "resnet50": ArchSpec(Bottleneck, DecoderBottleneck, 3, (3, 4, 6)),
    "wide_resnet50_2": ArchSpec(Bottleneck, DecoderBottleneck, 3, (3, 4, 6), base_width=128),
    "mobilenet_v2": ArchSpec(BasicBlock, DecoderBasicBlock, 2, (2, 2, 2)),
}


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
    """Frozen teacher + the trained ``student`` of a registered variant
    (:mod:`skrd4ad.models.variants`).  ``forward(x)`` is the variant's: ``(teacher_maps,
    student_maps)``, both fine to coarse; only the student side carries gradients.

    ``variant``: the variant's name; ``settings``: its own settings (defaults filled in, checked)."""

    def __init__(self, teacher: Teacher, variant: str, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.impl = variants.get(variant)
        self.variant = self.impl.name
        self.settings = variants.check_settings(variant, settings)
        spec = ARCH_SPECS.get(teacher.arch)
        if spec is None:
            raise ValueError(f"no bottleneck/decoder spec for teacher {teacher.arch!r}; "
                             f"known: {', '.join(ARCH_SPECS)}")
        self.arch = teacher.arch
        self.teacher = teacher
        self.student = self.impl.build_student(teacher, spec, self.settings)

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
        return self.impl.forward(self, x)


def build_model(arch: str, variant: str, *, teacher_weights: str | Path | None = "imagenet",
                settings: dict[str, Any] | None = None) -> ReverseDistillation:
    """Build teacher + the student of ``variant`` (a registered name) for ``arch`` (see ``ARCH_SPECS``).

    ``teacher_weights``: ``"imagenet"``, a local ``.pth`` file, or ``None`` (random: tests only).
    ``settings``: the variant's own settings.  Student weights are initialised from the global
    torch RNG (seed it first).
    """
    variants.get(variant)
    return ReverseDistillation(build_teacher(arch, teacher_weights), variant, settings)
