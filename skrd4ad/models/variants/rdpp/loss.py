"""RD++'s training loss (Tien et al., CVPR 2023): ``L = L_RD + 0.2 * L_proj`` with

    L_proj = (SSOT + 0.01 * recon + 0.1 * contrast) / 1.11

each term summed over the three teacher stages.  Conventions as read in the authors' latest code
(github.com/tientrandinh/Revisiting-Reverse-Distillation at ``7f2ceb7``, ``utils/utils_train.py``):

- ``ssot``: debiased Sinkhorn divergence (geomloss, ``p=2``, so the cost is ``|x - y|^2 / 2``,
  ``blur=0.05``, ``scaling=0.95``, ``diameter=1e7``, ``truncate=10``) between two point clouds
  of ``B`` points with uniform weights: each point is one sample's projected clean map flattened
  to ``C*H*W`` values and softmaxed over those values; the second cloud is the same batch in the
  order ``perm``.  Because a cloud with uniform weights is a set, the shuffled copy is the same
  measure, so this term is 0 up to rounding and gives no gradient (kept for fidelity; see the
  tests).  The fixed ``diameter`` matters for a batch of one: geomloss would otherwise take the
  cloud's own diameter, 0, and fail on ``log(0)``; with it, one point gives 0.
- ``recon``: ``mean over (B, H, W)`` of ``1 - cos`` taken over the channel axis, between the
  projections of the noisy and of the clean batch.
- ``contrast``: ``mean over B`` of ``max(0, cos(flat(noisy_b), flat(proj_clean_b)) - 0.5)``
  between the UN-projected teacher maps of the noisy batch and the projected clean maps (torch's
  ``CosineEmbeddingLoss(margin=0.5)`` with target -1): it penalises a cosine above 0.5.  Their
  history: ``6abf0c2`` set the target to -1, ``55314de`` (a day later) the margin from -0.5 to
  +0.5.  ``CONTRAST_MARGIN`` holds the latest value; pass ``margin`` to change it.

Optimisation in the authors' runs (for the training glue): wide_resnet50_2 teacher, 256 px,
batch 16; two Adam optimisers with betas (0.5, 0.999): lr 1e-3 for the projection layers, 5e-3
for bottleneck + decoder; both step every 2 batches and zero the gradients after the step
(``main.py`` since ``94a8df5``), so each step uses the sum of the two batches' gradients.
Per-class epochs: ``workflow/config/rdpp-paper.yaml``.

All terms are computed in float32 (also under autocast).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SSOT_WEIGHT = 1.0
RECON_WEIGHT = 0.01
CONTRAST_WEIGHT = 0.1
#: ``SSOT_WEIGHT + RECON_WEIGHT + CONTRAST_WEIGHT``: L_proj is their weighted mean.
PROJ_NORMALISER = 1.11
#: Weight of L_proj in the total loss (``--weight_proj`` of the authors' code).
PROJ_WEIGHT = 0.2
#: The authors' code (``55314de`` on): ``CosineEmbeddingLoss(margin=0.5)`` with target -1.
CONTRAST_MARGIN = 0.5
SINKHORN_BLUR = 0.05
SINKHORN_SCALING = 0.95
#: The authors' fixed start of the blur annealing (not the clouds' own diameter, 0 for one point).
SINKHORN_DIAMETER = 1e7
SINKHORN_TRUNCATE = 10


@dataclass
class ProjectionLoss:
    """``total`` (back-propagated) and its three stage-summed terms (detached)."""

    total: Tensor
    ssot: Tensor
    recon: Tensor
    contrast: Tensor


@functools.lru_cache(maxsize=1)
def _sinkhorn():  # noqa: ANN202 - geomloss.SamplesLoss
    try:
        import geomloss
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("RD++'s SSOT loss needs geomloss; pip install geomloss (listed in pyproject.toml)") from exc
    return geomloss.SamplesLoss("sinkhorn", p=2, blur=SINKHORN_BLUR, scaling=SINKHORN_SCALING, debias=True,
                                diameter=SINKHORN_DIAMETER, truncate=SINKHORN_TRUNCATE)


def sinkhorn_divergence(x: Tensor, y: Tensor) -> Tensor:
    """Debiased Sinkhorn divergence between clouds ``x (N, D)`` and ``y (M, D)`` with uniform
    weights and cost ``|x - y|^2 / 2``; a scalar.  Tends to the exact OT cost as the blur -> 0."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"sinkhorn_divergence needs two (N, D) clouds of one D, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}; flatten each sample to one row")
    return _sinkhorn()(x.float(), y.float())


