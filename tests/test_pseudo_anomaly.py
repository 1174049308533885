"""RD++ pseudo-anomalies: simplex noise against a scalar port of Gustavson's reference, rectangles,
amplitude, determinism and resumable generator state."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from skrd4ad.models.variants.rdpp import simplex_noise as simplex_module
from skrd4ad.data.prepared import to_model_input
from skrd4ad.models.variants.rdpp.pseudo_anomaly import add_pseudo_anomalies, sample_boxes, side_range
from skrd4ad.models.variants.rdpp.simplex_noise import random_permutations, simplex3, simplex_noise

_GRAD3 = [(1, 1, 0), (-1, 1, 0), (1, -1, 0), (-1, -1, 0), (1, 0, 1), (-1, 0, 1),
          (1, 0, -1), (-1, 0, -1), (0, 1, 1), (0, -1, 1), (0, 1, -1), (0, -1, -1)]


def _reference_simplex3(xin: float, yin: float, zin: float, perm: list[int]) -> float:
    """Scalar 3-D simplex noise following the branches of Gustavson's 'Simplex noise demystified'
    (2005) Java listing; ``perm`` has 512 entries."""
    f3, g3 = 1 / 3, 1 / 6
    s = (xin + yin + zin) * f3
    i, j, k = math.floor(xin + s), math.floor(yin + s), math.floor(zin + s)
    t = (i + j + k) * g3
    x0, y0, z0 = xin - (i - t), yin - (j - t), zin - (k - t)
    if x0 >= y0:
        if y0 >= z0:
            i1, j1, k1, i2, j2, k2 = 1, 0, 0, 1, 1, 0
        elif x0 >= z0:
            i1, j1, k1, i2, j2, k2 = 1, 0, 0, 1, 0, 1
        else:
            i1, j1, k1, i2, j2, k2 = 0, 0, 1, 1, 0, 1
    else:
        if y0 < z0:
            i1, j1, k1, i2, j2, k2 = 0, 0, 1, 0, 1, 1
        elif x0 < z0:
            i1, j1, k1, i2, j2, k2 = 0, 1, 0, 0, 1, 1
        else:
            i1, j1, k1, i2, j2, k2 = 0, 1, 0, 1, 1, 0
    offsets = [(0, 0, 0, 0.0), (i1, j1, k1, g3), (i2, j2, k2, 2 * g3), (1, 1, 1, 3 * g3)]
    ii, jj, kk = i & 255, j & 255, k & 255
    total = 0.0
    for oi, oj, ok, shift in offsets:
        dx, dy, dz = x0 - oi + shift, y0 - oj + shift, z0 - ok + shift
        tt = 0.6 - dx * dx - dy * dy - dz * dz
        if tt > 0:
            g = _GRAD3[perm[ii + oi + perm[jj + oj + perm[kk + ok]]] % 12]
            total += tt ** 4 * (g[0] * dx + g[1] * dy + g[2] * dz)
    return 32.0 * total


def test_doctest() -> None:
    assert doctest.testmod(simplex_module).failed == 0


def test_simplex3_equals_scalar_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    perm = random_permutations(2, gen)
    pts = (torch.rand(2, 300, 3, generator=gen, dtype=torch.float64) - 0.5) * 20  # negative cells too
    pts[:, :20] = torch.round(pts[:, :20] * 2) / 2  # ties (x0 == y0 etc.) on half-integer points
    got = simplex3(pts, perm)
    for b in range(2):
        table = perm[b].tolist() * 2
        ref = [_reference_simplex3(*p, table) for p in pts[b].tolist()]
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-10, atol=1e-12)
    assert got.abs().max() <= 1.0 and got.abs().max() > 0.3


def test_simplex_noise_octaves_sum() -> None:
    perm = random_permutations(1, torch.Generator().manual_seed(1))
    one = simplex_noise((2, 4, 5), perm, octaves=1, frequency=8.0, dtype=torch.float64)
    two = simplex_noise((2, 4, 5), perm, octaves=2, persistence=0.5, frequency=8.0, dtype=torch.float64)
    z, y, x = 1, 3, 2
    expected = _reference_simplex3(x / 8, y / 8, z / 8, perm[0].tolist() * 2)
    assert one[0, z, y, x].item() == pytest.approx(expected, abs=1e-12)
    second = _reference_simplex3(x / 4, y / 4, z / 4, perm[0].tolist() * 2)
    assert two[0, z, y, x].item() == pytest.approx(expected + 0.5 * second, abs=1e-12)


def test_side_range_and_boxes() -> None:
    assert side_range(256) == (10, 32)
    assert side_range(128) == (5, 16)
    boxes = sample_boxes(4000, 256, 256, torch.Generator().manual_seed(2))
    top, left, h, w = boxes.T
    assert h.min() == 10 and h.max() == 31 and w.min() == 10 and w.max() == 31
    assert top.min() == 1 and left.min() == 1
    assert ((top + h) <= 255).all() and ((left + w) <= 255).all()
    assert ((top + h) == 255).any()  # the last allowed position is reached
    with pytest.raises(ValueError, match="at least 32 px"):
        side_range(16)


def _images(batch: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_noise_only_inside_one_rectangle_with_amplitude() -> None:
    images = _images(batch=8, size=256)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    noisy = add_pseudo_anomalies(images, gen)
    gen.set_state(state)
    boxes = sample_boxes(8, 256, 256, gen)
    perm = random_permutations(8, gen)
    clean = images.permute(0, 3, 1, 2).float() / 255
    diff = noisy - clean
    for b, (top, left, h, w) in enumerate(boxes.tolist()):
        inside = torch.zeros(256, 256, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert (diff[b][:, ~inside] == 0).all()
        assert (diff[b][:, inside] != 0).float().mean() > 0.99
        # amplitude 0.2 times the noise drawn at the rectangle's local coordinates (frequency 32 px at 256 px)
        expected = 0.2 * simplex_noise((3, h, w), perm[b:b + 1], 6, 0.6, 32.0)[0]
        torch.testing.assert_close(diff[b][:, top:top + h, left:left + w], expected, atol=2e-6, rtol=0)
    assert diff.abs().max() < 0.2 * (1 + 0.6 + 0.36 + 0.216 + 0.1296 + 0.07776)


def test_normalize_matches_to_model_input_outside_the_rectangle() -> None:
    images = _images()
    noisy = add_pseudo_anomalies(images, torch.Generator().manual_seed(0), normalize=True)
    ref = to_model_input(images, "cpu")
    same = (noisy - ref).abs() < 1e-6
    assert same.float().mean() > 0.8 and not same.all()


def test_float_input_equals_uint8_input() -> None:
    images = _images()
    a = add_pseudo_anomalies(images, torch.Generator().manual_seed(3))
    b = add_pseudo_anomalies(images.permute(0, 3, 1, 2).float() / 255, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_deterministic_per_seed_and_resumable() -> None:
    images = _images()
    a = add_pseudo_anomalies(images, torch.Generator().manual_seed(7))
    b = add_pseudo_anomalies(images, torch.Generator().manual_seed(7))
    c = add_pseudo_anomalies(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the generator advances, and a saved state replays the same sequence
    gen = torch.Generator().manual_seed(7)
    first = add_pseudo_anomalies(images, gen)
    state = gen.get_state()
    second = add_pseudo_anomalies(images, gen)
    gen.set_state(state)
    again = add_pseudo_anomalies(images, gen)
    assert torch.equal(first, a) and not torch.equal(second, first) and torch.equal(again, second)
    # the global RNG is neither used nor advanced
    before = torch.get_rng_state()
    add_pseudo_anomalies(images, gen)
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(TypeError, match="CPU torch.Generator"):
        add_pseudo_anomalies(_images(), 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8 \\(B, H, W, 3\\)"):
        add_pseudo_anomalies(torch.zeros(2, 64, 64, 3), torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu() -> None:
    images = _images()
    cpu = add_pseudo_anomalies(images, torch.Generator().manual_seed(4))
    gpu = add_pseudo_anomalies(images.cuda(), torch.Generator().manual_seed(4))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
