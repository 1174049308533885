"""Heatmap figures: an anomaly map blended on its image, and "image | ground truth | overlay".

Figures are composed with Pillow from the pixels themselves (matplotlib supplies only the
colour map), and every file is written atomically through :func:`skrd4ad.io.atomic_path`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from skrd4ad.io import atomic_path

__all__ = ["overlay", "render_overlay", "render_triptych", "save_overlay_png", "save_triptych"]

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
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> None:
    """Write :func:`render_overlay` of ``image`` (uint8 (H,W,3)) and ``amap`` (H,W) as a PNG, atomically."""
    out, _ = render_overlay(image, amap, title=title, vmin=vmin, vmax=vmax, alpha=alpha)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)


#: Panels smaller than this (pixels, longer side) are enlarged by an integer factor (nearest).
PANEL_MIN_SIDE = 192
_PAD = 8
_BAR_WIDTH = 14
_TICK_GAP = 8  # tick mark (3 px) + space, so the mark is not read as a minus sign
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
#: zlib level of figure PNGs: level 1 encodes ~1.5x faster than Pillow's default 6 for ~5% more bytes.
_PNG_COMPRESS_LEVEL = 1


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> int:
    return int(np.ceil(font.getlength(text)))


def _fit(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits in ``width`` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "…") > width:
        text = text[:-1]
    return text + "…"


def _enlarge(panel: np.ndarray, factor: int) -> np.ndarray:
    return panel if factor == 1 else panel.repeat(factor, axis=0).repeat(factor, axis=1)


def _tick_texts(lo: float, hi: float) -> list[str]:
    """Five colour-bar labels from ``hi`` (top) to ``lo`` (one when the range is empty)."""
    ticks = np.linspace(hi, lo, 5) if hi > lo else np.array([hi])
    ticks[np.abs(ticks) < 1e-6 * (hi - lo)] = 0.0  # print 0, not -3.05e-05, for a rounded zero
    return [f"{t:.4g}" for t in ticks]


def _paint_bar(canvas: np.ndarray, top: int, left: int, height: int) -> None:
    """The colour map as a vertical bar, vmax at the top, into ``canvas`` in place."""
    levels = np.linspace(1.0, 0.0, height)
    bar = (colormaps[_CMAP](levels)[:, :3] * 255.0).round().astype(np.uint8)
    canvas[top:top + height, left:left + _BAR_WIDTH] = bar[:, None, :]


def _draw_ticks(draw: ImageDraw.ImageDraw, texts: list[str], top: int, bar_left: int, height: int,
                font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> None:
    for k, text in enumerate(texts):
        y = top + (round(k * (height - 1) / (len(texts) - 1)) if len(texts) > 1 else 0)
        draw.line([(bar_left + _BAR_WIDTH, y), (bar_left + _BAR_WIDTH + 3, y)], fill=_INK)
        draw.text((bar_left + _BAR_WIDTH + _TICK_GAP, y), text, fill=_INK, font=font, anchor="lm")


def render_overlay(image: np.ndarray, amap: np.ndarray, *, title: str = "", vmin: float | None = None,
                   vmax: float | None = None, alpha: float = 0.5
                   ) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """:func:`overlay` at the image's own resolution with a labelled colour bar (``vmin`` at the
    bottom, ``vmax`` at the top) on its right and an optional one-line ``title`` above: uint8
    ``(H', W', 3)``, and the box ``(top, left, height, width)`` of ``"overlay"`` and ``"colour bar"``."""
    img = _check_image(image)
    a = _check_map(amap, img.shape[:2])
    lo, hi = _range(a, vmin, vmax)
    panel = overlay(img, a, vmin=lo, vmax=hi, alpha=alpha)
    ph, pw = panel.shape[:2]
    label_font = _font(12)
    tick_texts = _tick_texts(lo, hi)
    title_h = 20 if title else 0
    width = _PAD + pw + _PAD + _BAR_WIDTH + _TICK_GAP + max(_text_width(label_font, t) for t in tick_texts) + _PAD
    top = _PAD + title_h
    canvas = np.full((top + ph + _PAD, width, 3), _BACKGROUND, dtype=np.uint8)
    canvas[top:top + ph, _PAD:_PAD + pw] = panel
    bar_left = 2 * _PAD + pw
    _paint_bar(canvas, top, bar_left, ph)
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    if title:
        draw.text((_PAD, _PAD + title_h // 2), _fit(label_font, title, width - 2 * _PAD), fill=_INK,
                  font=label_font, anchor="lm")
    _draw_ticks(draw, tick_texts, top, bar_left, ph, label_font)
    return np.asarray(pil), {"overlay": (top, _PAD, ph, pw), "colour bar": (top, bar_left, ph, _BAR_WIDTH)}


def render_triptych(
    image: np.ndarray,
    mask: np.ndarray | None,
    amap: np.ndarray,
    *,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """The :func:`save_triptych` figure as a uint8 ``(H, W, 3)`` array, and the box
    ``(top, left, height, width)`` of each panel (``"image"``, ``"ground truth"``,
    ``"anomaly map"``, ``"colour bar"``) in it.

    Panels are the pixels themselves, enlarged by an integer factor (nearest neighbour) only
    when the image's longer side is below :data:`PANEL_MIN_SIDE`; the colour bar runs from
    ``vmin`` (bottom) to ``vmax`` (top) with five labelled ticks.  Drawn with Pillow: a few
    milliseconds per figure, about 20x faster than the same layout in matplotlib.
    """
    img = _check_image(image)
    a = _check_map(amap, img.shape[:2])
    lo, hi = _range(a, vmin, vmax)
    if mask is None:
        gt = np.zeros_like(img)
    else:
        m = _check_map(mask, img.shape[:2], name="mask")
        gt = np.repeat(((m != 0) * 255).astype(np.uint8)[..., None], 3, axis=2)
    factor = max(1, -(-PANEL_MIN_SIDE // max(img.shape[:2])))  # ceil division
    panels = [_enlarge(p, factor) for p in (img, gt, overlay(img, a, vmin=lo, vmax=hi, alpha=alpha))]
    ph, pw = panels[0].shape[:2]

    title_font, label_font = _font(14), _font(12)
    tick_texts = _tick_texts(lo, hi)
    tick_width = max(_text_width(label_font, t) for t in tick_texts)
    title_h, label_h = 22, 18
    width = _PAD + 3 * (pw + _PAD) + _BAR_WIDTH + _TICK_GAP + tick_width + _PAD
    height = _PAD + title_h + label_h + ph + _PAD
    top = _PAD + title_h + label_h
    canvas = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for k, (name, panel) in enumerate(zip(("image", "ground truth", "anomaly map"), panels)):
        left = _PAD + k * (pw + _PAD)
        canvas[top:top + ph, left:left + pw] = panel
        boxes[name] = (top, left, ph, pw)
    bar_left = _PAD + 3 * (pw + _PAD)
    _paint_bar(canvas, top, bar_left, ph)
    boxes["colour bar"] = (top, bar_left, ph, _BAR_WIDTH)

    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    draw.text((width // 2, _PAD + title_h // 2), _fit(title_font, title, width - 2 * _PAD),
              fill=_INK, font=title_font, anchor="mm")
    for name, (_, left, _, w) in boxes.items():
        if name != "colour bar":
            draw.text((left + w // 2, top - label_h // 2), name, fill=_INK, font=label_font, anchor="mm")
    if mask is None:
        _, left, _, w = boxes["ground truth"]
        draw.text((left + w // 2, top + ph // 2), "no mask", fill=(255, 255, 255), font=label_font, anchor="mm")
    _draw_ticks(draw, tick_texts, top, bar_left, ph, label_font)
    return np.asarray(pil), boxes


def save_triptych(path: str | os.PathLike[str], image: np.ndarray, mask: np.ndarray | None, amap: np.ndarray,
                  **style: Any) -> None:
    """Write one PNG with three panels: image | ground truth | overlay (with a colour bar).

    Args: image uint8 (H, W, 3); mask (H, W) nonzero = anomalous, or None (the panel then
    says "no mask"); amap float (H, W); ``style``: the keywords of :func:`render_triptych`
    (``title``, ``vmin``/``vmax``/``alpha`` as in :func:`overlay`: pass the same vmin/vmax for
    every image of a run to compare them).
    """
    canvas, _ = render_triptych(image, mask, amap, **style)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
