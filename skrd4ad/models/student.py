"""The trained part of reverse distillation: OCBE bottleneck + decoder, one module whose state
dict holds ``bottleneck.*`` and ``decoder.*`` (the checkpoint's ``student``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .bottleneck import OCBE
from .decoder import Decoder

if TYPE_CHECKING:  # pragma: no cover
    from .rd4ad import ArchSpec
    from .teacher import Teacher


class Student(nn.Module):
    """``bottleneck`` (teacher maps -> ``(B, 2*c3, H/32, W/32)``) and ``decoder`` (-> maps fine to
    coarse, the teacher's shapes), built for ``teacher`` with the shapes of ``spec``; weights
    drawn from the global torch RNG, bottleneck first."""

    def __init__(self, teacher: Teacher, spec: ArchSpec) -> None:
        super().__init__()
        self.bottleneck = OCBE(teacher.channels, spec.block, spec.bottleneck_blocks, spec.base_width)
        self.decoder = Decoder(self.bottleneck.out_channels, teacher.channels, spec.decoder_block,
                               spec.decoder_layers, spec.base_width)
