"""One-class bottleneck embedding (OCBE) with multi-scale feature fusion.

The three teacher maps (channels ``c1, c2, c3`` at strides 4, 8, 16) are brought to stride 16
(the finest map by two strided 3x3 convolutions, the middle one by one), concatenated with the
coarsest map, and compressed by a stage of residual blocks at stride 32 into the embedding the
decoder starts from.  For ResNets this is the reference ``BN_layer`` tensor for tensor
(``c = (64e, 128e, 256e)`` with expansion ``e``; embedding ``512e`` channels).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import _Block, conv3x3, init_weights, make_layer


class OCBE(nn.Module):
    """Multi-scale fusion + one-class embedding.

    Args:
        channels: teacher channels ``(c1, c2, c3)`` at strides 4, 8, 16.
        block: encoder block class (``BasicBlock`` or ``Bottleneck``).
        num_blocks: residual blocks in the embedding stage.
        base_width: block width per group (64, or 128 for wide ResNets).

    Input: list of three maps ``(B, c1, H/4, W/4)``, ``(B, c2, H/8, W/8)``, ``(B, c3, H/16, W/16)``.
    Output: ``(B, 2 * c3, H/32, W/32)``.
    """

    def __init__(self, channels: tuple[int, int, int], block: type[_Block], num_blocks: int,
                 base_width: int = 64) -> None:
        super().__init__()
        c1, c2, c3 = channels
        if (2 * c3) % block.expansion:
            raise ValueError(f"2*c3={2 * c3} is not divisible by the block expansion {block.expansion}")
        self.out_channels = 2 * c3
        self.bn_layer = make_layer(block, 3 * c3, 2 * c3 // block.expansion, num_blocks,
                                   stride=2, base_width=base_width)
        self.conv1 = conv3x3(c1, c2, 2)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv2 = conv3x3(c2, c3, 2)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv3 = conv3x3(c2, c3, 2)
        self.bn3 = nn.BatchNorm2d(c3)
        init_weights(self)

    def forward(self, feats: list[Tensor]) -> Tensor:
        f1, f2, f3 = feats
        a = torch.relu(self.bn1(self.conv1(f1)))
        a = torch.relu(self.bn2(self.conv2(a)))
        b = torch.relu(self.bn3(self.conv3(f2)))
        return self.bn_layer(torch.cat([a, b, f3], dim=1)).contiguous()
