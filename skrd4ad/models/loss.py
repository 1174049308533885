"""Distillation losses between teacher and student maps (lists fine to coarse).

- ``cosine`` (paper default): per layer ``mean_b(1 - cos(flatten(t_b), flatten(s_b)))``, summed
  over layers (each sample's whole map flattened, as the reference code does).
- ``mse``: per layer mean squared error, summed over layers.
- ``mse_cosine``: ``0.5 * mse + 0.5 * cosine``.
- optional inter-group consistency term (seed flags ``--layerloss 1 --rate r``), added with
  weight ``consistency_weight``::

      |mse(up(t2), up(s2)) - mse(t1, s1)| + |mse(up(t1), up(s1)) - mse(t0, s0)|

  where ``up`` upsamples a coarser map bilinearly (align_corners=True) to the next finer size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .choices import LOSS_KINDS, LossKind  # noqa: F401 (re-exported)


@dataclass
class LossOutput:
    """``total`` is what is back-propagated; ``per_layer`` (3,) and ``consistency`` are detached."""

    total: Tensor
    per_layer: Tensor
    consistency: Tensor


def cosine_layer_loss(t: Tensor, s: Tensor) -> Tensor:
    """``mean_b(1 - cos(flatten(t_b), flatten(s_b)))`` for maps ``(B, C, H, W)``; a scalar."""
    return (1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()


def mse_layer_loss(t: Tensor, s: Tensor) -> Tensor:
    """Mean squared error over all elements; a scalar."""
    return F.mse_loss(s, t)


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def consistency_term(teacher: list[Tensor], student: list[Tensor]) -> Tensor:
    """Inter-group consistency of the per-layer MSEs (see module docstring); a scalar."""
    t0, t1, t2 = teacher
    s0, s1, s2 = student
    a = (mse_layer_loss(_up(t2, t1), _up(s2, t1)) - mse_layer_loss(t1, s1)).abs()
    b = (mse_layer_loss(_up(t1, t0), _up(s1, t0)) - mse_layer_loss(t0, s0)).abs()
    return a + b


def distillation_loss(teacher: list[Tensor], student: list[Tensor], kind: str = "cosine",
                      consistency_weight: float = 0.0) -> LossOutput:
    """Loss of ``kind`` summed over the three layers, plus ``consistency_weight`` times the
    consistency term (computed only when the weight is non-zero).  Computed in float32 even
    under autocast."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    teacher = [t.float() for t in teacher]
    student = [s.float() for s in student]
    layers = []
    for t, s in zip(teacher, student, strict=True):
        if kind == "cosine":
            layers.append(cosine_layer_loss(t, s))
        elif kind == "mse":
            layers.append(mse_layer_loss(t, s))
        else:
            layers.append(0.5 * mse_layer_loss(t, s) + 0.5 * cosine_layer_loss(t, s))
    per_layer = torch.stack(layers)
    total = per_layer.sum()
    consistency = total.new_zeros(())
    if consistency_weight:
        consistency = consistency_term(teacher, student)
        total = total + consistency_weight * consistency
    return LossOutput(total=total, per_layer=per_layer.detach(), consistency=consistency.detach())
