"""Decode every image of a class once into a prepared cache of fixed-size uint8 arrays.

Output folder (written to a temporary sibling, then renamed: it appears complete or not at all)::

    train.npy        uint8 (N, S, S, 3)   normal training images, RGB
    test.npy         uint8 (M, S, S, 3)   test images, RGB
    test_masks.npy   uint8 (M, S, S) 0/1  ground truth (absent for image-level-only classes)
    manifest.csv     file,split,index,label,defect_type,has_mask,status,reason (one row per input image)
    meta.json        class, image_size, counts, image_level_only, source root and digest, version
                     (+ allow_empty_masks and the kept empty_masks, only when that opt-out is used)

Images are converted to RGB (grayscale, 16-bit, RGBA/LA (alpha dropped), palette, CMYK...),
resized with PIL's antialiased bilinear filter; masks are resized with nearest neighbour and
binarised at half their maximum value. An all-zero mask of an anomalous test image is an error
(its defect pixels would count as normal) unless ``allow_empty_masks``. Read with
:class:`skrd4ad.data.prepared.PreparedClass`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from skrd4ad import __version__
from skrd4ad.data.layout import DatasetError, Sample, is_image_level_only, scan_class
from skrd4ad.io import replace_dir, write_json_atomic, write_text_atomic

FORMAT_VERSION = 1
MANIFEST_COLUMNS = ["file", "split", "index", "label", "defect_type", "has_mask", "status", "reason"]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: 16/32-bit integer and float grayscale are rescaled, alpha dropped."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255
        elif img.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def mask_values(img: Image.Image) -> np.ndarray:
    """Mask values as a 2-D array: colour masks reduce to the max over colour channels (alpha ignored)."""
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    arr = np.asarray(img)
    return arr.max(axis=2) if arr.ndim == 3 else arr


def binarise_mask(values: np.ndarray) -> np.ndarray:
    """0/1 uint8 mask: 1 where ``values >= 0.5 * values.max()``; all zeros when the max is 0."""
    peak = values.max() if values.size else 0
    if peak <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return (values.astype(np.float64) >= 0.5 * float(peak)).astype(np.uint8)


def resize_image(img: Image.Image, size: int) -> np.ndarray:
    """RGB ``img`` resized to (size, size) with PIL's antialiased bilinear filter: uint8 (size, size, 3)."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def resize_mask(binary: np.ndarray, size: int) -> np.ndarray:
    """0/1 uint8 mask (H, W) resized to (size, size) with nearest neighbour."""
    if binary.shape == (size, size):
        return binary
    return np.asarray(Image.fromarray(binary, mode="L").resize((size, size), Image.NEAREST), dtype=np.uint8)


@dataclass
class _Decoded:
    image: np.ndarray | None
    mask: np.ndarray | None
    hashes: list[tuple[Path, str]]
    error: str | None
    empty_mask: bool = False  # the mask file is all zero (before resizing)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now: truncated/corrupt files fail here, not later
    return img


def _decode(sample: Sample, size: int, image_level_only: bool) -> _Decoded:
    """Read (hash) and decode one sample; decoding problems are returned, mask/size mismatches raised."""
    data = sample.path.read_bytes()
    hashes = [(sample.path, hashlib.sha256(data).hexdigest())]
    mask_data = None
    if sample.mask_path is not None and not image_level_only:
        mask_data = sample.mask_path.read_bytes()
        hashes.append((sample.mask_path, hashlib.sha256(mask_data).hexdigest()))
    try:
        img = _open(data)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib/struct errors...
        return _Decoded(None, None, hashes, f"unreadable image: {type(err).__name__}: {err}")
    width, height = img.size
    image = resize_image(to_rgb(img), size)
    mask = None
    if mask_data is not None:
        try:
            mask_img = _open(mask_data)
        except Exception as err:
            return _Decoded(None, None, hashes, f"unreadable mask {sample.mask_path}: {type(err).__name__}: {err}")
        if mask_img.size != (width, height):
            raise DatasetError(
                f"mask {sample.mask_path} is {mask_img.size[0]}x{mask_img.size[1]} but its image {sample.path} is "
                f"{width}x{height}; fix or replace the mask"
            )
        binary = binarise_mask(mask_values(mask_img))
        return _Decoded(image, resize_mask(binary, size), hashes, None, empty_mask=not binary.any())
    return _Decoded(image, None, hashes, None)