def _check_stages(name: str, *lists: Sequence[Tensor]) -> None:
    lengths = {len(v) for v in lists}
    if len(lengths) != 1:
        raise ValueError(f"{name}: the feature lists have {sorted(lengths)} stages; pass one map per stage in each")


def ssot_loss(projected_clean: Sequence[Tensor], perm: Tensor) -> Tensor:
    """Sum over stages of the Sinkhorn divergence between ``softmax(flat(f))`` and the same rows in
    the order ``perm`` (``f`` of shape ``(B, C, H, W)``, ``perm`` a permutation of ``range(B)``)."""
    total = projected_clean[0].new_zeros((), dtype=torch.float32)
    for f in projected_clean:
        if perm.shape != (f.shape[0],):
            raise ValueError(f"ssot_loss: perm of shape {tuple(perm.shape)} for a batch of {f.shape[0]}; "
                             "pass torch.randperm(batch)")
        p = torch.softmax(f.float().flatten(1), dim=-1)
        total = total + sinkhorn_divergence(p, p[perm.to(p.device)])
    return total


def recon_loss(projected_noisy: Sequence[Tensor], projected_clean: Sequence[Tensor]) -> Tensor:
    """Sum over stages of ``mean_{b,h,w}(1 - cos_c(noisy, clean))`` for maps ``(B, C, H, W)``."""
    _check_stages("recon_loss", projected_noisy, projected_clean)
    total = projected_clean[0].new_zeros((), dtype=torch.float32)
    for a, b in zip(projected_noisy, projected_clean):
        total = total + (1.0 - F.cosine_similarity(a.float(), b.float(), dim=1)).mean()
    return total


def contrast_loss(noisy_feats: Sequence[Tensor], projected_clean: Sequence[Tensor],
                  margin: float = CONTRAST_MARGIN) -> Tensor:
    """Sum over stages of ``mean_b max(0, cos(flat(noisy_b), flat(proj_b)) - margin)``: pushes each
    noisy sample's teacher map away from its clean projection until the cosine is at most ``margin``."""
    _check_stages("contrast_loss", noisy_feats, projected_clean)
    total = projected_clean[0].new_zeros((), dtype=torch.float32)
    for a, b in zip(noisy_feats, projected_clean):
        cos = F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1)
        total = total + (cos - margin).clamp(min=0).mean()
    return total


def combine_projection_terms(ssot: Tensor, recon: Tensor, contrast: Tensor) -> Tensor:
    """``(ssot + 0.01 * recon + 0.1 * contrast) / 1.11``."""
    return (SSOT_WEIGHT * ssot + RECON_WEIGHT * recon + CONTRAST_WEIGHT * contrast) / PROJ_NORMALISER


def projection_loss(noisy_feats: Sequence[Tensor], projected_noisy: Sequence[Tensor],
                    projected_clean: Sequence[Tensor], perm: Tensor,
                    margin: float = CONTRAST_MARGIN) -> ProjectionLoss:
    """L_proj from the teacher maps of the noisy batch, the projections of the noisy and clean
    batches (lists of ``(B, C_i, H_i, W_i)``) and a batch permutation ``perm`` ``(B,)``."""
    _check_stages("projection_loss", noisy_feats, projected_noisy, projected_clean)
    ssot = ssot_loss(projected_clean, perm)
    recon = recon_loss(projected_noisy, projected_clean)
    contrast = contrast_loss(noisy_feats, projected_clean, margin)
    return ProjectionLoss(total=combine_projection_terms(ssot, recon, contrast), ssot=ssot.detach(),
                          recon=recon.detach(), contrast=contrast.detach())


def rdpp_total(rd_loss: Tensor, proj_loss: Tensor, weight: float = PROJ_WEIGHT) -> Tensor:
    """``rd_loss + weight * proj_loss`` (RD++: weight 0.2)."""
    return rd_loss + weight * proj_loss
