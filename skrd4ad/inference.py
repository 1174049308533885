"""Batched inference: uint8 images -> anomaly maps and image scores on the model's device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .config import EvalConfig
from .data.prepared import to_model_input
from .device import autocast
from .models.anomaly_map import anomaly_map, image_scores
from .models.rd4ad import ReverseDistillation


@torch.inference_mode()
def predict_batch(model: ReverseDistillation, images: Tensor | np.ndarray,
                  settings: EvalConfig) -> tuple[Tensor, Tensor]:
    """Anomaly maps ``(B, H, W)`` float32 and scores ``(B,)`` for uint8 images ``(B, H, W, 3)``,
    with the map, score and precision settings of ``settings`` (combine, sigma, score, topk, amp).

    Results stay on the model's device (no host sync here)."""
    device = next(model.student.parameters()).device
    batch = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images  # writable copy
    x = to_model_input(batch, device).contiguous(memory_format=torch.channels_last)
    with autocast(device, settings.amp):
        t, s = model(x)
    maps = anomaly_map(t, s, (x.shape[-2], x.shape[-1]), combine=settings.combine, sigma=settings.sigma)
    return maps, image_scores(maps, settings.score, min(settings.topk, maps[0].numel()))


def predict_array(model: ReverseDistillation, images: np.ndarray,
                  settings: EvalConfig) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """Run :func:`predict_batch` over ``images`` (N,H,W,3) uint8 (memmap fine) in batches of
    ``settings.batch_size``; yields ``(slice, maps, scores)`` with maps and scores still on the device."""
    for start in range(0, len(images), settings.batch_size):
        sl = slice(start, min(start + settings.batch_size, len(images)))
        maps, scores = predict_batch(model, images[sl], settings)
        yield sl, maps, scores
