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


def blur_matrices(h: int, w: int, sigma: float, truncate: float = 4.0, *,
                  device=None) -> tuple[Tensor, Tensor] | None:
    """``(K_h, K_w)`` float32 blur matrices that :func:`gaussian_blur` uses for ``(B, h, w)`` maps
    (``K_h @ M @ K_w^T``), or None where it uses no matrices (``sigma <= 0``: no blur; a side
    above 512 px: separable convolution).  Cached tensors: clone them before modifying."""
    if sigma <= 0 or max(h, w) > _MATMUL_MAX_SIDE:
        return None
    # under torch.compile / torch.export the cache would keep the tracer's fake tensors for later eager calls
    make = blur_matrix.__wrapped__ if torch.compiler.is_compiling() else blur_matrix
    kh = make(h, sigma, truncate, device=device)
    return kh, (kh if w == h else make(w, sigma, truncate, device=device))


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0, *,
                  matrices: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Separable Gaussian blur of ``(B, H, W)`` maps, equal to ``scipy.ndimage.gaussian_filter``
    applied to each map with the same sigma (``mode='reflect'``).  Runs on ``maps.device``.

    Up to 512 px a side it is two batched matrix products ``K_h @ M @ K_w^T`` (run by BLAS or
    tensor cores, unlike a one-channel convolution), above that a separable convolution.
    ``matrices``: the :func:`blur_matrices` of this size and sigma, precomputed by the caller
    (an exported model holds them as buffers); None looks them up."""
    if sigma <= 0:
        return maps
    b, h, w = maps.shape
    x = maps.float()
    if matrices is None:
        matrices = blur_matrices(h, w, sigma, truncate, device=x.device)
    if matrices is not None:
        kh, kw = matrices
        return (kh @ x @ kw.T).to(maps.dtype)
    k = gaussian_kernel1d(sigma, truncate, device=x.device)
    r = (k.numel() - 1) // 2
    x = x.index_select(2, _reflect_index(w, r, x.device))
    x = F.conv2d(x.reshape(b, 1, h, -1), k.view(1, 1, 1, -1)).reshape(b, h, w)
    x = x.index_select(1, _reflect_index(h, r, x.device))
    x = F.conv2d(x.reshape(b, 1, -1, w), k.view(1, 1, -1, 1)).reshape(b, h, w)
    return x.to(maps.dtype)


def anomaly_map(teacher: list[Tensor], student: list[Tensor], out_size: tuple[int, int], *,
                combine: str, sigma: float, blur: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``(B, H, W)`` float32 anomaly maps at ``out_size`` from teacher/student maps (fine to coarse).
    ``blur``: precomputed :func:`blur_matrices` for ``out_size`` and ``sigma`` (optional)."""
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
    return gaussian_blur(total, sigma, matrices=blur)


def image_scores(maps: Tensor, kind: str, topk: int) -> Tensor:
    """``(B,)`` image scores: the map's maximum, or the mean of its ``topk`` largest pixels."""
    flat = maps.flatten(1)
    if kind == "max":
        return flat.amax(dim=1)
    if kind == "topk_mean":
        if not 1 <= topk <= flat.shape[1]:
            raise ValueError(f"score topk={topk} must be between 1 and the pixel count {flat.shape[1]}")
        return flat.topk(topk, dim=1).values.mean(dim=1)
    raise ValueError(f"unknown score {kind!r}; choose one of {', '.join(SCORE_KINDS)}")
