"""The full reverse-distillation network: frozen teacher -> OCBE -> student decoder.

>>> model = build_model("resnet18", "skrd4ad", teacher_weights=None)  # random teacher: tests only
>>> t, s = model(torch.zeros(2, 3, 64, 64))
>>> [tuple(f.shape) for f in s]
[(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .blocks import BasicBlock, Bottleneck, DecoderBasicBlock, DecoderBottleneck, _Block
from .bottleneck import OCBE
from .choices import VARIANTS, Variant  # noqa: F401 (re-exported)
from .decoder import Decoder
from .teacher import Teacher, build_teacher


@dataclass(frozen=True)
class ArchSpec:
    """Bottleneck and decoder shape for one teacher architecture."""

    block: type[_Block]
    decoder_block: type[_Block]
    bottleneck_blocks: int
    decoder_layers: tuple[int, int, int]
    base_width: int = 64


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


def check_variant(variant: str) -> Variant:
    """Return ``variant`` if valid, else raise naming the valid choices."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of {', '.join(VARIANTS)} "
                         "(rd4ad = baseline, skrd4ad = with skip connections)")
    return variant  # type: ignore[return-value]


class ReverseDistillation(nn.Module):
    """Teacher (frozen) + OCBE + decoder.  ``forward(x)`` returns ``(teacher_maps, student_maps)``,
    both fine to coarse; only the student side carries gradients."""

    def __init__(self, teacher: Teacher, variant: Variant = "rd4ad") -> None:
        super().__init__()
        self.variant = check_variant(variant)
        spec = ARCH_SPECS.get(teacher.arch)
        if spec is None:
            raise ValueError(f"no bottleneck/decoder spec for teacher {teacher.arch!r}; "
                             f"known: {', '.join(ARCH_SPECS)}")
        self.arch = teacher.arch
        self.teacher = teacher
        self.bottleneck = OCBE(teacher.channels, spec.block, spec.bottleneck_blocks, spec.base_width)
        self.decoder = Decoder(self.bottleneck.out_channels, teacher.channels, spec.decoder_block,
                               spec.decoder_layers, spec.base_width)

    @property
    def skip(self) -> bool:
        return self.variant == "skrd4ad"

    def student_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters: bottleneck + decoder (the teacher is never trained)."""
        return [*self.bottleneck.parameters(), *self.decoder.parameters()]

    def student_state_dict(self) -> dict[str, Tensor]:
        """``{'bottleneck.*': ..., 'decoder.*': ...}``: everything that training changes."""
        sd = {f"bottleneck.{k}": v for k, v in self.bottleneck.state_dict().items()}
        sd.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        return sd

    def load_student_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`student_state_dict` (strict)."""
        bn = {k[len("bottleneck."):]: v for k, v in state.items() if k.startswith("bottleneck.")}
        de = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        other = [k for k in state if not k.startswith(("bottleneck.", "decoder."))]
        if other:
            raise KeyError(f"unexpected keys in student state dict: {other[:5]}")
        self.bottleneck.load_state_dict(bn)
        self.decoder.load_state_dict(de)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # export keeps sizes symbolic
            h, w = (int(v) for v in x.shape[-2:])
            if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or min(h, w) < SIZE_MULTIPLE:
                bad = w if h % SIZE_MULTIPLE == 0 and h >= SIZE_MULTIPLE else h
                check_image_size(bad, f"input of {h}x{w} px: side")
        with torch.no_grad():
            t = self.teacher(x)
        s = self.decoder(self.bottleneck(t), (t[1], t[2]) if self.skip else None)
        return t, s


def build_model(arch: str, variant: str = "rd4ad", *,
                teacher_weights: str | Path | None = "imagenet") -> ReverseDistillation:
    """Build teacher + student for ``arch`` (see ``ARCH_SPECS``) and ``variant``.

    ``teacher_weights``: ``"imagenet"``, a local ``.pth`` file, or ``None`` (random: tests only).
    Student weights are initialised from the global torch RNG (seed it first).
    """
    check_variant(variant)
    return ReverseDistillation(build_teacher(arch, teacher_weights), variant)  # type: ignore[arg-type]
