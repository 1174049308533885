"""Tiny generated datasets and archives for the skrd4ad.data tests (no network, no real data)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def random_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random uint8 image (height, width, 3)."""
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def box_mask(height: int, width: int, top: int, left: int, h: int, w: int, value: int = 255) -> np.ndarray:
    """uint8 (height, width) mask with a ``value`` rectangle."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:top + h, left:left + w] = value
    return mask


def make_mvtec_class(
    root: Path,
    name: str = "widget",
    *,
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    size: tuple[int, int] = (20, 24),
    with_masks: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write one class in MVTec layout under ``root``; return {relative path: array written}.

    Masks are rectangles (0/255) named ``<stem>_mask.png``. ``size`` is (height, width).
    """
    rng = np.random.default_rng(seed)
    defects = {"crack": 2} if defects is None else defects
    h, w = size
    written: dict[str, np.ndarray] = {}

    def put(rel: str, arr: np.ndarray) -> None:
        save_png(root / rel, arr)
        written[rel] = arr

    for i in range(n_train):
        put(f"{name}/train/good/{i:03d}.png", random_rgb(rng, h, w))
    for i in range(n_good):
        put(f"{name}/test/good/{i:03d}.png", random_rgb(rng, h, w))
    for defect, count in defects.items():
        for i in range(count):
            put(f"{name}/test/{defect}/{i:03d}.png", random_rgb(rng, h, w))
            if with_masks:
                put(f"{name}/ground_truth/{defect}/{i:03d}_mask.png", box_mask(h, w, 2 + i, 3, 5, 6))
    return written


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive (``mode`` "w", "w:gz", "w:xz") of regular files {name: content}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_of_folder(folder: Path, mode: str = "w", *, prefix: str = "") -> bytes:
    """A tar archive of every file under ``folder`` (names relative to it, with optional ``prefix``)."""
    members = {
        prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
    return tar_bytes(members, mode)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()
