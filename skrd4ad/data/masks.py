"""Ground-truth masks as values: colour and alpha reduced, binarised by MVTec's rule, and a note
when a mask mixes scales.  Shared by prepare (every mask it caches) and the sources' converters."""

from __future__ import annotations

import numpy as np
from PIL import Image


def mask_values(img: Image.Image) -> np.ndarray:
    """Mask values as a 2-D array: colour masks reduce to the max over colour channels (alpha ignored)."""
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    arr = np.asarray(img)
    return arr.max(axis=2) if arr.ndim == 3 else arr


def binarise_mask(values: np.ndarray) -> np.ndarray:
    """0/1 uint8 mask: 1 where ``values > 0`` (MVTec's convention: any non-zero pixel is defect).

    A threshold relative to the maximum would keep 1 of 12 pixels of a 0/1 mask with one stray
    255; :func:`mask_scale_note` says when a mask is not plain {0, max}."""
    return (values > 0).astype(np.uint8)


def mask_scale_note(values: np.ndarray) -> str | None:
    """Why a mask is suspicious, or ``None`` for a plain two-level mask ({0, v} or all zero): more
    than two distinct values (scales mixed, e.g. 0/1 with stray 255, or soft/JPEG edges)."""
    levels = np.unique(values)
    if len(levels) <= 2:
        return None
    shown = ", ".join(str(v) for v in levels[:6].tolist()) + (", ..." if len(levels) > 6 else "")
    return (f"it has {len(levels)} distinct values ({shown}), not {{0, max}}; every non-zero pixel counts as "
            "defect: if the low values are noise or a second scale, save the mask as 0/255")
