"""RD++'s pseudo-anomalies: fractal simplex noise added inside one random rectangle per image,
in [0, 1] pixel units before ImageNet normalisation (Tien et al., CVPR 2023).

As in the authors' data loader, at 256 px: rectangle sides drawn uniformly from 10..31 px, its top
left corner from 1..(256 - side - 1); noise of 6 octaves, persistence 0.6, first octave
frequency 1/32 px, over (channel, row, column) local to the rectangle, times 0.2; the sum is not
clipped.  At other sizes the sides, the corner range and the noise's spatial frequency scale with
the image (sides ``round(10 * H / 256)``..``H // 8 - 1``; frequency ``32 * min(H, W) / 256`` px),
so the pattern covers the same fraction of the image.

Randomness comes only from the caller's CPU ``torch.Generator`` (never the global RNG), so a
run that saves and restores that generator's state replays the same pseudo-anomalies.  Per
batch: the rectangles and permutation tables are drawn on the CPU and moved to the images'
device in one copy; the noise is computed there (no host syncs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from skrd4ad.data.prepared import _imagenet_constants
from skrd4ad.models.variants.rdpp.simplex_noise import random_permutations, simplex_noise

AMPLITUDE = 0.2
OCTAVES = 6
PERSISTENCE = 0.6
#: The authors' sizes at their 256 px images.
REFERENCE_SIZE = 256
MIN_SIDE = 10
FREQUENCY = 32.0


def side_range(size: int) -> tuple[int, int]:
    """``(low, high)``: rectangle sides ``low <= side < high`` for an image side ``size``
    (``(10, 32)`` at 256 px)."""
    if size < 32:
        raise ValueError(f"image side {size} px is too small for a pseudo-anomaly rectangle; use images of "
                         "at least 32 px (prepare.image_size)")
    low = max(1, round(MIN_SIDE * size / REFERENCE_SIZE))
    return low, max(low + 1, size // 8)


def sample_boxes(batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """``(batch, 4)`` int64 rectangles ``(top, left, h, w)`` drawn from ``generator`` (CPU):
    sides from :func:`side_range`, ``1 <= top <= height - h - 1`` (likewise ``left``)."""
    (lo_h, hi_h), (lo_w, hi_w) = side_range(height), side_range(width)
    h = torch.randint(lo_h, hi_h, (batch,), generator=generator)
    w = torch.randint(lo_w, hi_w, (batch,), generator=generator)
    u = torch.rand(2, batch, generator=generator, dtype=torch.float64)
    top = 1 + (u[0] * (height - h - 1)).long()
    left = 1 + (u[1] * (width - w - 1)).long()
    return torch.stack([top, left, h, w], dim=1)


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"add_pseudo_anomalies needs a CPU torch.Generator, got {generator!r}; "
                        "pass torch.Generator().manual_seed(seed) and keep it with the training state")


def _as_float_nchw(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format) / 255.0
    if images.is_floating_point() and images.ndim == 4 and images.shape[1] == 3:
        return images.to(torch.float32)
    raise ValueError(f"add_pseudo_anomalies expects uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1], got "
                     f"{images.dtype} {tuple(images.shape)}; pass rows of PreparedClass.train_images")


def add_pseudo_anomalies(images: Tensor, generator: torch.Generator, *, normalize: bool = False,
                         amplitude: float = AMPLITUDE) -> Tensor:
    """Noisy copy of ``images`` (uint8 ``(B, H, W, 3)`` or float ``(B, 3, H, W)`` in [0, 1], any
    device) as float32 ``(B, 3, H, W)`` on the same device: in [0, 1] units plus the noise, or
    ImageNet-normalised when ``normalize`` (then comparable with ``to_model_input``'s output)."""
    _check_generator(generator)
    x = _as_float_nchw(images)
    batch, _, height, width = x.shape
    boxes = sample_boxes(batch, height, width, generator)
    perm = random_permutations(batch, generator)
    packed = torch.cat([boxes, perm], dim=1).to(x.device, non_blocking=True)  # one copy per batch
    boxes, perm = packed[:, :4], packed[:, 4:]
    box_h, box_w = side_range(height)[1] - 1, side_range(width)[1] - 1  # largest sides
    frequency = FREQUENCY * min(height, width) / REFERENCE_SIZE
    noise = simplex_noise((3, box_h, box_w), perm, OCTAVES, PERSISTENCE, frequency)  # (B, 3, box_h, box_w)
    rows = torch.arange(box_h, device=x.device)
    cols = torch.arange(box_w, device=x.device)
    inside = (rows.view(1, -1, 1) < boxes[:, 2].view(-1, 1, 1)) & (cols.view(1, 1, -1) < boxes[:, 3].view(-1, 1, 1))
    noise = noise * inside.unsqueeze(1)
    # place each box at (top, left); indices past the image edge only carry zeros (clamped, summed)
    r = (boxes[:, 0:1] + rows).clamp(max=height - 1)
    c = (boxes[:, 1:2] + cols).clamp(max=width - 1)
    b = torch.arange(batch, device=x.device)
    field = torch.zeros_like(x)
    field.index_put_((b.view(-1, 1, 1, 1), torch.arange(3, device=x.device).view(1, 3, 1, 1),
                      r.view(batch, 1, -1, 1), c.view(batch, 1, 1, -1)), noise, accumulate=True)
    out = x + amplitude * field
    if normalize:
        mean, std = _imagenet_constants(out.device)
        out = (out - mean) / std
    return out
