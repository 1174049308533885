"""Folding eval-mode BatchNorm into convolutions (skrd4ad.models.fold)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skrd4ad.models import variants
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.build import build_model
from skrd4ad.models.student import ARCH_SPECS


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters (defaults would fold to ~identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


CASES = [(arch, variants.names()[0]) for arch in ARCH_SPECS] + [
    (arch, variant) for variant in variants.names()[1:] for arch in ("resnet18", "mobilenet_v2", "resnet50")]


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_folded_model_gives_the_same_maps_without_batchnorm(arch: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, variant, teacher_weights=None)
    _randomise_batchnorm(model, seed=1)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t_ref, s_ref = model(x)
    assert _count_bn(model) > 0
    assert fold_batchnorm(model) is model
    assert _count_bn(model) == 0  # every BatchNorm of every arch follows a convolution
    with torch.no_grad():
        t, s = model(x)
    for ref, got in zip([*t_ref, *s_ref], [*t, *s], strict=True):
        scale = float(ref.abs().max())
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * scale)
    with torch.no_grad():  # channels_last input (the layout inference uses) gives the same maps
        t_cl, _ = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(t_cl[0], t[0], rtol=1e-5, atol=1e-5 * float(t[0].abs().max()))


def test_training_mode_is_refused() -> None:
    model = build_model("resnet18", "rd4ad", teacher_weights=None)
    model.train()  # the teacher stays in eval; the student is in training mode
    with pytest.raises(ValueError, match=r"eval mode.*bottleneck"):
        fold_batchnorm(model)


class _ConvReluBn(nn.Module):
    """conv1/bn1 attribute names but a ReLU in between: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(torch.relu(self.conv1(x)))


def test_only_known_conv_batchnorm_pairs_are_folded() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_ConvReluBn(), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    _randomise_batchnorm(model, seed=2)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    fold_batchnorm(model)
    assert isinstance(model[0].bn1, nn.BatchNorm2d)  # unknown class: attribute pair left alone
    assert isinstance(model[2], nn.BatchNorm2d)  # follows a ReLU, not a convolution
    assert isinstance(model[4], nn.Identity) and model[3].bias is not None  # folded
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
