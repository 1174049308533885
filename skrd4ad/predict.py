"""Prediction on new images: per-image scores and labels (CSV), heatmap overlays, binary masks.

``out_dir`` receives

- ``scores.csv``: ``file, name, score, label, threshold, threshold_source`` per image; ``label``
  is ``anomalous`` when ``score >= threshold``, else ``normal`` (empty when there is no threshold);
- ``skipped.csv``: ``file, reason`` for every input that could not be read (header only if none);
- ``overlays/<name>.png``: the map on the image at its original resolution, one colour scale for
  the whole run, with a colour bar;
- ``masks/<name>.png`` (``masks=True``): 0/255 masks where the map reaches the pixel threshold.

Thresholds come from ``threshold=`` / ``pixel_threshold=`` when given, else from the
checkpoint's thresholds file (:func:`skrd4ad.thresholds.find_thresholds`).  The folder is built
beside ``out_dir`` and renamed onto it when complete, so it never mixes two runs.

>>> predict("model.pt", ["photos/"], "out/")  # doctest: +SKIP
PosixPath('out/scores.csv')
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint import identity_of_file, load_checkpoint
from .config import EvalConfig
from .data.layout import IMAGE_EXTENSIONS
from .data.prepare import resize_image, to_rgb
from .inference import predict_batch
from .io import StagingDir, replace_dir, write_text_atomic
from .models.fold import fold_batchnorm
from .thresholds import find_thresholds, settings_for
from .viz import save_overlay_png

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("file", "name", "score", "label", "threshold", "threshold_source")
SKIPPED_COLUMNS = ("file", "reason")


class SkippedFilesError(ValueError):
    """Some inputs could not be read; the others were scored and written."""


def collect_images(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(path, name)`` for every image in ``inputs`` (files, or folders searched recursively),
    sorted; ``name`` is unique and usable as a file name.  Raises naming a missing input."""
    found: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(f"{item} is not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            found.append((item, item.name))
        elif item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"{item} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            found += [(p, "__".join(p.relative_to(item).parts)) for p in files]
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    names = [Path(n).stem for _, n in found]  # overlays are written as <stem>.png
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"several inputs map to the same output name {dup[:3]}; pass them in separate runs")
    return found


