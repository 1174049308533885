"""Heatmap figures: an anomaly map blended on its image, and "image | ground truth | overlay".

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global
state), and writes every file atomically through :func:`skrd4ad.io.atomic_path`.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from skrd4ad.io import atomic_path

__all__ = ["overlay", "save_overlay_png", "save_triptych"]

_CMAP = "jet"


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"image must be uint8 (H, W, 3) RGB, got {img.dtype} {img.shape}; convert with "
            "np.clip(x * 255, 0, 255).astype(np.uint8) and move channels last"
        )
    return img


def _check_map(amap: np.ndarray, hw: tuple[int, ...], name: str = "amap") -> np.ndarray:
    a = np.asarray(amap)
    if a.shape != tuple(hw):
        raise ValueError(f"{name} must have the image's shape {tuple(hw)}, got {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; cannot map it to colours")
    return a


def _range(a: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    lo = float(a.min()) if vmin is None else float(vmin)
    hi = float(a.max()) if vmax is None else float(vmax)
    if hi < lo:
        raise ValueError(f"vmax ({hi}) must be >= vmin ({lo})")
    return lo, hi


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a jet-coloured anomaly map onto an image.

    Args: image uint8 (H, W, 3) RGB; amap float (H, W); the map is scaled so vmin -> 0 and
    vmax -> 1 (defaults: its own min and max; values outside are clipped; a constant map
    gets the bottom colour); alpha in [0, 1] is the weight of the colours.
    Returns uint8 (H, W, 3): ``round((1 - alpha) * image + alpha * 255 * jet(scaled))``.
    """
    img = _check_image(image)
    a = _check_map(amap, img.shape[:2])
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    lo, hi = _range(a, vmin, vmax)
    scaled = np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)
    rgb = colormaps[_CMAP](scaled)[..., :3] * 255.0
    out = (1.0 - alpha) * img + alpha * rgb
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_overlay_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    amap: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> None:
    """Write :func:`overlay` of ``image`` (uint8 (H,W,3)) and ``amap`` (H,W) as a PNG, atomically."""
    out = overlay(image, amap, vmin=vmin, vmax=vmax, alpha=alpha)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")


def save_triptych(
    path: str | os.PathLike[str],
    image: np.ndarray,
    mask: np.ndarray | None,
    amap: np.ndarray,
    *,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> None:
    """Write one PNG with three panels: image | ground truth | overlay (with a colour bar).

    Args: image uint8 (H, W, 3); mask (H, W) nonzero = anomalous, or None (the panel then
    says "no mask"); amap float (H, W); title: figure title; vmin/vmax/alpha as in
    :func:`overlay` (pass the same vmin/vmax for every image of a run to compare them).
    """
    img = _check_image(image)
    a = _check_map(amap, img.shape[:2])
    lo, hi = _range(a, vmin, vmax)
    blended = overlay(img, a, vmin=lo, vmax=hi, alpha=alpha)
    fig = Figure(figsize=(10.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_img, ax_gt, ax_ov = fig.subplots(1, 3)
    ax_img.imshow(img)
    ax_img.set_title("image")
    if mask is None:
        ax_gt.imshow(np.zeros(img.shape[:2]), cmap="gray", vmin=0, vmax=1)
        ax_gt.text(0.5, 0.5, "no mask", color="white", ha="center", va="center", transform=ax_gt.transAxes)
    else:
        m = _check_map(mask, img.shape[:2], name="mask")
        ax_gt.imshow(m != 0, cmap="gray", vmin=0, vmax=1)
    ax_gt.set_title("ground truth")
    ax_ov.imshow(blended)
    ax_ov.set_title("anomaly map")
    for ax in (ax_img, ax_gt, ax_ov):
        ax.set_axis_off()
    norm = Normalize(lo, hi if hi > lo else lo + 1.0)
    fig.colorbar(ScalarMappable(norm=norm, cmap=_CMAP), ax=ax_ov, fraction=0.046)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
