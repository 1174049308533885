"""Decode every image of a class once into a prepared cache of fixed-size uint8 arrays.

Output folder (written to a temporary sibling, then renamed: it appears complete or not at all;
the free space it needs is checked first, a full disk raises :class:`skrd4ad.io.DiskFullError`)::

    train.npy        uint8 (N, S, S, 3)   normal training images, RGB
    val.npy          uint8 (V, S, S, 3)   held-out normal training images (only with val_fraction > 0):
                                          never trained on; evaluate picks the deployed threshold on them
    test.npy         uint8 (M, S, S, 3)   test images, RGB
    test_masks.npy   uint8 (M, S, S) 0/1  ground truth (absent for image-level-only classes)
    labelled_anomalies.npy  uint8 (K, S, S, 3)  labelled anomalous non-test images (e.g. VAD's
                     train/bad; only when the class has them; never trained on)
    manifest.csv     file,split,index,label,defect_type,has_mask,status,reason (one row per input image)
    meta.json        class, image_size, counts, image_level_only, source root and digest, version
                     (+ allow_empty_masks and the kept empty_masks, only when that opt-out is used;
                     + n_val and val_fraction, only with val_fraction > 0)

The validation split (:func:`validation_split`) depends on each training file's own name only,
so adding images never moves the others between train and val.

Images are converted to RGB (grayscale, 16-bit, RGBA/LA (alpha dropped), palette, CMYK...),
resized with PIL's antialiased bilinear filter; masks are binarised (any non-zero pixel is
defect, MVTec's convention; a mask of more than two distinct values is logged as a warning naming
it) and resized with nearest neighbour. An all-zero mask of an anomalous test image is an error
(its defect pixels would count as normal) unless ``allow_empty_masks``. Read with
:class:`skrd4ad.data.prepared.PreparedClass`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from skrd4ad import __version__
from skrd4ad.data import sources
from skrd4ad.data.layout import LABELLED_ANOMALIES, DatasetError, Sample, is_image_level_only, scan_class
from skrd4ad.data.masks import binarise_mask, mask_scale_note, mask_values
from skrd4ad.io import (
    DISK_FULL_ERRNOS,
    DiskFullError,
    StagingDir,
    check_free_space,
    disk_full_as_error,
    disk_full_error,
    replace_dir,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

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
    mask_note: str | None = None  # the mask mixes scales (see mask_scale_note)


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
        values = mask_values(mask_img)
        binary = binarise_mask(values)
        return _Decoded(image, resize_mask(binary, size), hashes, None, empty_mask=not binary.any(),
                        mask_note=mask_scale_note(values))
    return _Decoded(image, None, hashes, None)


def validation_split(names: Sequence[str], fraction: float) -> np.ndarray:
    """Which of the normal training files ``names`` (paths relative to the class folder, e.g.
    ``train/good/000.png``) are held out as the validation set: bool (len(names),).

    Rule: ``u = int.from_bytes(sha256(name.encode()).digest()[:8], "big") / 2**64`` (uniform in
    [0, 1)); a file is held out when ``u < fraction``.  A file's side depends on its own name only,
    so adding or removing files never moves another one.  Guard for small classes: with
    ``fraction > 0`` and at least 2 files, when no file falls below ``fraction`` the one with the
    smallest ``u`` is held out, and when every file does the one with the largest ``u`` stays in
    train (val and train are never empty; only then can adding a file move that one file back).
    With ``fraction == 0`` or fewer than 2 files nothing is held out.

    >>> validation_split(["train/good/a.png", "train/good/b.png"], 0.0).tolist()
    [False, False]
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction={fraction} must be in [0, 1) (prepare.val_fraction in params.yaml)")
    held = np.zeros(len(names), dtype=bool)
    if fraction == 0.0 or len(names) < 2:
        return held
    keys = np.array([int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") / 2.0**64 for n in names])
    held = keys < fraction
    if not held.any():
        held[int(np.argmin(keys))] = True
    if held.all():
        held[int(np.argmax(keys))] = False
    return held


def source_digest(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 over the sorted ``(relative path, file sha256)`` pairs, one ``path\\tsha\\n`` line each."""
    digest = hashlib.sha256()
    for rel, sha in sorted(entries):
        digest.update(f"{rel}\t{sha}\n".encode())
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


_NPY_HEADER_MAX = 256  # bytes counted for each .npy header in the space estimate (real ones: 128)
_ROW_BYTES_CSV = 256  # bytes counted per manifest row, plus 64 KiB for manifest + meta.json


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy (format 1.0) header numpy writes for a C-order uint8 array of ``shape``; its length
    does not depend on the first axis (numpy pads it so the array can grow in place)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


class _NpyWriter:
    """A uint8 .npy written row by row with ordinary positional writes, space preallocated.

    No memory map: on a full disk a write (or the preallocation up front) raises ``ENOSPC``,
    where a mapped page would kill the process with SIGBUS. The bytes equal ``np.save`` of the
    same array. :meth:`close` keeps the first ``n`` rows (after skipped files).
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, shape
        header = _npy_header(shape)
        self.offset = len(header)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64))
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            self._write_at(header, 0)
            size = self.offset + shape[0] * self.row_bytes
            if shape[0] and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(self.fd, 0, size)
                except OSError as err:
                    if err.errno in DISK_FULL_ERRNOS:
                        raise
                    # EOPNOTSUPP, EINVAL...: no preallocation here; the writes still report ENOSPC
            os.ftruncate(self.fd, size)  # rows never written (skipped) read as zeros until close
        except BaseException:
            os.close(self.fd)
            raise

    def _write_at(self, data: bytes | memoryview, position: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written

    def __setitem__(self, k: int, row: np.ndarray) -> None:
        row = np.ascontiguousarray(row, dtype=np.uint8)
        if row.shape != self.shape[1:]:
            raise ValueError(f"row of shape {row.shape} written to {self.path} of shape {self.shape}")
        self._write_at(memoryview(row).cast("B"), self.offset + k * self.row_bytes)

    def abort(self) -> None:
        """Close the file without finishing it (the staging folder is deleted anyway)."""
        os.close(self.fd)

    def close(self, n: int) -> None:
        """Keep rows ``[0, n)``: rewrite the header in place and truncate; then close the file."""
        try:
            if n < self.shape[0]:
                header = _npy_header((n, *self.shape[1:]))
                if len(header) != self.offset:  # pragma: no cover - numpy pads the header for this
                    raise RuntimeError(f"cannot shrink {self.path} in place: header length changed")
                self._write_at(header, 0)
                os.ftruncate(self.fd, self.offset + n * self.row_bytes)
        finally:
            os.close(self.fd)


def _write_small(write: Callable[[Path, Any], None], staging: Path, out_dir: Path, name: str, payload: Any,
                 needed: int) -> None:
    """``write(staging / name, payload)``; a full disk names the final file ``out_dir / name``."""
    try:
        write(staging / name, payload)
    except DiskFullError as err:
        raise disk_full_error(out_dir / name, needed, err_no=err.errno or errno.ENOSPC) from err


def _needed_bytes(n_train: int, n_test: int, size: int, with_masks: bool) -> int:
    """Bytes the prepared folder takes at most: arrays with headers, manifest and meta."""
    arrays = (n_train + n_test) * size * size * 3 + (n_test * size * size if with_masks else 0)
    n_files = 3 if with_masks else 2
    return arrays + n_files * _NPY_HEADER_MAX + (n_train + n_test) * _ROW_BYTES_CSV + (64 << 10)


def prepare_class(
    root: str | os.PathLike[str],
    class_name: str,
    out_dir: str | os.PathLike[str],
    *,
    image_size: int,
    image_level_only: bool | None = None,
    allow_skip: bool = False,
    allow_empty_masks: bool = False,
    val_fraction: float = 0.0,
    extra_train: tuple[str, ...] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Build the prepared cache of ``<root>/<class_name>`` in ``out_dir``; return ``out_dir``.

    ``image_size``: side S of the square output; ``image_level_only``: see
    :func:`~skrd4ad.data.layout.scan_class`; ``allow_skip``: skip unreadable/truncated images and
    list them in the manifest as ``skipped`` with the reason (otherwise :class:`DatasetError`
    names the file); ``allow_empty_masks``: keep anomalous test images whose mask is all zero
    (their defect pixels then count as normal; recorded in meta.json and as the manifest reason),
    otherwise :class:`DatasetError` names the mask; ``val_fraction``: hold out this fraction of the
    normal training images as ``val.npy`` (:func:`validation_split`; never trained on; 0 = none, the
    Python default; the CLI and the pipeline pass ``prepare.val_fraction``, default 0.1);
    ``extra_train``: the train folders of labelled anomalies (see
    :func:`~skrd4ad.data.layout.scan_class`; default: those of the source that fetched ``root``);
    ``workers``: decoding threads (default: CPU
    count). ``image_size`` is not checked against the model here (tiny caches serve the data
    tests); the CLI and the model require a multiple of 32, see
    :func:`skrd4ad.models.rd4ad.check_image_size`. An existing ``out_dir`` is replaced only when
    the new cache is complete; on any error nothing is left behind. The cache is built in a
    :class:`~skrd4ad.io.StagingDir` (``.<out_dir name>.<host>-p<pid>.<random>.prepare``): those left
    by killed runs of the same ``out_dir`` are removed first. Then the free space is checked
    against the arrays' known size; too little raises :class:`~skrd4ad.io.DiskFullError`
    (``no space left on device while writing <out_dir>; <N> MB needed, <M> MB free``), as does a
    disk that fills up while writing (then naming the file).
    """
    root, out_dir = Path(root), Path(out_dir)
    if image_size < 1:
        raise DatasetError(f"image_size={image_size} must be a positive number of pixels")
    if image_level_only is None:
        image_level_only = is_image_level_only(root, class_name)
    groups = _split_samples(root, class_name, image_level_only, extra_train, val_fraction)
    n_images = sum(len(g) for g in groups.values())
    needed = _needed_bytes(n_images - len(groups["test"]), len(groups["test"]), image_size, not image_level_only)
    tally = _Tally(counts={split: Counter() for split in groups})
    # Removes what killed runs of this output left, then checks the space before writing anything.
    with StagingDir(out_dir.parent, out_dir.name, "prepare") as stage:
        check_free_space(out_dir.parent, needed, out_dir)
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool, tqdm(
            total=n_images, desc=f"prepare {class_name}", unit="img",
            disable=not (progress and sys.stderr.isatty()),
        ) as bar:
            for split, group in groups.items():
                tally.n_ok[split] = _write_split(split, group, root, stage.path, out_dir, image_size, image_level_only,
                                                 pool, bar, tally, needed, allow_skip=allow_skip,
                                                 allow_empty_masks=allow_empty_masks)
        if tally.n_ok["train"] == 0:
            raise DatasetError(
                f"empty train set: every training image of {root / class_name} was skipped as unreadable; "
                "see the reasons above and replace the files"
            )
        manifest = pd.DataFrame(tally.rows, columns=MANIFEST_COLUMNS)
        _write_small(write_text_atomic, stage.path, out_dir, "manifest.csv",
                     manifest.to_csv(index=False, lineterminator="\n"), needed)
        meta = _meta(root, class_name, image_size, image_level_only, manifest, tally,
                     allow_empty_masks=allow_empty_masks, val_fraction=val_fraction)
        _write_small(write_json_atomic, stage.path, out_dir, "meta.json", meta, needed)
        stage.seal()
        with disk_full_as_error(out_dir, needed):
            replace_dir(stage.path, out_dir)
    return out_dir


@dataclass
class _Tally:
    """What prepare learns while it writes the arrays: the manifest rows, each file's hash (for the
    source digest), images per (split, defect type), the kept empty masks, images kept per split."""

    counts: dict[str, Counter[str]]
    rows: list[dict[str, object]] = field(default_factory=list)
    hashes: list[tuple[str, str]] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)
    n_ok: dict[str, int] = field(default_factory=dict)


def _split_samples(root: Path, class_name: str, image_level_only: bool, extra_train: tuple[str, ...] | None,
                   val_fraction: float) -> dict[str, list[Sample]]:
    """The class's images by output split, in writing order: train, val (with ``val_fraction`` > 0),
    test, and the labelled anomalies (only when the class has them)."""
    if extra_train is None:  # those of the source that fetched root (e.g. VAD's train/bad); none for other folders
        extra_train = sources.extra_train_folders(root)
    samples = scan_class(root, class_name, image_level_only=image_level_only, extra_train=extra_train,
                         owners=sources.extra_train_owners)
    train = [s for s in samples if s.split == "train" and s.label == 0]
    held = validation_split([_relative(s.path, root / class_name) for s in train], val_fraction)
    if val_fraction > 0 and not held.any():
        log.warning("%s: %d training image(s): too few to hold out a validation set (val_fraction %s); "
                    "evaluate falls back to the test-set threshold", root / class_name, len(train), val_fraction)
    groups = {"train": [s for s, h in zip(train, held) if not h]}
    if val_fraction > 0:
        groups["val"] = [s for s, h in zip(train, held) if h]
    groups["test"] = [s for s in samples if s.split == "test"]
    labelled = [s for s in samples if s.split == "train" and s.label == 1]
    if labelled:  # only then: caches of classes without them stay byte-identical
        groups[LABELLED_ANOMALIES] = labelled
    return groups


def _write_split(split: str, group: list[Sample], root: Path, staging: Path, out_dir: Path, s: int,
                 image_level_only: bool, pool: ThreadPoolExecutor, bar: Any, tally: _Tally, needed: int, *,
                 allow_skip: bool, allow_empty_masks: bool) -> int:
    """Decode ``group`` on ``pool`` into ``<split>.npy`` (and ``test_masks.npy``) in ``staging``; a
    manifest row per image into ``tally``.  Returns how many images were kept (not skipped)."""
    writers: dict[str, _NpyWriter] = {}
    k = 0
    try:
        with disk_full_as_error(out_dir / f"{split}.npy", needed):
            images = _NpyWriter(staging / f"{split}.npy", (len(group), s, s, 3))
            writers[f"{split}.npy"] = images
        masks = None
        if split == "test" and not image_level_only:
            with disk_full_as_error(out_dir / "test_masks.npy", needed):
                masks = _NpyWriter(staging / "test_masks.npy", (len(group), s, s))
                writers["test_masks.npy"] = masks
        for sample, dec in zip(group, pool.map(lambda x: _decode(x, s, image_level_only), group)):
            bar.update(1)
            tally.hashes += [(_relative(p, root), sha) for p, sha in dec.hashes]
            row = {
                "file": _relative(sample.path, root), "split": split, "index": -1, "label": sample.label,
                "defect_type": sample.defect_type, "has_mask": dec.mask is not None,
                "status": "ok", "reason": "",
            }
            if dec.mask_note is not None:
                log.warning("mask %s: %s", sample.mask_path, dec.mask_note)
            if dec.error is not None:
                if not allow_skip:
                    raise DatasetError(
                        f"cannot read {sample.path}: {dec.error}; replace or remove the file, or pass "
                        "--allow-skip to skrd4ad prepare (Python: allow_skip=True; the pipeline never "
                        "skips) to skip it (it is then listed in manifest.csv as skipped)"
                    )
                row.update(status="skipped", reason=dec.error, has_mask=False)
            else:
                assert dec.image is not None
                if dec.empty_mask:
                    if not allow_empty_masks:
                        raise DatasetError(
                            f"mask {sample.mask_path} of anomalous test image {sample.path} is all zero, "
                            "so its defect pixels would count as normal; fix the mask, move the image to "
                            "test/good if it is normal, or pass --allow-empty-masks "
                            "(params: prepare.allow_empty_masks: true) to keep it"
                        )
                    row["reason"] = "empty mask kept (allow_empty_masks)"
                    tally.empty_masks.append(_relative(sample.mask_path, root))  # type: ignore[arg-type]
                with disk_full_as_error(out_dir / f"{split}.npy", needed):
                    images[k] = dec.image
                if masks is not None and dec.mask is not None:
                    with disk_full_as_error(out_dir / "test_masks.npy", needed):
                        masks[k] = dec.mask
                row["index"] = k
                tally.counts[split][sample.defect_type] += 1
                k += 1
            tally.rows.append(row)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    pending = list(writers.items())
    while pending:
        file_name, writer = pending.pop(0)
        try:
            with disk_full_as_error(out_dir / file_name, needed):
                writer.close(k)  # keeps the first k rows (after skipped files)
        except BaseException:
            for _, other in pending:
                other.abort()
            raise
    return k


def _meta(root: Path, class_name: str, image_size: int, image_level_only: bool, manifest: pd.DataFrame,
          tally: _Tally, *, allow_empty_masks: bool, val_fraction: float) -> dict[str, Any]:
    """meta.json: what the cache holds and where it came from (keys only added by opt-ins, so
    default caches stay byte-identical to earlier versions)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "class": class_name,
        "image_size": image_size,
        "image_level_only": bool(image_level_only),
        "n_train": tally.n_ok["train"],
        "n_test": tally.n_ok["test"],
        **({f"n_{LABELLED_ANOMALIES}": tally.n_ok[LABELLED_ANOMALIES]} if LABELLED_ANOMALIES in tally.n_ok else {}),
        "n_skipped": int((manifest["status"] == "skipped").sum()),
        "counts": {split: dict(sorted(c.items())) for split, c in tally.counts.items()},
        "source_root": root.as_posix(),  # as given: the pipeline's relative data/raw/<name> is the same in every clone
        "source_digest": source_digest(tally.hashes),
        "resize": "PIL bilinear with antialiasing; masks nearest, binarised: any non-zero pixel is defect",
        "skrd4ad_version": __version__,
    }
    if allow_empty_masks:
        meta.update(allow_empty_masks=True, empty_masks=sorted(tally.empty_masks))
    if val_fraction > 0:
        meta.update(n_val=tally.n_ok["val"], val_fraction=float(val_fraction))
    return meta