def read_image(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(original RGB uint8 (H, W, 3), resized uint8 (size, size, 3))``; errors name the file."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(img)
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    return np.asarray(rgb, dtype=np.uint8), resize_image(rgb, size)


def _readable_batches(images: list[tuple[Path, str]], size: int, batch_size: int,
                      skipped: list[tuple[str, str]]) -> Iterator[tuple[list[int], np.ndarray]]:
    """``(indices into images, uint8 batch)`` of readable images; unreadable ones go to ``skipped``."""
    idx: list[int] = []
    arrays: list[np.ndarray] = []
    for i, (path, _) in enumerate(images):
        try:
            arrays.append(read_image(path, size)[1])
            idx.append(i)
        except ValueError as exc:
            skipped.append((str(path), str(exc.__cause__ or exc)))
            log.warning("skipping %s", exc)
        if len(idx) == batch_size or (i == len(images) - 1 and idx):
            yield idx, np.stack(arrays)
            idx, arrays = [], []


def predict(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
            config: EvalConfig | Mapping[str, Any] | None = None, *, overlays: bool = True, masks: bool = False,
            threshold: float | None = None, pixel_threshold: float | None = None,
            thresholds: str | Path | None = None, teacher_weights: str | Path | None = None,
            allow_skip: bool = False) -> Path:
    """Score every image in ``inputs`` and write the files of the module docstring into
    ``out_dir``; returns the path of ``scores.csv``.

    ``config``: an :class:`EvalConfig`, or a mapping of the evaluate keys set explicitly (the
    others come from the thresholds file, then the defaults).  ``thresholds``: a thresholds file
    (default: the checkpoint's, if any).  Unreadable inputs are listed in ``skipped.csv``; unless
    ``allow_skip`` they raise :class:`SkippedFilesError` after the others were written.  Non-finite
    maps or scores (a diverged checkpoint) raise ValueError naming the checkpoint; nothing is written.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "scores.csv").is_file():
        raise ValueError(f"output folder {out_dir} exists and is not a predict output (no scores.csv); it would "
                         "be replaced: choose a new or empty folder")
    model_id = identity_of_file(checkpoint) if checkpoint.is_file() else None
    found = find_thresholds(checkpoint, thresholds, model_id) if model_id else None
    config = settings_for(config, found, own_threshold=threshold is not None)
    model, ckpt = load_checkpoint(checkpoint, device=config.device, teacher_weights=teacher_weights)
    fold_batchnorm(model)  # inference only: BatchNorm folded into the convolutions
    size = int(ckpt["image_size"])
    images = collect_images(inputs)

    image_t, image_src, pixel_t = _thresholds(checkpoint, found, threshold, pixel_threshold, masks)

    with StagingDir(out_dir.parent, out_dir.name, "predict") as stage:
        skipped: list[tuple[str, str]] = []
        maps, scores, kept = _score(model, checkpoint, images, size, config, stage.path / ".maps.npy", skipped)
        frame = pd.DataFrame({
            "file": [str(images[i][0]) for i in kept], "name": [images[i][1] for i in kept],
            "score": scores[kept],
            "label": ["" if image_t is None else ("anomalous" if scores[i] >= image_t else "normal") for i in kept],
            "threshold": [np.nan if image_t is None else image_t] * len(kept),
            "threshold_source": [image_src] * len(kept)}, columns=list(SCORE_COLUMNS))
        write_text_atomic(stage.path / "scores.csv", frame.to_csv(index=False, float_format="%.8g"))
        write_text_atomic(stage.path / "skipped.csv",
                          pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS)).to_csv(index=False))
        if kept and (overlays or masks):
            _write_pictures(stage.path, images, kept, maps, scores, frame, size, image_t,
                            pixel_t if masks else None, overlays=overlays)
        del maps
        (stage.path / ".maps.npy").unlink()
        stage.seal()
        replace_dir(stage.path, out_dir)

    n_anom = int((frame["label"] == "anomalous").sum())
    log.info("scored %d of %d images (%s; %d skipped) -> %s", len(kept), len(images),
             "no threshold" if image_t is None else f"{n_anom} anomalous at threshold {image_t:.6g} from {image_src}",
             len(skipped), out_dir)
    if skipped and not allow_skip:
        raise SkippedFilesError(f"{len(skipped)} of {len(images)} inputs could not be read (first: {skipped[0][0]}: "
                                f"{skipped[0][1]}); they are listed in {out_dir / 'skipped.csv'}, the others were "
                                "scored: fix or remove them, or pass --allow-skip to accept")
    return out_dir / "scores.csv"


def _thresholds(checkpoint: Path, found: Any, threshold: float | None, pixel_threshold: float | None,
                masks: bool) -> tuple[float | None, str, float | None]:
    """The image threshold and where it came from, and the pixel threshold: given ones first, then
    the thresholds file's (a given image threshold drops the file's pixel threshold)."""
    image_t, image_src = (threshold, "--threshold") if threshold is not None else (
        (found.image, found.source) if found else (None, ""))
    pixel_t = pixel_threshold if pixel_threshold is not None else (found.pixel if found and threshold is None else None)
    if masks and pixel_t is None:
        raise ValueError(f"--masks needs a pixel threshold: none in {found.source if found else 'any thresholds file'}"
                         " (evaluate the checkpoint on data with masks first), or pass --pixel-threshold")
    if image_t is None:
        log.warning("no thresholds for %s (run skrd4ad evaluate, or pass --threshold): scores only, no labels",
                    checkpoint)
    return image_t, image_src, pixel_t


def _score(model: torch.nn.Module, checkpoint: Path, images: list[tuple[Path, str]], size: int, config: EvalConfig,
           maps_file: Path, skipped: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Maps (memory-mapped in ``maps_file``: any number of images), scores and the indices of the
    readable images; unreadable ones go to ``skipped``.  Non-finite results raise ValueError."""
    kept: list[int] = []
    maps = np.lib.format.open_memmap(maps_file, mode="w+", dtype=np.float32, shape=(len(images), size, size))
    scores = np.zeros(len(images), dtype=np.float32)
    for idx, batch in _readable_batches(images, size, config.batch_size, skipped):
        m, s = predict_batch(model, batch, config)
        maps[idx], scores[idx] = m.cpu().numpy(), s.cpu().numpy()
        kept += idx
    bad = [i for i in kept if not (np.isfinite(scores[i]) and np.isfinite(maps[i]).all())]
    if bad:
        raise ValueError(f"{checkpoint} gives non-finite (NaN/inf) anomaly maps or scores on {len(bad)} of "
                         f"{len(kept)} images (first: {images[bad[0]][0]}): its weights are probably NaN/inf (a "
                         "diverged training run) or amp overflowed; retrain it, or predict with amp none")
    return maps, scores, kept


def _write_pictures(out: Path, images: list[tuple[Path, str]], kept: list[int], maps: np.ndarray,
                    scores: np.ndarray, frame: pd.DataFrame, size: int, image_t: float | None,
                    pixel_t: float | None, *, overlays: bool) -> None:
    """Per kept image, at its own size: a heatmap overlay (one colour scale for all), and a 0/255
    mask when ``pixel_t`` is given."""
    vmin, vmax = float(maps[kept].min()), float(maps[kept].max())
    for row, i in enumerate(kept):
        path, name = images[i]
        original, _ = read_image(path, size)
        full = F.interpolate(torch.from_numpy(np.array(maps[i]))[None, None], size=original.shape[:2],
                             mode="bilinear", align_corners=True)[0, 0].numpy()
        stem = Path(name).stem
        if overlays:
            verdict = "" if image_t is None else f" {frame.at[row, 'label']} (threshold {image_t:.4g})"
            save_overlay_png(out / "overlays" / f"{stem}.png", original, full, vmin=vmin, vmax=vmax,
                             title=f"{name}: score {scores[i]:.4g}{verdict}")
        if pixel_t is not None:
            mask = ((full >= pixel_t) * 255).astype(np.uint8)
            (out / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask).save(out / "masks" / f"{stem}.png")
