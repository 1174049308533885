"""The embedded default dataset: texture photographs from scikit-image with synthetic defects.

Each class is one grayscale texture photograph bundled with scikit-image (no download), given a
fixed two-tone colouring. Normal images are varied crops of it (shift, flip, small rotation,
scale, brightness/contrast/white-balance jitter, sensor noise). Anomalous test images are
normal images with one defect painted in; the mask is exactly the set of pixels whose bytes
differ from the defect-free image. Everything derives from ``seed``, so the same arguments give
byte-identical PNGs. See ``docs/data.md`` for pictures.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from skrd4ad.data.layout import GOOD, DatasetError
from skrd4ad.data.sources.synthetic.settings import SETTINGS
from skrd4ad.io import StagingDir, atomic_path, replace_dir, writable_dir, write_json_atomic

GENERATOR_VERSION = 1
"""Bumped whenever the images for a given seed change; stored in each class's marker file."""

MARKER = ".skrd4ad_synthetic.json"


@dataclass(frozen=True)
class TextureSource:
    """A bundled grayscale photograph and the colours its dark and light tones are mapped to (RGB 0..1)."""

    loader: str
    dark: tuple[float, float, float]
    light: tuple[float, float, float]


SOURCES: dict[str, TextureSource] = {
    "brick": TextureSource("brick", dark=(0.16, 0.07, 0.05), light=(0.93, 0.66, 0.52)),
    "grass": TextureSource("grass", dark=(0.05, 0.10, 0.03), light=(0.78, 0.90, 0.55)),
    "gravel": TextureSource("gravel", dark=(0.10, 0.09, 0.08), light=(0.95, 0.91, 0.84)),
}
"""Class name -> scikit-image photograph (``skimage.data.<loader>()``, 512x512, bundled offline)."""

DEFAULT_CLASSES: tuple[str, ...] = tuple(SOURCES)
DEFECT_TYPES: tuple[str, ...] = ("scratch", "stain", "hole", "foreign", "smear")
"""Defect types, also the ``test/<defect>`` folder names."""

_ALPHA_MIN = 0.05  # blend weights below this are dropped, so a defect has a definite extent
_MIN_VISIBLE = 8.0 / 255.0  # mean change under a defect's mask (max over channels) must reach this
_MAX_TRIES = 50


@functools.lru_cache(maxsize=None)
def _source_gray(name: str) -> np.ndarray:
    """The source photograph as float32 (H, W) in [0, 1] (read-only, cached)."""
    import skimage.data

    if name not in SOURCES:
        raise DatasetError(f"unknown synthetic class {name!r}; choose from {sorted(SOURCES)}")
    img = getattr(skimage.data, SOURCES[name].loader)()
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    gray = np.ascontiguousarray(img, dtype=np.float32) / 255.0
    gray.setflags(write=False)
    return gray


def _tint(gray: np.ndarray, source: TextureSource) -> np.ndarray:
    """Map gray (H, W) in [0, 1] to RGB (H, W, 3) float32 between the source's dark and light colours."""
    dark = np.asarray(source.dark, dtype=np.float32)
    light = np.asarray(source.light, dtype=np.float32)
    return dark + (light - dark) * gray[..., None]


def _random_view(
    name: str, rng: np.random.Generator, size: int, *, zoom: tuple[float, float] = (0.55, 0.72)
) -> np.ndarray:
    """A random rotated/flipped/scaled square crop of source ``name`` as float32 gray (size, size).

    The crop side is ``zoom`` x the source side; bilinear sampling after a Gaussian prefilter
    when the crop is reduced (anti-aliasing).
    """
    src = _source_gray(name)
    h, w = src.shape
    side = rng.uniform(*zoom) * min(h, w)
    theta = np.deg2rad(rng.uniform(-7.0, 7.0))
    flip = rng.choice([-1.0, 1.0], size=2)
    half_extent = 0.5 * side * (abs(np.cos(theta)) + abs(np.sin(theta))) + 1.0
    cy = rng.uniform(half_extent, h - 1 - half_extent)
    cx = rng.uniform(half_extent, w - 1 - half_extent)
    step = side / size  # source pixels per output pixel
    if step > 1.0:
        src = ndimage.gaussian_filter(src, sigma=0.5 * np.sqrt(step**2 - 1.0), mode="reflect")
    u = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
    vv, uu = np.meshgrid(u * flip[0], u * flip[1], indexing="ij")
    cos, sin = np.cos(theta), np.sin(theta)
    ys = cy + side * (cos * vv + sin * uu)
    xs = cx + side * (-sin * vv + cos * uu)
    return ndimage.map_coordinates(src, [ys, xs], order=1, mode="reflect").astype(np.float32)