def source_digest(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 over the sorted ``(relative path, file sha256)`` pairs, one ``path\\tsha\\n`` line each."""
    digest = hashlib.sha256()
    for rel, sha in sorted(entries):
        digest.update(f"{rel}\t{sha}\n".encode())
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _shrink(path: Path, array: np.memmap, n: int) -> None:
    """Rewrite the .npy at ``path`` keeping its first ``n`` rows (after skipped files)."""
    tmp = path.with_name(path.name + ".shrink")
    small = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=(n, *array.shape[1:]))
    if n:
        small[:] = array[:n]
    small.flush()
    del small
    os.replace(tmp, path)


def _new_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A zero-filled uint8 .npy at ``path``, memory-mapped for writing (an in-memory array if empty)."""
    if 0 in shape:
        np.save(path, np.zeros(shape, dtype=np.uint8))
        return np.zeros(shape, dtype=np.uint8)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


def prepare_class(
    root: str | os.PathLike[str],
    class_name: str,
    out_dir: str | os.PathLike[str],
    *,
    image_size: int,
    image_level_only: bool | None = None,
    allow_skip: bool = False,
    allow_empty_masks: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Build the prepared cache of ``<root>/<class_name>`` in ``out_dir``; return ``out_dir``.

    ``image_size``: side S of the square output; ``image_level_only``: see
    :func:`~skrd4ad.data.layout.scan_class`; ``allow_skip``: skip unreadable/truncated images and
    list them in the manifest as ``skipped`` with the reason (otherwise :class:`DatasetError`
    names the file); ``allow_empty_masks``: keep anomalous test images whose mask is all zero
    (their defect pixels then count as normal; recorded in meta.json and as the manifest reason),
    otherwise :class:`DatasetError` names the mask; ``workers``: decoding threads (default: CPU
    count). ``image_size`` is not checked against the model here (tiny caches serve the data
    tests); the CLI and the model require a multiple of 32, see
    :func:`skrd4ad.models.rd4ad.check_image_size`. An existing ``out_dir`` is replaced only when
    the new cache is complete; on any error nothing is left behind.
    """
    root, out_dir = Path(root), Path(out_dir)
    if image_size < 1:
        raise DatasetError(f"image_size={image_size} must be a positive number of pixels")
    if image_level_only is None:
        image_level_only = is_image_level_only(root, class_name)
    samples = scan_class(root, class_name, image_level_only=image_level_only)
    groups = {split: [s for s in samples if s.split == split] for split in ("train", "test")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".prepare", dir=out_dir.parent))
    rows: list[dict[str, object]] = []
    hashes: list[tuple[str, str]] = []
    counts: dict[str, Counter[str]] = {"train": Counter(), "test": Counter()}
    n_ok = {"train": 0, "test": 0}
    empty_masks: list[str] = []
    s = image_size
    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool, tqdm(
            total=len(samples), desc=f"prepare {class_name}", unit="img",
            disable=not (progress and sys.stderr.isatty()),
        ) as bar:
            for split, group in groups.items():
                images = _new_array(staging / f"{split}.npy", (len(group), s, s, 3))
                masks = None
                if split == "test" and not image_level_only:
                    masks = _new_array(staging / "test_masks.npy", (len(group), s, s))
                k = 0
                for sample, dec in zip(group, pool.map(lambda x: _decode(x, s, image_level_only), group)):
                    bar.update(1)
                    hashes += [(_relative(p, root), sha) for p, sha in dec.hashes]
                    row = {
                        "file": _relative(sample.path, root), "split": split, "index": -1, "label": sample.label,
                        "defect_type": sample.defect_type, "has_mask": dec.mask is not None,
                        "status": "ok", "reason": "",
                    }
                    if dec.error is not None:
                        if not allow_skip:
                            raise DatasetError(
                                f"cannot read {sample.path}: {dec.error}; replace or remove the file, or pass "
                                "allow_skip=True to skip it (it is then listed in manifest.csv as skipped)"
                            )
                        row.update(status="skipped", reason=dec.error, has_mask=False)
                    else:
                        assert dec.image is not None
                        if dec.empty_mask:
                            if not allow_empty_masks:
                                raise DatasetError(
                                    f"mask {sample.mask_path} of anomalous test image {sample.path} is all zero, so "
                                    "its defect pixels would count as normal; fix the mask, move the image to "
                                    "test/good if it is normal, or pass allow_empty_masks=True (--allow-empty-masks) "
                                    "to keep it"
                                )
                            row["reason"] = "empty mask kept (allow_empty_masks)"
                            empty_masks.append(_relative(sample.mask_path, root))  # type: ignore[arg-type]
                        images[k] = dec.image
                        if masks is not None and dec.mask is not None:
                            masks[k] = dec.mask
                        row["index"] = k
                        counts[split][sample.defect_type] += 1
                        k += 1
                    rows.append(row)
                n_ok[split] = k
                for file_name, arr in ((f"{split}.npy", images), ("test_masks.npy", masks)):
                    if isinstance(arr, np.memmap):
                        arr.flush()
                        if k < len(group):
                            _shrink(staging / file_name, arr, k)
                del images, masks, arr  # close the write maps before the folder is renamed
        if n_ok["train"] == 0:
            raise DatasetError(
                f"empty train set: every training image of {root / class_name} was skipped as unreadable; "
                "see the reasons above and replace the files"
            )
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        write_text_atomic(staging / "manifest.csv", manifest.to_csv(index=False, lineterminator="\n"))
        meta = {
            "format_version": FORMAT_VERSION,
            "class": class_name,
            "image_size": image_size,
            "image_level_only": bool(image_level_only),
            "n_train": n_ok["train"],
            "n_test": n_ok["test"],
            "n_skipped": int((manifest["status"] == "skipped").sum()),
            "counts": {split: dict(sorted(c.items())) for split, c in counts.items()},
            "source_root": str(root.resolve()),
            "source_digest": source_digest(hashes),
            "resize": "PIL bilinear with antialiasing; masks nearest, binarised at half their max",
            "skrd4ad_version": __version__,
        }
        if allow_empty_masks:  # only then: default caches stay byte-identical to earlier versions
            meta.update(allow_empty_masks=True, empty_masks=sorted(empty_masks))
        write_json_atomic(staging / "meta.json", meta)
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
