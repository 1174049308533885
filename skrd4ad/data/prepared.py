"""Read a prepared cache (see :mod:`skrd4ad.data.prepare`) and turn its batches into model input.

>>> data = PreparedClass("prepared/brick_256")                      # doctest: +SKIP
>>> g = torch.Generator().manual_seed(0)                            # doctest: +SKIP
>>> for idx in iterate_batches(len(data.train_images), 16, shuffle=True, generator=g):  # doctest: +SKIP
...     x = to_model_input(batch_from(data.train_images, idx), "cuda")  # (16, 3, S, S) float32
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from skrd4ad.data.layout import LABELLED_ANOMALIES, DatasetError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _load_array(path: Path) -> np.ndarray:
    """``np.load`` memory-mapped read-only (an empty array cannot be mapped and is read normally)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        arr = np.load(path)
        if arr.size:
            raise
        return arr


def npy_sizes(path: Path) -> tuple[int, int]:
    """``(actual, expected)`` bytes of the ``.npy`` file ``path``: its size on disk and the size its
    header announces (header + shape x itemsize). Raises ``ValueError`` when the header is unreadable."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        expected = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return path.stat().st_size, expected


class PreparedClass:
    """A prepared class opened read-only; arrays are memory-mapped, not read into memory.

    Attributes: ``train_images`` uint8 (N, S, S, 3); ``val_images`` uint8 (V, S, S, 3), the held-out
    normal training images (never trained on; V = 0 for a cache prepared without val_fraction);
    ``val_manifest`` their V manifest rows in order; ``test_images`` uint8 (M, S, S, 3);
    ``test_masks`` uint8 (M, S, S) 0/1 or ``None`` when image-level only; ``test_manifest``
    DataFrame of the M test rows with status ok, row i describing ``test_images[i]``;
    ``test_labels`` int64 (M,) 0 normal / 1 anomalous; ``labelled_anomalies`` uint8 (K, S, S, 3)
    labelled anomalous images outside the test set (VAD's train/bad; never trained on) or ``None``
    when the class has none; ``manifest`` all rows (skipped included);
    ``meta`` the meta.json dict; ``image_level_only``; ``class_name``; ``image_size``.
    Raises :class:`DatasetError` naming the file when the folder is missing or incomplete.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir)
        if not self.path.is_dir():
            raise DatasetError(f"prepared cache {self.path} does not exist; run prepare for this class first")
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DatasetError(f"{meta_path} is missing: the prepared cache is incomplete; re-run prepare")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{meta_path} is not valid JSON ({err}); re-run prepare") from err
        self.image_level_only = bool(self.meta["image_level_only"])
        self.class_name: str = self.meta["class"]
        self.image_size: int = int(self.meta["image_size"])
        has_val = "n_val" in self.meta
        needed = (["train.npy", "test.npy", "manifest.csv"] + (["val.npy"] if has_val else [])
                  + ([] if self.image_level_only else ["test_masks.npy"]))
        for name in needed:
            if not (self.path / name).is_file():
                raise DatasetError(f"{self.path / name} is missing: the prepared cache is incomplete; re-run prepare")
        s = self.image_size
        for name in needed:
            if name.endswith(".npy"):
                self._check_size(name)
        self.train_images = _load_array(self.path / "train.npy")
        self.test_images = _load_array(self.path / "test.npy")
        self.test_masks = None if self.image_level_only else _load_array(self.path / "test_masks.npy")
        self.val_images = (_load_array(self.path / "val.npy") if has_val
                           else np.zeros((0, s, s, 3), dtype=np.uint8))
        self._check("train.npy", self.train_images, (int(self.meta["n_train"]), s, s, 3))
        self._check("val.npy", self.val_images, (int(self.meta.get("n_val", 0)), s, s, 3))
        self._check("test.npy", self.test_images, (int(self.meta["n_test"]), s, s, 3))
        if self.test_masks is not None:
            self._check("test_masks.npy", self.test_masks, (int(self.meta["n_test"]), s, s))
        self.manifest = pd.read_csv(
            self.path / "manifest.csv",
            keep_default_na=False,
            dtype={"file": str, "split": str, "index": np.int64, "label": np.int64, "defect_type": str,
                   "status": str, "reason": str},
        )
        self.manifest["has_mask"] = self.manifest["has_mask"].astype(str).str.lower().eq("true")
        ok = self.manifest["status"] == "ok"
        test = self.manifest[ok & (self.manifest["split"] == "test")].sort_values("index").reset_index(drop=True)
        val = self.manifest[ok & (self.manifest["split"] == "val")].sort_values("index").reset_index(drop=True)
        train_rows = int((ok & (self.manifest["split"] == "train")).sum())
        test_rows_ok = np.array_equal(test["index"].to_numpy(), np.arange(len(self.test_images)))
        val_rows_ok = np.array_equal(val["index"].to_numpy(), np.arange(len(self.val_images)))
        if train_rows != len(self.train_images) or not test_rows_ok or not val_rows_ok:
            raise DatasetError(
                f"{self.path / 'manifest.csv'} does not match the arrays ({train_rows} train / {len(val)} val / "
                f"{len(test)} test ok rows vs {len(self.train_images)} / {len(self.val_images)} / "
                f"{len(self.test_images)} images); re-run prepare"
            )
        self.val_manifest = val
        self.test_manifest = test
        self.test_labels = test["label"].to_numpy(dtype=np.int64)
        self.labelled_anomalies: np.ndarray | None = None
        n_labelled = self.meta.get(f"n_{LABELLED_ANOMALIES}")
        if n_labelled is not None:
            name = f"{LABELLED_ANOMALIES}.npy"
            if not (self.path / name).is_file():
                raise DatasetError(f"{self.path / name} is missing: the prepared cache is incomplete; re-run prepare")
            self._check_size(name)
            self.labelled_anomalies = _load_array(self.path / name)
            self._check(name, self.labelled_anomalies, (int(n_labelled), s, s, 3))

    def train_files_digest(self) -> str:
        """sha256 hex of the training images' file names (manifest ``file``) in training order,
        joined by newlines: the train split.  Training records it (resume state and checkpoint); a
        model made on another split (e.g. another ``prepare.val_fraction``) is not resumed, and
        evaluate does not choose its threshold on this cache's validation images."""
        m = self.manifest
        files = m[(m["split"] == "train") & (m["status"] == "ok")].sort_values("index")["file"]
        return hashlib.sha256("\n".join(files).encode()).hexdigest()

    def rerun_command(self) -> str:
        """The command that re-makes this cache (from the source recorded in meta.json)."""
        meta, s = self.meta, self.image_size
        return (f"skrd4ad prepare --root {meta.get('source_root', '<dataset root>')} --classes {self.class_name} "
                f"--out {self.path} --image-size {s} --val-fraction {meta.get('val_fraction', 0)}"
                + (" --image-level-only" if self.image_level_only else "")
                + " (or the pipeline's prepare step)")

    def _check_size(self, name: str) -> None:
        """A file shorter (or longer) than its header says: one line naming it and the fix."""
        path = self.path / name
        try:
            actual, expected = npy_sizes(path)
        except (ValueError, OSError, SyntaxError) as err:
            raise DatasetError(f"{path} is not a readable .npy file ({err}); re-run prepare for {self.class_name}: "
                               f"{self.rerun_command()}") from err
        if actual < expected:
            raise DatasetError(f"{path} is truncated ({actual} of {expected} bytes); re-run prepare for "
                               f"{self.class_name}: {self.rerun_command()}")
        if actual > expected:
            raise DatasetError(f"{path} has {actual - expected} bytes after its data ({actual} of {expected} bytes); "
                               f"re-run prepare for {self.class_name}: {self.rerun_command()}")

    def _check(self, name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
        if arr.dtype != np.uint8 or arr.shape != shape:
            raise DatasetError(
                f"{self.path / name} has dtype {arr.dtype} shape {arr.shape}, meta.json says uint8 {shape}; "
                "re-run prepare"
            )

    def __repr__(self) -> str:
        return (
            f"PreparedClass({str(self.path)!r}, class={self.class_name!r}, size={self.image_size}, "
            f"train={len(self.train_images)}, val={len(self.val_images)}, test={len(self.test_images)}, "
            f"image_level_only={self.image_level_only})"
        )


def iterate_batches(
    n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[np.ndarray]:
    """Yield int64 index arrays covering ``range(n)`` once, ``batch_size`` at a time (last one may be smaller).

    With ``shuffle`` the order comes from ``torch.randperm(n, generator=generator)`` (a CPU
    generator); each batch is sorted so memory-mapped reads go forward through the file.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator (got device {generator.device}); it only orders indices"
        )
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n, dtype=np.int64)
    for start in range(0, n, batch_size):
        yield np.sort(order[start:start + batch_size]).astype(np.int64, copy=False)


def batch_from(array: np.ndarray, indices: np.ndarray, *, pin_memory: bool = False) -> torch.Tensor:
    """Rows ``indices`` of a (memory-mapped) array as a CPU tensor (a copy; ``pin_memory`` for async upload)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array[indices]))
    return tensor.pin_memory() if pin_memory else tensor


def to_model_input(batch_uint8: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> float32 (B, 3, H, W) on ``device``, scaled to [0, 1] and ImageNet-normalised.

    The uint8 tensor is moved first (4x fewer bytes than float32; ``non_blocking`` overlaps the
    copy when the source is pinned), then converted and normalised on the device.
    """
    if batch_uint8.dtype != torch.uint8 or batch_uint8.ndim != 4 or batch_uint8.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 tensor (B, H, W, 3), got {batch_uint8.dtype} {tuple(batch_uint8.shape)}; "
            "pass rows of PreparedClass.train_images/test_images"
        )
    x = batch_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    # under torch.compile / torch.export the cache would keep the tracer's fake tensors for later eager calls
    make = _imagenet_constants.__wrapped__ if torch.compiler.is_compiling() else _imagenet_constants
    mean, std = make(x.device)
    return x.div_(255.0).sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _imagenet_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as (1, 3, 1, 1) float32 on ``device``, made once per device (no per-batch upload)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return mean, std
