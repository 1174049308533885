"""Bottleneck, decoder, skip wiring, losses, anomaly maps and reference-weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from skrd4ad.models.anomaly_map import anomaly_map, gaussian_blur, image_scores
from skrd4ad.models.loss import consistency_term, distillation_loss
from skrd4ad.models.rd4ad import ARCH_SPECS, build_model
from skrd4ad.models.reference import UNUSED_REFERENCE_PREFIXES, load_reference_state_dict

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def small_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {arch: build_model(arch, "rd4ad", teacher_weights=None).eval()
            for arch in ("resnet18", "mobilenet_v2")}


@pytest.mark.parametrize("arch", list(ARCH_SPECS))
def test_student_maps_match_teacher_shapes(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "skrd4ad", teacher_weights=None).eval()
    with torch.no_grad():
        t, s = model(torch.randn(2, 3, 64, 64))
    assert [f.shape for f in s] == [f.shape for f in t]
    assert [f.shape[-1] for f in t] == [16, 8, 4]
    assert model.bottleneck.out_channels == 2 * model.teacher.channels[2]
    # only the student is trainable
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert len(model.student_parameters()) == len(list(model.bottleneck.parameters())) + len(
        list(model.decoder.parameters()))


def _capture_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name in ("layer1", "layer2", "layer3"):
        layer = getattr(model.decoder, name)
        hooks.append(layer.register_forward_hook(
            lambda m, inp, out, name=name: seen.update({f"{name}_in": inp[0].clone(), f"{name}_out": out.clone()})))
    with torch.no_grad():
        t, _ = model(x)
    for h in hooks:
        h.remove()
    seen.update(t1=t[0], t2=t[1], t3=t[2])
    return seen


def test_skip_wiring_skrd4ad() -> None:
    torch.manual_seed(1)
    model = build_model("resnet18", "skrd4ad", teacher_weights=None).eval()
    seen = _capture_inputs(model, torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(seen["layer2_in"], torch.relu(seen["layer1_out"] + seen["t3"]), rtol=0, atol=0)
    torch.testing.assert_close(seen["layer3_in"], torch.relu(seen["layer2_out"] + seen["t2"]), rtol=0, atol=0)


def test_no_skip_in_rd4ad_baseline() -> None:
    torch.manual_seed(1)
    model = build_model("resnet18", "rd4ad", teacher_weights=None).eval()
    seen = _capture_inputs(model, torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(seen["layer2_in"], seen["layer1_out"], rtol=0, atol=0)
    torch.testing.assert_close(seen["layer3_in"], seen["layer2_out"], rtol=0, atol=0)


def test_variants_share_parameter_layout() -> None:
    torch.manual_seed(0)
    a = build_model("mobilenet_v2", "rd4ad", teacher_weights=None)
    torch.manual_seed(0)
    b = build_model("mobilenet_v2", "skrd4ad", teacher_weights=None)
    sa, sb = a.student_state_dict(), b.student_state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unknown_variant_names_choices() -> None:
    with pytest.raises(ValueError, match="rd4ad, skrd4ad"):
        build_model("resnet18", "skip", teacher_weights=None)


# ---------------------------------------------------------------- losses

def test_cosine_loss_by_hand() -> None:
    # one sample per map, 1 channel 1x2 (flattened vectors): t=(1,0), s=(0,1) -> cos 0 -> 1;
    # t=(1,1), s=(2,2) -> cos 1 -> 0; t=(3,4), s=(4,3) -> cos 24/25 -> 1/25.
    t = [torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[1.0, 1.0]]]]), torch.tensor([[[[3.0, 4.0]]]])]
    s = [torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[2.0, 2.0]]]]), torch.tensor([[[[4.0, 3.0]]]])]
    out = distillation_loss(t, s, "cosine")
    torch.testing.assert_close(out.per_layer, torch.tensor([1.0, 0.0, 1 / 25]))
    torch.testing.assert_close(out.total, torch.tensor(1.0 + 1 / 25))


def test_cosine_loss_flattens_whole_map_and_averages_batch() -> None:
    torch.manual_seed(0)
    t = [torch.randn(3, 4, 5, 5) for _ in range(3)]
    s = [torch.randn(3, 4, 5, 5) for _ in range(3)]
    expected = 0.0
    for a, b in zip(t, s):
        for i in range(3):
            va, vb = a[i].reshape(-1).double(), b[i].reshape(-1).double()
            expected += (1 - (va @ vb) / (va.norm() * vb.norm())).item() / 3
    assert distillation_loss(t, s, "cosine").total.item() == pytest.approx(expected, rel=1e-5)


def test_mse_and_mixed_losses_by_hand() -> None:
    t = [torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)]
    s = [torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)]
    mse = distillation_loss(t, s, "mse")
    torch.testing.assert_close(mse.per_layer, torch.tensor([1.0, 0.0, 4.0]))
    mixed = distillation_loss(t, s, "mse_cosine")
    # cos(0-vector, ones) is 0 (eps-guarded) -> 1; cos(1,1) -> 0; cos(2, 0) -> 0 -> 1
    torch.testing.assert_close(mixed.per_layer, torch.tensor([0.5 * 1 + 0.5 * 1, 0.0, 0.5 * 4 + 0.5 * 1]))


def test_consistency_term_by_hand() -> None:
    # constant maps upsample to the same constant: up-mse of layer 3 = (3-1)^2 = 4,
    # mse of layer 2 = (1-0)^2 = 1, up-mse of layer 2 = 1, mse of layer 1 = (0.5)^2 = 0.25.
    t = [torch.full((1, 1, 4, 4), 0.5), torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 3.0)]
    s = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]
    assert consistency_term(t, s).item() == pytest.approx(abs(4 - 1) + abs(1 - 0.25))
    base = distillation_loss(t, s, "cosine").total
    total = distillation_loss(t, s, "cosine", consistency_weight=0.1).total
    assert total.item() == pytest.approx(base.item() + 0.1 * 3.75)


def test_consistency_term_uses_bilinear_align_corners() -> None:
    torch.manual_seed(0)
    t = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    s = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    expected = (abs(F.mse_loss(up(t[2], t[1]), up(s[2], t[1])) - F.mse_loss(t[1], s[1]))
                + abs(F.mse_loss(up(t[1], t[0]), up(s[1], t[0])) - F.mse_loss(t[0], s[0])))
    torch.testing.assert_close(consistency_term(t, s), expected)


def test_unknown_loss_is_rejected() -> None:
    t = [torch.ones(1, 1, 1, 1)] * 3
    with pytest.raises(ValueError, match="cosine, mse, mse_cosine"):
        distillation_loss(t, t, "l1")


# ---------------------------------------------------------------- anomaly maps

@pytest.mark.parametrize("shape", [(64, 64), (20, 37), (8, 8), (5, 3), (600, 40)])
def test_gaussian_blur_equals_scipy(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, *shape), dtype=np.float32) * 5
    ours = gaussian_blur(torch.from_numpy(maps), sigma=4).numpy()
    ref = np.stack([ndi.gaussian_filter(m.astype(np.float64), 4) for m in maps])
    assert np.abs(ours - ref).max() <= 1e-5 * ref.max()


def test_gaussian_blur_sigma_zero_is_identity() -> None:
    m = torch.rand(2, 6, 6)
    assert torch.equal(gaussian_blur(m, sigma=0), m)


def test_anomaly_map_by_hand() -> None:
    # one layer identical (distance 0), one orthogonal (1), one opposite (2), constant over space
    t = [torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2) for _ in range(3)]
    s = [t[0], torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2),
         torch.tensor([-1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)]
    summed = anomaly_map(t, s, (8, 8), combine="sum", sigma=0)
    torch.testing.assert_close(summed, torch.full((1, 8, 8), 3.0))
    mul = anomaly_map(t[1:], s[1:], (8, 8), combine="mul", sigma=0)
    torch.testing.assert_close(mul, torch.full((1, 8, 8), 2.0))
    blurred = anomaly_map(t, s, (8, 8), combine="sum", sigma=4)
    torch.testing.assert_close(blurred, torch.full((1, 8, 8), 3.0))


def test_anomaly_map_upsamples_with_align_corners() -> None:
    torch.manual_seed(0)
    t = [torch.randn(2, 4, 4, 4)]
    s = [torch.randn(2, 4, 4, 4)]
    d = 1 - F.cosine_similarity(t[0], s[0], dim=1)
    expected = F.interpolate(d[:, None], size=(16, 16), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(anomaly_map(t, s, (16, 16), sigma=0), expected)


def test_image_scores() -> None:
    maps = torch.tensor([[[1.0, 5.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 4.0]]])
    torch.testing.assert_close(image_scores(maps, "max"), torch.tensor([5.0, 4.0]))
    torch.testing.assert_close(image_scores(maps, "topk_mean", 2), torch.tensor([4.0, 2.0]))
    with pytest.raises(ValueError, match="topk"):
        image_scores(maps, "topk_mean", 5)


# ---------------------------------------------------------------- reference weights

#: Shapes read off the reference RD4AD architecture (resnet.py BN_layer, de_resnet.py) for
#: wide_resnet50_2: expansion 4, width_per_group 128.
WIDE_REFERENCE_SHAPES = {
    "bn.conv1.weight": (512, 256, 3, 3),
    "bn.conv2.weight": (1024, 512, 3, 3),
    "bn.conv3.weight": (1024, 512, 3, 3),
    "bn.conv4.weight": (2048, 4096, 1, 1),  # unused by the reference forward
    "bn.bn_layer.0.conv1.weight": (1024, 3072, 1, 1),
    "bn.bn_layer.0.conv2.weight": (1024, 1024, 3, 3),
    "bn.bn_layer.0.downsample.0.weight": (2048, 3072, 1, 1),
    "bn.bn_layer.2.conv3.weight": (2048, 1024, 1, 1),
    "decoder.layer1.0.conv2.weight": (512, 512, 2, 2),
    "decoder.layer1.0.upsample.0.weight": (2048, 1024, 2, 2),
    "decoder.layer1.2.conv3.weight": (1024, 512, 1, 1),
    "decoder.layer2.3.conv1.weight": (256, 512, 1, 1),
    "decoder.layer3.0.upsample.0.weight": (512, 256, 2, 2),
    "decoder.layer3.5.conv3.weight": (256, 128, 1, 1),
}


def _reference_layout(model) -> dict[str, dict[str, torch.Tensor]]:
    """Our student weights renamed to the reference layout, plus its unused conv4/bn4."""
    bn = {k: v.clone() for k, v in model.bottleneck.state_dict().items()}
    c3 = model.teacher.channels[2]
    out = model.bottleneck.out_channels
    bn["conv4.weight"] = torch.randn(out, 2 * out, 1, 1)
    for name, value in (("weight", torch.ones(out)), ("bias", torch.zeros(out)),
                        ("running_mean", torch.zeros(out)), ("running_var", torch.ones(out)),
                        ("num_batches_tracked", torch.tensor(0))):
        bn[f"bn4.{name}"] = value
    assert c3 > 0
    return {"bn": bn, "decoder": {k: v.clone() for k, v in model.decoder.state_dict().items()}}


def test_wide_resnet_matches_reference_shapes() -> None:
    torch.manual_seed(0)
    model = build_model("wide_resnet50_2", "rd4ad", teacher_weights=None)
    ref = _reference_layout(model)
    flat = {f"{g}.{k}": v for g, sd in ref.items() for k, v in sd.items()}
    for key, shape in WIDE_REFERENCE_SHAPES.items():
        assert tuple(flat[key].shape) == shape, key
    # the reference has 3 bottleneck blocks and 3/4/6 decoder blocks
    assert {k.split(".")[2] for k in flat if k.startswith("bn.bn_layer.")} == {"0", "1", "2"}
    assert max(int(k.split(".")[2]) for k in flat if k.startswith("decoder.layer3.")) == 5


@pytest.mark.parametrize("variant", ["rd4ad", "skrd4ad"])
def test_load_reference_state_dict_gives_same_outputs(variant: str, tmp_path) -> None:
    torch.manual_seed(0)
    source = build_model("resnet18", variant, teacher_weights=None).eval()
    for p in source.student_parameters():  # make weights distinct from a fresh init
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "reference.pth"
    torch.save(_reference_layout(source), path)
    torch.manual_seed(123)
    target = build_model("resnet18", variant, teacher_weights=None).eval()
    target.teacher.load_state_dict(source.teacher.state_dict())
    dropped = load_reference_state_dict(target, path)
    assert sorted(dropped) == sorted(f"bn.{k}" for k in _reference_layout(source)["bn"]
                                     if k.startswith(UNUSED_REFERENCE_PREFIXES))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source(x)[1], target(x)[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_bare_reference_decoder_and_shape_errors() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", "rd4ad", teacher_weights=None)
    dec = {f"module.{k}": torch.full_like(v, 0.5) if v.is_floating_point() else v
           for k, v in model.decoder.state_dict().items()}
    with pytest.warns(UserWarning, match="bottleneck keeps its current"):
        assert load_reference_state_dict(model, dec) == []
    assert torch.all(model.decoder.layer1[0].conv1.weight == 0.5)
    bad = dict(model.decoder.state_dict())
    bad["layer1.0.conv1.weight"] = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        load_reference_state_dict(model, bad)
    wrong_arch = build_model("resnet34", "rd4ad", teacher_weights=None)
    with pytest.raises(KeyError, match="missing keys"):
        load_reference_state_dict(wrong_arch, {"decoder": dict(model.decoder.state_dict())})


def test_dynamic_size_export_keeps_the_size_check_out_of_the_graph() -> None:
    """torch.export with symbolic height and width (multiples of 32) works, and eager calls still
    refuse a size the network cannot take, naming it."""
    from torch.export import Dim, export

    torch.manual_seed(0)
    model = build_model("resnet18", "rd4ad", teacher_weights=None).eval()
    h, w = Dim("h", min=2, max=8), Dim("w", min=2, max=8)
    program = export(model, (torch.randn(1, 3, 64, 64),), dynamic_shapes={"x": {2: 32 * h, 3: 32 * w}})
    x = torch.randn(1, 3, 96, 128)
    exported, eager = program.module()(x), model(x)
    for a, b in zip(exported[1], eager[1]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="side=65 must be a positive multiple of 32"):
        model(torch.randn(1, 3, 65, 64))

