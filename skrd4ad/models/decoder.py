"""Student decoder: three upsampling stages that reconstruct the teacher's maps from the
bottleneck embedding, optionally with SK-RD4AD's skip connections from the teacher.

For ResNets this is the reference ``de_resnet`` decoder tensor for tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import _Block, init_weights, make_layer


class Decoder(nn.Module):
    """Reverse-distillation student.

    Args:
        in_channels: embedding channels (``OCBE.out_channels``).
        channels: teacher channels ``(c1, c2, c3)`` the stages must reproduce.
        block: decoder block class (``DecoderBasicBlock`` or ``DecoderBottleneck``).
        layers: blocks per stage, coarse to fine (``layer1``, ``layer2``, ``layer3``).
        base_width: block width per group (64, or 128 for wide ResNets).

    ``forward(z, skips=None)``: ``z`` is ``(B, in_channels, H/32, W/32)``; returns the student
    maps fine to coarse, ``[(B, c1, H/4, W/4), (B, c2, H/8, W/8), (B, c3, H/16, W/16)]``, the
    same order as the teacher's.  With ``skips = (t2, t3)`` (teacher maps at strides 8 and 16)
    the SK-RD4AD wiring is used: ``layer2`` reads ``relu(layer1_out + t3)`` and ``layer3`` reads
    ``relu(layer2_out + t2)``.
    """

    def __init__(self, in_channels: int, channels: tuple[int, int, int], block: type[_Block],
                 layers: tuple[int, int, int], base_width: int = 64) -> None:
        super().__init__()
        c1, c2, c3 = channels
        e = block.expansion
        for c in channels:
            if c % e:
                raise ValueError(f"teacher channel count {c} is not divisible by the block expansion {e}")
        self.layer1 = make_layer(block, in_channels, c3 // e, layers[0], stride=2, base_width=base_width)
        self.layer2 = make_layer(block, c3, c2 // e, layers[1], stride=2, base_width=base_width)
        self.layer3 = make_layer(block, c2, c1 // e, layers[2], stride=2, base_width=base_width)
        init_weights(self)

    def forward(self, z: Tensor, skips: tuple[Tensor, Tensor] | None = None) -> list[Tensor]:
        s3 = self.layer1(z)
        x = s3 if skips is None else torch.relu(s3 + skips[1])
        s2 = self.layer2(x)
        x = s2 if skips is None else torch.relu(s2 + skips[0])
        s1 = self.layer3(x)
        return [s1, s2, s3]
