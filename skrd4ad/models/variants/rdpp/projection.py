"""RD++'s projection layers: one small conv net per teacher stage, between the frozen teacher and
the bottleneck (Tien et al., CVPR 2023), used in training and at inference.

Per stage of ``c`` channels: four times (3x3 conv, stride 1, padding 1 -> InstanceNorm2d without
affine parameters -> LeakyReLU(0.01)), with channels ``c -> c/2 -> c/4 -> c/2 -> c``; the
spatial size is kept.  The RD++ student computes ``decoder(bottleneck(projection(teacher(x))))``
while the anomaly map still compares ``teacher(x)`` with the decoder's output.

>>> proj = Projection((64, 128, 256))
>>> maps = [torch.zeros(2, 64, 16, 16), torch.zeros(2, 128, 8, 8), torch.zeros(2, 256, 4, 4)]
>>> [tuple(f.shape) for f in proj(maps)]
[(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401 (doctest namespace)
from torch import Tensor, nn


class StageProjection(nn.Module):
    """``(B, c, H, W) -> (B, c, H, W)`` through ``c -> c/2 -> c/4 -> c/2 -> c`` channels.

    ``c`` must be a positive multiple of 4.  InstanceNorm needs more than one spatial position
    per map in training (``H * W > 1``)."""

    def __init__(self, channels: int) -> None:
        if channels < 4 or channels % 4:
            raise ValueError(f"StageProjection channels={channels} must be a positive multiple of 4 "
                             "(the projection narrows to channels/4); use a teacher stage of such width")
        widths = (channels, channels // 2, channels // 4, channels // 2, channels)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1),
                       nn.InstanceNorm2d(c_out), nn.LeakyReLU()]
        super().__init__()
        self.net = nn.Sequential(*layers)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Projection(nn.Module):
    """One :class:`StageProjection` per teacher stage: a list of maps in, the same-shaped list
    out (``maps[i]`` of shape ``(B, channels[i], H_i, W_i)``)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(StageProjection(int(c)) for c in channels)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(s.channels for s in self.stages)  # type: ignore[union-attr]

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        if len(maps) != len(self.stages):
            raise ValueError(f"Projection got {len(maps)} maps for {len(self.stages)} stages "
                             f"(channels {self.channels}); pass one map per teacher stage")
        return [stage(m) for stage, m in zip(self.stages, maps)]
