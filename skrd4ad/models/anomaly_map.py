"""Anomaly maps and image scores from teacher/student maps, batched on the maps' device.

Per layer ``1 - cosine_similarity`` over channels, bilinear upsampling (align_corners=True) to
the input size, summed (or multiplied) over layers, then Gaussian smoothing equal to
``scipy.ndimage.gaussian_filter(m, sigma)`` (``mode='reflect'``, ``truncate=4``).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .choices import COMBINES, SCORE_KINDS, Combine, ScoreKind  # noqa: F401 (re-exported)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, *, device=None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's choice)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype)


def _reflect_index(n: int, radius: int, device) -> Tensor:
    """Indices that pad a length-``n`` axis by ``radius`` with scipy's 'reflect' rule
    (half-sample symmetric, ``d c b a | a b c d | d c b a``), valid for any ``radius``."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


@lru_cache(maxsize=8)  # one per (size, sigma, device) in practice: built and copied to the device once
def blur_matrix(n: int, sigma: float, truncate: float = 4.0, *, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``(n, n)`` matrix ``K`` with ``K @ v`` = scipy's 1-D Gaussian filter of ``v`` ('reflect'
    borders folded into the matrix).  Cached: callers must not modify the returned tensor."""
    k = gaussian_kernel1d(sigma, truncate, dtype=torch.float64)
    r = (k.numel() - 1) // 2
    src = _reflect_index(n, r, "cpu")  # padded position p reads source index src[p]
    rows = torch.arange(n).repeat_interleave(k.numel())
    cols = src.unfold(0, k.numel(), 1).reshape(-1)  # window of output i: src[i : i + 2r + 1]
    mat = torch.zeros(n, n, dtype=torch.float64).index_put_((rows, cols), k.repeat(n), accumulate=True)
    return mat.to(device=device, dtype=dtype)


#: Above this side length the separable convolution is cheaper than the dense blur matrices.
_MATMUL_MAX_SIDE = 512


def gaussian_blur(maps: Tensor, sigma: float = 4.0, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of ``(B, H, W)`` maps, equal to ``scipy.ndimage.gaussian_filter``
    applied to each map with the same sigma (``mode='reflect'``).  Runs on ``maps.device``.

    Up to 512 px a side it is two batched matrix products ``K_h @ M @ K_w^T`` (run by BLAS or
    tensor cores, unlike a one-channel convolution), above that a separable convolution."""
    if sigma <= 0:
        return maps
    b, h, w = maps.shape
    x = maps.float()
    if max(h, w) <= _MATMUL_MAX_SIDE:
        kh = blur_matrix(h, sigma, truncate, device=x.device)
        kw = kh if w == h else blur_matrix(w, sigma, truncate, device=x.device)
        return (kh @ x @ kw.T).to(maps.dtype)
    k = gaussian_kernel1d(sigma, truncate, device=x.device)
    r = (k.numel() - 1) // 2
    x = x.index_select(2, _reflect_index(w, r, x.device))
    x = F.conv2d(x.reshape(b, 1, h, -1), k.view(1, 1, 1, -1)).reshape(b, h, w)
    x = x.index_select(1, _reflect_index(h, r, x.device))
    x = F.conv2d(x.reshape(b, 1, -1, w), k.view(1, 1, -1, 1)).reshape(b, h, w)
    return x.to(maps.dtype)


def anomaly_map(teacher: list[Tensor], student: list[Tensor], out_size: tuple[int, int],
                combine: str = "sum", sigma: float = 4.0) -> Tensor:
    """``(B, H, W)`` float32 anomaly maps at ``out_size`` from teacher/student maps (fine to coarse)."""
    if combine not in COMBINES:
        raise ValueError(f"unknown map combination {combine!r}; choose one of {', '.join(COMBINES)}")
    total: Tensor | None = None
    for t, s in zip(teacher, student, strict=True):
        d = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1)
        d = F.interpolate(d.unsqueeze(1), size=out_size, mode="bilinear", align_corners=True)[:, 0]
        if total is None:
            total = d
        else:
            total = total + d if combine == "sum" else total * d
    assert total is not None
    return gaussian_blur(total, sigma)


def image_scores(maps: Tensor, kind: str = "max", topk: int = 1) -> Tensor:
    """``(B,)`` image scores: the map's maximum, or the mean of its ``topk`` largest pixels."""
    flat = maps.flatten(1)
    if kind == "max":
        return flat.amax(dim=1)
    if kind == "topk_mean":
        if not 1 <= topk <= flat.shape[1]:
            raise ValueError(f"score topk={topk} must be between 1 and the pixel count {flat.shape[1]}")
        return flat.topk(topk, dim=1).values.mean(dim=1)
    raise ValueError(f"unknown score {kind!r}; choose one of {', '.join(SCORE_KINDS)}")
