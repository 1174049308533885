"""The trained part of reverse distillation: OCBE bottleneck + decoder, one module whose state
dict holds ``bottleneck.*`` and ``decoder.*`` (the checkpoint's ``student``), and its shapes
per teacher architecture (:data:`ARCH_SPECS`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from .blocks import BasicBlock, Bottleneck, DecoderBasicBlock, DecoderBottleneck, _Block
from .bottleneck import OCBE
from .decoder import Decoder

if TYPE_CHECKING:  # pragma: no cover
    from .teacher import Teacher


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


class Student(nn.Module):
    """``bottleneck`` (teacher maps -> ``(B, 2*c3, H/32, W/32)``) and ``decoder`` (-> maps fine to
    coarse, the teacher's shapes), built for ``teacher`` with the shapes of ``spec``; weights
    drawn from the global torch RNG, bottleneck first."""

    def __init__(self, teacher: Teacher, spec: ArchSpec) -> None:
        super().__init__()
        self.bottleneck = OCBE(teacher.channels, spec.block, spec.bottleneck_blocks, spec.base_width)
        self.decoder = Decoder(self.bottleneck.out_channels, teacher.channels, spec.decoder_block,
                               spec.decoder_layers, spec.base_width)
