"""Prediction on new images: per-image scores (CSV) and heatmap overlays (PNG).

>>> predict("model.pt", ["photos/"], "out/")  # doctest: +SKIP
PosixPath('out/scores.csv')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from .config import EvalConfig
from .data.layout import IMAGE_EXTENSIONS
from .data.prepare import to_rgb, resize_image
from .inference import predict_batch
from .io import write_text_atomic
from .models.fold import fold_batchnorm
from .train import load_checkpoint
from .viz import save_overlay_png

log = logging.getLogger(__name__)


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


def predict(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
            config: EvalConfig | None = None, *, overlays: bool = True) -> Path:
    """Score every image in ``inputs``; write ``out_dir/scores.csv`` (file, name, score) and, with
    ``overlays``, ``out_dir/overlays/<name>.png`` at each image's original resolution, all on one
    colour scale (the minimum and maximum over all maps).  Returns the CSV path.  Non-finite
    maps or scores (a diverged checkpoint) raise ValueError naming the checkpoint; nothing is written."""
    config = config or EvalConfig()
    out_dir = Path(out_dir)
    model, ckpt = load_checkpoint(checkpoint, device=config.device)
    fold_batchnorm(model)  # inference only: BatchNorm folded into the convolutions
    size = int(ckpt["image_size"])
    images = collect_images(inputs)
    maps: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    for start in range(0, len(images), config.batch_size):
        chunk = images[start:start + config.batch_size]
        batch = np.stack([read_image(path, size)[1] for path, _ in chunk])
        m, s = predict_batch(model, batch, combine=config.combine, sigma=config.sigma, score=config.score,
                             topk=config.topk, amp=config.amp)
        maps.append(m.cpu())
        scores.append(s.cpu())
    all_maps = torch.cat(maps)
    all_scores = torch.cat(scores).numpy()
    bad = ~(np.isfinite(all_scores) & torch.isfinite(all_maps).flatten(1).all(1).numpy())
    if bad.any():
        raise ValueError(f"{checkpoint} gives non-finite (NaN/inf) anomaly maps or scores on {int(bad.sum())} of "
                         f"{len(images)} images (first: {images[int(np.argmax(bad))][0]}): its weights are probably "
                         "NaN/inf (a diverged training run) or amp overflowed; retrain it, or predict with amp none")
    frame = pd.DataFrame({"file": [str(p) for p, _ in images], "name": [n for _, n in images],
                          "score": all_scores})
    csv_path = out_dir / "scores.csv"
    write_text_atomic(csv_path, frame.to_csv(index=False, float_format="%.8g"))
    if overlays:
        vmin, vmax = float(all_maps.min()), float(all_maps.max())
        for (path, name), amap in zip(images, all_maps):
            original, _ = read_image(path, size)
            full = F.interpolate(amap[None, None], size=original.shape[:2], mode="bilinear",
                                 align_corners=True)[0, 0].numpy()
            save_overlay_png(out_dir / "overlays" / f"{Path(name).stem}.png", original, full, vmin=vmin, vmax=vmax)
    log.info("scored %d images -> %s", len(images), csv_path)
    return csv_path
