"""RD++ projection layers and loss terms: shapes, hand-worked values, exact OT on tiny clouds."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from skrd4ad.models.variants.rdpp import projection as projection_module
from skrd4ad.models.variants.rdpp.projection import Projection, StageProjection
from skrd4ad.models.variants.rdpp.loss import (combine_projection_terms, contrast_loss, projection_loss, rdpp_total,
                                      recon_loss, sinkhorn_divergence, ssot_loss)


def test_projection_doctest() -> None:
    assert doctest.testmod(projection_module).failed == 0


def test_stage_projection_layers() -> None:
    stage = StageProjection(64)
    convs = [m for m in stage.net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 32), (32, 16), (16, 32), (32, 64)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in stage.net) == 4
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in stage.net) == 4
    # parameters: 4 convs with bias, InstanceNorm without affine
    expected = sum(9 * a * b + b for a, b in [(64, 32), (32, 16), (16, 32), (32, 64)])
    assert sum(p.numel() for p in stage.parameters()) == expected
    # InstanceNorm: each output channel before the last LeakyReLU has zero mean per sample
    torch.manual_seed(0)
    with torch.no_grad():
        pre = stage.net[:-1](torch.randn(2, 64, 8, 8))
    assert pre.mean(dim=(2, 3)).abs().max() < 1e-5


def test_projection_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        StageProjection(30)
    with pytest.raises(ValueError, match="one map per teacher stage"):
        Projection((8, 16))([torch.zeros(1, 8, 4, 4)])


def test_recon_known_cosines() -> None:
    # per pixel: cos((1,0),(1,0)) = 1 and cos((1,0),(0,1)) = 0 -> mean of (0, 1) = 0.5
    a = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    assert recon_loss([a], [b]).item() == pytest.approx(0.5)
    # cos((1,1),(1,0)) = 1/sqrt(2); two stages are summed
    c = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    d = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert recon_loss([a, c], [b, d]).item() == pytest.approx(0.5 + 1 - 1 / math.sqrt(2))


def test_contrast_below_and_above_margin() -> None:
    # cos = 0.6 (vectors (1,0) and (0.6,0.8)) and cos = -0.8 ((1,0) and (-0.8,0.6))
    noisy = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    proj = torch.tensor([[0.6, 0.8], [-0.8, 0.6]]).view(2, 2, 1, 1)
    # margin -0.5: 0.6 - (-0.5) = 1.1 and -0.8 is below the margin -> 0; mean over the batch
    assert contrast_loss([noisy], [proj], margin=-0.5).item() == pytest.approx(1.1 / 2)
    # margin 0.5: 0.6 - 0.5 = 0.1 and 0
    assert contrast_loss([noisy], [proj], margin=0.5).item() == pytest.approx(0.1 / 2)
    # whole maps are flattened per sample (not per pixel): (1,0,0,1) vs (1,0,1,0) -> cos 0.5
    a = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 2, 1, 2)
    b = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 2, 1, 2)
    assert contrast_loss([a], [b], margin=0.0).item() == pytest.approx(0.5)


def test_contrast_default_margin_is_the_authors_latest_where_the_term_is_active() -> None:
    """Cosines 0.8 and 0.6, both above 0.5, so the margin decides the value.  By hand, with the
    authors' margin 0.5 (``CosineEmbeddingLoss(margin=0.5)``, target -1, since their commit
    55314de): mean(0.8 - 0.5, 0.6 - 0.5) = 0.2.  The margin -0.5 they had for one day would give
    mean(1.3, 1.1) = 1.2."""
    noisy = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    proj = torch.tensor([[0.8, 0.6], [0.6, 0.8]]).view(2, 2, 1, 1)
    assert contrast_loss([noisy], [proj]).item() == pytest.approx(0.2)
    assert contrast_loss([noisy], [proj], margin=-0.5).item() == pytest.approx(1.2)
    # two stages are summed: the second at cos 0.9 -> 0.4
    noisy2 = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1).expand(2, 4, 1, 1)
    proj2 = torch.tensor([0.9, math.sqrt(1 - 0.81), 0.0, 0.0]).view(1, 4, 1, 1).expand(2, 4, 1, 1)
    assert contrast_loss([noisy, noisy2], [proj, proj2]).item() == pytest.approx(0.2 + 0.4)


def test_contrast_equals_torch_cosine_embedding_loss() -> None:
    torch.manual_seed(0)
    base = [torch.randn(4, 8, 3, 3), torch.randn(4, 16, 2, 2)]
    noisy = [b + 0.3 * torch.randn_like(b) for b in base]  # cosines well above 0.5: the term is active
    proj = [b + 0.3 * torch.randn_like(b) for b in base]
    ref = torch.nn.CosineEmbeddingLoss(margin=0.5)
    target = -torch.ones(4)
    expected = sum(ref(a.flatten(1), b.flatten(1), target) for a, b in zip(noisy, proj))
    assert expected.item() > 0.5  # active, so a wrong margin would show
    assert contrast_loss(noisy, proj).item() == pytest.approx(expected.item(), rel=1e-6)


def _exact_half_sq_ot(x: torch.Tensor, y: torch.Tensor) -> float:
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).double().numpy() / 2
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def test_sinkhorn_divergence_approaches_exact_ot() -> None:
    # by hand: moving {(0,0), (1,0)} straight up onto {(0,1), (1,1)} costs 1/2 per point
    # (|d|^2 / 2 with |d| = 1); crossing over would cost (2/2 + 2/2) / 2 = 1
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    exact = _exact_half_sq_ot(x, y)
    assert exact == pytest.approx(0.5)
    assert sinkhorn_divergence(x, y).item() == pytest.approx(exact, rel=2e-3)
    assert sinkhorn_divergence(x, x).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("batch", [1, 2])
def test_ssot_on_a_batch_of_one_or_two_is_finite(batch: int) -> None:
    """One point: geomloss with the cloud's own diameter (0) fails on log(0); with the authors'
    fixed diameter it is 0, as is any cloud against a shuffled copy of itself."""
    torch.manual_seed(0)
    x = torch.randn(batch, 8)
    assert sinkhorn_divergence(x, x).item() == pytest.approx(0.0, abs=1e-6)
    f = [torch.randn(batch, 4, 3, 3, requires_grad=True)]
    value = ssot_loss(f, torch.arange(batch).flip(0))
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(f[0].grad).all()


def test_sinkhorn_divergence_random_clouds_match_assignment() -> None:
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(6, 3, generator=gen), torch.rand(6, 3, generator=gen) + 1.0
    assert sinkhorn_divergence(x, y).item() == pytest.approx(_exact_half_sq_ot(x, y), rel=5e-3)


def test_ssot_softmax_over_flattened_maps_and_shuffle_is_same_cloud() -> None:
    torch.manual_seed(0)
    f = [torch.randn(6, 4, 3, 3, requires_grad=True), torch.randn(6, 8, 2, 2, requires_grad=True)]
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    value = ssot_loss(f, perm)
    # a shuffled copy of a uniform cloud is the same measure: divergence 0, gradient 0
    assert abs(value.item()) < 1e-6
    value.backward()
    assert max(t.grad.abs().max().item() for t in f) < 1e-6
    # what it compares: per stage, rows softmax(flatten(f_b)) as points of a cloud
    p = torch.softmax(f[0].detach().flatten(1), -1)
    assert torch.allclose(p.sum(1), torch.ones(6))
    assert ssot_loss([f[0].detach()], perm).item() == pytest.approx(sinkhorn_divergence(p, p[perm]).item(), abs=1e-9)
    with pytest.raises(ValueError, match="randperm"):
        ssot_loss(f, torch.arange(5))


def test_combination_weights() -> None:
    t = torch.tensor
    assert combine_projection_terms(t(1.0), t(0.0), t(0.0)).item() == pytest.approx(1 / 1.11)
    assert combine_projection_terms(t(0.0), t(1.0), t(0.0)).item() == pytest.approx(0.01 / 1.11)
    assert combine_projection_terms(t(0.0), t(0.0), t(1.0)).item() == pytest.approx(0.1 / 1.11)
    assert combine_projection_terms(t(2.0), t(3.0), t(5.0)).item() == pytest.approx((2 + 0.03 + 0.5) / 1.11)
    assert rdpp_total(t(1.5), t(2.0)).item() == pytest.approx(1.9)


def test_projection_loss_puts_terms_together() -> None:
    torch.manual_seed(1)
    proj = Projection((8, 16))
    clean = [torch.randn(4, 8, 6, 6), torch.randn(4, 16, 3, 3)]
    noisy = [c + 0.5 * torch.randn_like(c) for c in clean]
    perm = torch.randperm(4)
    pc, pn = proj(clean), proj(noisy)
    out = projection_loss(noisy, pn, pc, perm)
    expected = (ssot_loss(pc, perm) + 0.01 * recon_loss(pn, pc) + 0.1 * contrast_loss(noisy, pc)) / 1.11
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.recon.item() > 0 and not out.recon.requires_grad and not out.contrast.requires_grad
    out.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in proj.parameters())
    assert np.isfinite(out.ssot.item())