def _normal_image(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free image of class ``name``: float32 (size, size, 3) in [0, 1]."""
    gray = _random_view(name, rng, size)
    mean = float(gray.mean())
    gray = (gray - mean) * rng.uniform(0.9, 1.1) + mean + rng.uniform(-0.04, 0.04)
    rgb = _tint(gray, SOURCES[name]) * (1.0 + rng.uniform(-0.02, 0.02, size=3)).astype(np.float32)
    rgb += rng.normal(0.0, 0.008, size=rgb.shape).astype(np.float32)
    return np.clip(rgb, 0.0, 1.0)


def _defect_extent(rng: np.random.Generator, size: int) -> float:
    """A defect radius in pixels: area log-uniform between 0.05 % and 4 % of the image."""
    area = np.exp(rng.uniform(np.log(0.0005), np.log(0.04)))
    return float(size * np.sqrt(area / np.pi))


def _center(rng: np.random.Generator, size: int, radius: float) -> tuple[float, float]:
    margin = min(radius + 2.0, size / 2.0)
    return float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin))


def _blob_distance(rng: np.random.Generator, size: int, center: tuple[float, float], radius: float, *,
                   roughness: float = 0.25) -> np.ndarray:
    """Signed distance-like field (pixels) of an irregular ellipse: > 0 inside, 0 on the border."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - center[0], xx - center[1]
    angle = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.55, 1.0)
    ca, sa = np.cos(angle), np.sin(angle)
    ry = (ca * dy + sa * dx) / aspect
    rx = -sa * dy + ca * dx
    rho = np.hypot(ry, rx)
    phi = np.arctan2(ry, rx)
    boundary = np.ones_like(rho)
    for k in range(2, 6):
        boundary += rng.uniform(0, roughness / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return (radius * boundary - rho) * np.sqrt(aspect)


def _scratch(img: np.ndarray, rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line (cubic Bezier), lighter or darker than the surface, tapered at both ends."""
    size = img.shape[0]
    from scipy.spatial import cKDTree

    length = rng.uniform(0.08, 0.45) * size
    width = rng.uniform(0.6, 2.2) * size / 256.0
    theta = rng.uniform(0, 2 * np.pi)
    p0 = np.asarray(_center(rng, size, length / 2)) - 0.5 * length * np.array([np.sin(theta), np.cos(theta)])
    p3 = p0 + length * np.array([np.sin(theta), np.cos(theta)])
    normal = np.array([np.cos(theta), -np.sin(theta)])
    p1 = p0 + (p3 - p0) / 3 + rng.uniform(-0.3, 0.3) * length * normal
    p2 = p0 + 2 * (p3 - p0) / 3 + rng.uniform(-0.3, 0.3) * length * normal
    t = np.linspace(0.0, 1.0, max(int(length * 4), 8))[:, None]
    curve = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    reach = width / 2 + 1.0
    lo = np.clip(np.floor(curve.min(0) - reach), 0, size).astype(int)
    hi = np.clip(np.ceil(curve.max(0) + reach) + 1, 0, size).astype(int)
    yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]]
    pixels = np.stack([yy.ravel() + 0.5, xx.ravel() + 0.5], axis=1)
    dist, idx = cKDTree(curve).query(pixels, distance_upper_bound=reach)
    near = np.isfinite(dist)
    local_width = width * np.sin(np.pi * t[idx[near], 0]) ** 0.3
    values = np.zeros(pixels.shape[0], dtype=np.float32)
    values[near] = np.clip(local_width / 2 + 0.5 - dist[near], 0.0, 1.0)
    alpha = np.zeros((size, size), dtype=np.float32)
    alpha[lo[0]:hi[0], lo[1]:hi[1]] = values.reshape(yy.shape) * rng.uniform(0.35, 1.0)
    source = SOURCES[name]
    target = np.asarray(source.light if rng.random() < 0.6 else source.dark, dtype=np.float32)
    appearance = img + rng.uniform(0.5, 1.0) * (target - img)
    return appearance, alpha


def _stain(img: np.ndarray, rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A blurred blob of colour (rust, dirt, oil, bleach), sometimes darker at its rim like a dried drop."""
    size = img.shape[0]
    radius = _defect_extent(rng, size)
    inside = (_blob_distance(rng, size, _center(rng, size, radius), radius, roughness=0.35) > 0).astype(np.float32)
    soft = ndimage.gaussian_filter(inside, sigma=max(rng.uniform(0.12, 0.3) * radius, 0.7))
    if rng.random() < 0.3:  # ring: more pigment where the drop dried
        soft = np.clip(soft * (1.0 + 2.5 * (1.0 - soft)) * (soft > 0.15), 0.0, 1.0)
    alpha = soft / max(float(soft.max()), 1e-6) * rng.uniform(0.25, 0.75)
    colours = np.array([[0.55, 0.35, 0.2], [0.3, 0.25, 0.2], [0.45, 0.5, 0.3], [0.6, 0.55, 0.75]], dtype=np.float32)
    if rng.random() < 0.25:
        appearance = img + 0.6 * (1.0 - img)  # bleached / water mark
    else:
        appearance = img * colours[rng.integers(len(colours))] * rng.uniform(0.6, 1.2)
    return appearance, alpha


def _hole(img: np.ndarray, rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A dark cavity with a soft, unevenly lit rim."""
    size = img.shape[0]
    radius = 0.7 * _defect_extent(rng, size)
    center = _center(rng, size, 1.6 * radius)
    depth = _blob_distance(rng, size, center, radius, roughness=0.15)
    rim = max(0.5 * radius, 1.5)
    core = np.clip(depth + 0.5, 0.0, 1.0)
    ring = np.clip(1.0 + depth / rim, 0.0, 1.0) ** 1.5 * (depth <= 0.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    light = rng.uniform(0, 2 * np.pi)
    shade = np.cos(np.arctan2(yy - center[0], xx - center[1]) - light)[..., None]
    dark = np.asarray(SOURCES[name].dark, dtype=np.float32) * rng.uniform(0.15, 0.5)
    cavity = dark + 0.15 * img + rng.normal(0.0, 0.01, size=img.shape).astype(np.float32)
    rim_look = img * (1.0 + 0.5 * shade) + 0.06
    appearance = np.where(core[..., None] > 0, cavity, rim_look)
    alpha = np.maximum(core, 0.8 * ring)
    return appearance, alpha


def _foreign(img: np.ndarray, rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A patch of another texture, in its own colours or re-coloured (and often matched) to this one."""
    size = img.shape[0]
    donor = str(rng.choice([n for n in SOURCES if n != name]))
    gray = _random_view(donor, rng, size, zoom=(0.3, 0.8))
    own_colours = rng.random() < 0.5
    patch = _tint(gray, SOURCES[donor] if own_colours else SOURCES[name])
    radius = _defect_extent(rng, size)
    alpha = np.clip(_blob_distance(rng, size, _center(rng, size, radius), radius, roughness=0.4) + 0.5, 0.0, 1.0)
    if not own_colours and rng.random() < 0.6:  # match mean/std under the patch: subtle
        region = alpha > 0.5
        if region.any():
            mu_i, sd_i = img[region].mean(0), img[region].std(0) + 1e-3
            mu_p, sd_p = patch[region].mean(0), patch[region].std(0) + 1e-3
            patch = (patch - mu_p) / sd_p * sd_i + mu_i
    return patch.astype(np.float32), alpha


def _smear(img: np.ndarray, rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A region whose texture is missing: blurred, smeared in one direction, or filled flat."""
    size = img.shape[0]
    radius = _defect_extent(rng, size)
    center = _center(rng, size, radius)
    distance = _blob_distance(rng, size, center, radius, roughness=0.3)
    feather = max(0.2 * radius, 1.0)
    alpha = np.clip(distance / feather + 0.5, 0.0, 1.0)
    kind = rng.integers(3)
    if kind == 0:
        appearance = ndimage.gaussian_filter(img, sigma=(max(0.3 * radius, 1.5),) * 2 + (0,))
    elif kind == 1:
        steps = max(int(0.8 * radius), 3)
        direction = rng.uniform(0, 2 * np.pi)
        appearance = np.zeros_like(img)
        for j in range(steps):
            shift = (round(j * np.sin(direction)), round(j * np.cos(direction)))
            appearance += np.roll(img, shift, axis=(0, 1))
        appearance /= steps
    else:
        region = alpha > 0.5
        fill = img[region].mean(0) if region.any() else img.mean((0, 1))
        appearance = fill + rng.normal(0.0, 0.01, size=img.shape).astype(np.float32)
    return appearance.astype(np.float32), alpha


_DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator, str], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "stain": _stain,
    "hole": _hole,
    "foreign": _foreign,
    "smear": _smear,
}


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticImage:
    """One generated image: ``image`` uint8 (S, S, 3); ``clean`` the same image before the defect;
    ``mask`` uint8 (S, S) 0/1 with 1 exactly where ``image`` differs from ``clean`` (``None`` if normal)."""

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray | None


def _rng(seed: int, class_name: str, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), stream, index])


def make_image(class_name: str, *, seed: int, index: int, stream: str = "train", defect: str | None = None,
               image_size: int = 256) -> SyntheticImage:
    """Generate one image; its random stream depends only on (seed, class, stream, defect, index).

    ``stream``: ``"train"`` or ``"test"``; ``defect``: ``None`` for a normal image, else one of
    :data:`DEFECT_TYPES`. Pixels the defect touches with weight below 5 % are left alone; pixels it
    touches whose 8-bit value would not change are moved by one level toward the defect, so the
    mask equals the changed pixels and the defect region has no holes. A defect whose mean change
    under its mask is below 8/255 (invisible) is redrawn from the same random stream.
    """
    if defect is not None and defect not in _DEFECTS:
        raise DatasetError(f"unknown defect type {defect!r}; choose from {list(DEFECT_TYPES)}")
    stream_id = {"train": 0, "test": 1}[stream] * 16 + (0 if defect is None else 1 + DEFECT_TYPES.index(defect))
    rng = _rng(seed, class_name, stream_id, index)
    clean_f = _normal_image(class_name, rng, image_size)
    clean = _to_uint8(clean_f)
    if defect is None:
        return SyntheticImage(image=clean, clean=clean, mask=None)
    for _ in range(_MAX_TRIES):  # redraw defects that would be invisible (e.g. a blur on a flat area)
        appearance, alpha = _DEFECTS[defect](clean_f, rng, class_name)
        alpha = np.where(alpha >= _ALPHA_MIN, alpha, 0.0).astype(np.float32)
        region = alpha > 0
        blended = clean_f + alpha[..., None] * (np.clip(appearance, 0.0, 1.0) - clean_f)
        if region.any() and np.abs(blended - clean_f)[region].max(axis=1).mean() >= _MIN_VISIBLE:
            break
    else:
        raise DatasetError(f"could not draw a visible {defect} on {class_name} test image {index} (seed {seed})")
    image = _to_uint8(blended)
    unchanged = region & (image == clean).all(axis=2)
    if unchanged.any():
        direction = np.where(blended[unchanged] >= clean_f[unchanged], 1, -1)
        channel = np.abs(blended[unchanged] - clean_f[unchanged]).argmax(axis=1)
        values = image[unchanged].astype(np.int16)
        rows = np.arange(values.shape[0])
        step = direction[rows, channel]
        step = np.where(values[rows, channel] + step > 255, -1, np.where(values[rows, channel] + step < 0, 1, step))
        values[rows, channel] += step
        image[unchanged] = values.astype(np.uint8)
    mask = region.astype(np.uint8)
    return SyntheticImage(image=image, clean=clean, mask=mask)


def _split_counts(total: int, kinds: Sequence[str]) -> dict[str, int]:
    """Spread ``total`` over ``kinds`` as evenly as possible, earlier kinds getting the remainder."""
    base, extra = divmod(total, len(kinds))
    return {k: base + (1 if i < extra else 0) for i, k in enumerate(kinds)}


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=6)


_DEFAULTS = {k: v["default"] for k, v in SETTINGS.items()}


def generate(
    root: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    *,
    seed: int = _DEFAULTS["seed"],
    image_size: int = _DEFAULTS["image_size"],
    n_train: int = _DEFAULTS["n_train"],
    n_test_good: int = _DEFAULTS["n_test_good"],
    n_test_bad: int = _DEFAULTS["n_test_bad"],
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> Path:
    """Write the synthetic dataset in MVTec layout under ``root``; return ``root``.  The defaults
    are the params schema's ``data.synthetic`` ones.

    ``classes`` defaults to :data:`DEFAULT_CLASSES`. Per class: ``n_train`` normal training images,
    ``n_test_good`` normal test images and ``n_test_bad`` anomalous ones spread evenly over
    ``defect_types`` (one ``test/<defect>`` folder each), masks in ``ground_truth/<defect>``.
    Each class is written to a temporary folder and renamed into place, with a marker file of the
    parameters; a class whose marker matches is left as is, one without a marker (not ours) raises.
    """
    root = Path(root)
    classes = list(DEFAULT_CLASSES if classes is None else classes)
    for name in classes:
        if name not in SOURCES:
            raise DatasetError(f"unknown synthetic class {name!r}; choose from {sorted(SOURCES)}")
    for d in defect_types:
        if d not in _DEFECTS:
            raise DatasetError(f"unknown defect type {d!r}; choose from {list(DEFECT_TYPES)}")
    if n_train < 1 or n_test_good < 0 or n_test_bad < 0 or n_test_good + n_test_bad < 1 or image_size < 16:
        raise DatasetError(
            f"need n_train >= 1, n_test_good + n_test_bad >= 1 and image_size >= 16; got n_train={n_train}, "
            f"n_test_good={n_test_good}, n_test_bad={n_test_bad}, image_size={image_size}"
        )
    writable_dir(root)
    for name in classes:
        params = {
            "class": name, "seed": seed, "image_size": image_size, "n_train": n_train,
            "n_test_good": n_test_good, "n_test_bad": n_test_bad, "defect_types": list(defect_types),
            "generator_version": GENERATOR_VERSION,
        }
        dest = root / name
        marker = dest / MARKER
        if marker.is_file():
            if json.loads(marker.read_text(encoding="utf-8")) == params:
                continue
        elif dest.exists():
            raise DatasetError(
                f"{dest} exists and was not made by the synthetic generator; remove it or pick another root"
            )
        with StagingDir(root, name, "synthetic") as stage:  # a killed run's folder goes at the next start
            tmp = stage.path
            for i in range(n_train):
                sample = make_image(name, seed=seed, index=i, image_size=image_size)
                _save_png(tmp / "train" / GOOD / f"{i:03d}.png", sample.image)
            for i in range(n_test_good):
                sample = make_image(name, seed=seed, index=i, stream="test", image_size=image_size)
                _save_png(tmp / "test" / GOOD / f"{i:03d}.png", sample.image)
            for defect, count in _split_counts(n_test_bad, list(defect_types)).items():
                for i in range(count):
                    sample = make_image(name, seed=seed, index=i, stream="test", defect=defect, image_size=image_size)
                    _save_png(tmp / "test" / defect / f"{i:03d}.png", sample.image)
                    assert sample.mask is not None
                    _save_png(tmp / "ground_truth" / defect / f"{i:03d}_mask.png", sample.mask * np.uint8(255))
            write_json_atomic(tmp / MARKER, params)
            stage.seal()
            replace_dir(tmp, dest)  # an existing class (ours, other parameters) is swapped out
    return root


def _outline(mask: np.ndarray) -> np.ndarray:
    """Border pixels of a boolean mask (mask minus its erosion, 2 px wide)."""
    return mask & ~ndimage.binary_erosion(mask, iterations=2)


def contact_sheet(
    root: str | os.PathLike[str],
    class_name: str,
    out_path: str | os.PathLike[str],
    *,
    per_row: int = 4,
    tile: int = 128,
) -> Path:
    """Save a PNG grid of one class: a row of normal test images, then one row per defect type
    with each anomalous image shown plain and with its mask outlined in red. Returns ``out_path``."""
    root, out_path = Path(root), Path(out_path)
    class_dir = root / class_name
    test_dir = class_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir} not found; generate the class first (skrd4ad.data.sources.synthetic.generate.generate)")
    rows: list[tuple[str, list[np.ndarray]]] = []

    def load(path: Path, size: int) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

    goods = sorted((test_dir / GOOD).glob("*.png"))[:per_row]
    rows.append((GOOD, [load(p, tile) for p in goods]))
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name != GOOD):
        tiles: list[np.ndarray] = []
        for path in sorted(defect_dir.glob("*.png"))[: max(per_row // 2, 1)]:
            image = load(path, tile)
            with Image.open(class_dir / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png") as m:
                mask = np.asarray(m.convert("L").resize((tile, tile), Image.NEAREST)) > 127
            overlay = image.copy()
            overlay[_outline(mask)] = (255, 0, 0)
            tiles += [image, overlay]
        rows.append((defect_dir.name, tiles))
    label_w, gap = 72, 4
    width = label_w + per_row * (tile + gap)
    height = len(rows) * (tile + gap)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for r, (label, tiles) in enumerate(rows):
        y = r * (tile + gap)
        draw.text((4, y + tile // 2 - 7), label, fill=(0, 0, 0), font=font)
        for c, arr in enumerate(tiles[:per_row]):
            sheet.paste(Image.fromarray(arr), (label_w + c * (tile + gap), y))
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return out_path

