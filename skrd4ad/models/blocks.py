"""Residual blocks of the one-class bottleneck (strided convolutions) and the decoder
(transposed convolutions).

Attribute names (``conv1``, ``bn1``, ``downsample`` / ``upsample`` ...) follow the reference
RD4AD code so that its state dicts load without renaming (see :mod:`skrd4ad.models.reference`).
Every block maps ``(B, inplanes, H, W)`` to ``(B, planes * expansion, H', W')`` with
``H' = H / stride`` for encoder blocks and ``H' = H * stride`` for decoder blocks.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def deconv2x2(in_ch: int, out_ch: int, stride: int = 2, groups: int = 1) -> nn.ConvTranspose2d:
    """2x2 transposed convolution (doubles the spatial size at stride 2), no bias."""
    return nn.ConvTranspose2d(in_ch, out_ch, 2, stride=stride, groups=groups, bias=False)


class _Block(nn.Module):
    """Common interface: ``expansion`` and the ``(inplanes, planes, stride, shortcut, base_width)``
    constructor used by :func:`make_layer`."""

    expansion: ClassVar[int] = 1
    decoder: ClassVar[bool] = False

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 shortcut: nn.Module | None = None, base_width: int = 64) -> None:
        super().__init__()

    def _residual(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _shortcut(self) -> nn.Module | None:
        return getattr(self, "upsample" if self.decoder else "downsample")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self._shortcut()
        identity = x if shortcut is None else shortcut(x)
        return torch.relu(self._residual(x) + identity)


class BasicBlock(_Block):
    """Two 3x3 convolutions (the first strided, or a 2x2 transposed convolution in the decoder)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 shortcut: nn.Module | None = None, base_width: int = 64) -> None:
        super().__init__(inplanes, planes, stride, shortcut, base_width)
        if base_width != 64:
            raise ValueError(f"BasicBlock supports base_width=64 only, got {base_width}")
        if self.decoder and stride == 2:
            self.conv1: nn.Module = deconv2x2(inplanes, planes, stride)
        else:
            self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        setattr(self, "upsample" if self.decoder else "downsample", shortcut)

    def _residual(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_Block):
    """1x1 -> 3x3 (strided, or 2x2 transposed in the decoder) -> 1x1 expansion 4, width scaled
    by ``base_width / 64`` (128 for wide ResNets)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 shortcut: nn.Module | None = None, base_width: int = 64) -> None:
        super().__init__(inplanes, planes, stride, shortcut, base_width)
        width = int(planes * (base_width / 64.0))
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        if self.decoder and stride == 2:
            self.conv2: nn.Module = deconv2x2(width, width, stride)
        else:
            self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        setattr(self, "upsample" if self.decoder else "downsample", shortcut)

    def _residual(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class DecoderBasicBlock(BasicBlock):
    """:class:`BasicBlock` that upsamples with a transposed convolution when ``stride == 2``."""

    decoder = True


class DecoderBottleneck(Bottleneck):
    """:class:`Bottleneck` that upsamples with a transposed convolution when ``stride == 2``."""

    decoder = True


def make_layer(block: type[_Block], inplanes: int, planes: int, blocks: int, *,
               stride: int, base_width: int = 64) -> nn.Sequential:
    """A stage of ``blocks`` residual blocks; the first changes the resolution by ``stride``.

    The first block's shortcut is a 1x1 strided convolution (encoder) or a 2x2 transposed
    convolution (decoder) followed by BatchNorm, whenever the shape changes.
    """
    out_ch = planes * block.expansion
    shortcut: nn.Module | None = None
    if stride != 1 or inplanes != out_ch:
        proj = deconv2x2(inplanes, out_ch, stride) if block.decoder else conv1x1(inplanes, out_ch, stride)
        shortcut = nn.Sequential(proj, nn.BatchNorm2d(out_ch))
    layers = [block(inplanes, planes, stride, shortcut, base_width)]
    layers += [block(out_ch, planes, 1, None, base_width) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) for ``Conv2d``, ones/zeros for BatchNorm, as the reference does.

    Transposed convolutions keep PyTorch's default initialisation (as in the reference, where
    ``isinstance(m, nn.Conv2d)`` is false for them).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)
