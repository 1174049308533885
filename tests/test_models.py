"""Bottleneck, decoder, skip wiring, losses, anomaly maps and reference-weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from skrd4ad.models import variants
from skrd4ad.models.anomaly_map import anomaly_map, gaussian_blur, image_scores
from skrd4ad.models.loss import consistency_term, distillation_loss
from skrd4ad.models.build import build_model
from skrd4ad.models.student import ARCH_SPECS
from skrd4ad.models.reference import load_reference_state_dict


@pytest.mark.parametrize("variant", variants.names())
@pytest.mark.parametrize("arch", list(ARCH_SPECS))
def test_student_maps_match_teacher_shapes(arch: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, variant, teacher_weights=None).eval()
    with torch.no_grad():
        t, s = model(torch.randn(2, 3, 64, 64))
    assert [f.shape for f in s] == [f.shape for f in t]
    assert [f.shape[-1] for f in t] == [16, 8, 4]
    # only the student is trainable, and its state dict is what a checkpoint stores
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student_parameters())
    assert model.student_state_dict().keys() == model.student.state_dict().keys()


@pytest.mark.parametrize("arch", list(ARCH_SPECS))
def test_rd4ad_student_is_ocbe_and_decoder(arch: str) -> None:
    model = build_model(arch, "rd4ad", teacher_weights=None)
    assert model.student.bottleneck.out_channels == 2 * model.teacher.channels[2]
    assert len(model.student_parameters()) == len(list(model.student.bottleneck.parameters())) + len(
        list(model.student.decoder.parameters()))


def _capture_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name in ("layer1", "layer2", "layer3"):
        layer = getattr(model.student.decoder, name)
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
    with pytest.raises(ValueError, match="unknown model variant 'skip'; choose one of " + ", ".join(variants.names())):
        build_model("resnet18", "skip", teacher_weights=None)


def test_registry_lists_the_builtins_first_without_torch() -> None:
    """Names, labels and settings come from the variant modules; reading them imports no torch."""
    import subprocess
    import sys

    code = ("import sys; from skrd4ad.models import variants as v; "
            "print(v.names()[:2], v.label('skrd4ad'), v.settings_schema('rd4ad'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "('rd4ad', 'skrd4ad') SK-RD4AD {} False"


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
    torch.testing.assert_close(anomaly_map(t, s, (16, 16), combine="sum", sigma=0), expected)


def test_image_scores() -> None:
    maps = torch.tensor([[[1.0, 5.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 4.0]]])
    torch.testing.assert_close(image_scores(maps, "max", 1), torch.tensor([5.0, 4.0]))
    torch.testing.assert_close(image_scores(maps, "topk_mean", 2), torch.tensor([4.0, 2.0]))
    with pytest.raises(ValueError, match="topk"):
        image_scores(maps, "topk_mean", 5)


# ---------------------------------------------------------------- reference weights

# The state-dict layout of the reference RD4AD code (hq-deng/RD4AD), written out by hand from its
# models/resnet.py (``BN_layer``, saved as "bn") and models/de_resnet.py (``ResNet`` decoder, saved
# as "decoder"); never derived from our modules.  A value is either the weight shape of a
# convolution (key ``<path>.weight``; ConvTranspose2d weights are (in, out, kH, kW)) or, as an int,
# a BatchNorm2d of that many channels (keys weight, bias, running_mean, running_var,
# num_batches_tracked).


def _each(stage: str, blocks: tuple[int, ...], entries: dict[str, tuple[int, ...] | int]) -> dict:
    """The same entries for several identical blocks of one stage (``stage.<i>.<name>``)."""
    return {f"{stage}.{i}.{name}": spec for i in blocks for name, spec in entries.items()}


#: resnet18: ``BN_layer(AttnBasicBlock, 2)`` (expansion 1) and ``de_resnet18`` (BasicBlock, [2, 2, 2]).
RESNET18_REFERENCE = {
    "bn": {
        "conv1": (128, 64, 3, 3), "bn1": 128,
        "conv2": (256, 128, 3, 3), "bn2": 256,
        "conv3": (256, 128, 3, 3), "bn3": 256,
        "conv4": (512, 1024, 1, 1), "bn4": 512,  # defined, never used in the reference forward
        "bn_layer.0.conv1": (512, 768, 3, 3), "bn_layer.0.bn1": 512,
        "bn_layer.0.conv2": (512, 512, 3, 3), "bn_layer.0.bn2": 512,
        "bn_layer.0.downsample.0": (512, 768, 1, 1), "bn_layer.0.downsample.1": 512,
        "bn_layer.1.conv1": (512, 512, 3, 3), "bn_layer.1.bn1": 512,
        "bn_layer.1.conv2": (512, 512, 3, 3), "bn_layer.1.bn2": 512,
    },
    "decoder": {
        "layer1.0.conv1": (512, 256, 2, 2), "layer1.0.bn1": 256,
        "layer1.0.conv2": (256, 256, 3, 3), "layer1.0.bn2": 256,
        "layer1.0.upsample.0": (512, 256, 2, 2), "layer1.0.upsample.1": 256,
        "layer1.1.conv1": (256, 256, 3, 3), "layer1.1.bn1": 256,
        "layer1.1.conv2": (256, 256, 3, 3), "layer1.1.bn2": 256,
        "layer2.0.conv1": (256, 128, 2, 2), "layer2.0.bn1": 128,
        "layer2.0.conv2": (128, 128, 3, 3), "layer2.0.bn2": 128,
        "layer2.0.upsample.0": (256, 128, 2, 2), "layer2.0.upsample.1": 128,
        "layer2.1.conv1": (128, 128, 3, 3), "layer2.1.bn1": 128,
        "layer2.1.conv2": (128, 128, 3, 3), "layer2.1.bn2": 128,
        "layer3.0.conv1": (128, 64, 2, 2), "layer3.0.bn1": 64,
        "layer3.0.conv2": (64, 64, 3, 3), "layer3.0.bn2": 64,
        "layer3.0.upsample.0": (128, 64, 2, 2), "layer3.0.upsample.1": 64,
        "layer3.1.conv1": (64, 64, 3, 3), "layer3.1.bn1": 64,
        "layer3.1.conv2": (64, 64, 3, 3), "layer3.1.bn2": 64,
    },
}

#: wide_resnet50_2: ``BN_layer(AttnBottleneck, 3, width_per_group=128)`` (expansion 4) and
#: ``de_wide_resnet50_2`` (Bottleneck, [3, 4, 6], width_per_group 128).
WIDE_RESNET50_2_REFERENCE = {
    "bn": {
        "conv1": (512, 256, 3, 3), "bn1": 512,
        "conv2": (1024, 512, 3, 3), "bn2": 1024,
        "conv3": (1024, 512, 3, 3), "bn3": 1024,
        "conv4": (2048, 4096, 1, 1), "bn4": 2048,  # defined, never used in the reference forward
        "bn_layer.0.conv1": (1024, 3072, 1, 1), "bn_layer.0.bn1": 1024,
        "bn_layer.0.conv2": (1024, 1024, 3, 3), "bn_layer.0.bn2": 1024,
        "bn_layer.0.conv3": (2048, 1024, 1, 1), "bn_layer.0.bn3": 2048,
        "bn_layer.0.downsample.0": (2048, 3072, 1, 1), "bn_layer.0.downsample.1": 2048,
        **_each("bn_layer", (1, 2), {"conv1": (1024, 2048, 1, 1), "bn1": 1024, "conv2": (1024, 1024, 3, 3),
                                     "bn2": 1024, "conv3": (2048, 1024, 1, 1), "bn3": 2048}),
    },
    "decoder": {
        "layer1.0.conv1": (512, 2048, 1, 1), "layer1.0.bn1": 512,
        "layer1.0.conv2": (512, 512, 2, 2), "layer1.0.bn2": 512,
        "layer1.0.conv3": (1024, 512, 1, 1), "layer1.0.bn3": 1024,
        "layer1.0.upsample.0": (2048, 1024, 2, 2), "layer1.0.upsample.1": 1024,
        **_each("layer1", (1, 2), {"conv1": (512, 1024, 1, 1), "bn1": 512, "conv2": (512, 512, 3, 3),
                                   "bn2": 512, "conv3": (1024, 512, 1, 1), "bn3": 1024}),
        "layer2.0.conv1": (256, 1024, 1, 1), "layer2.0.bn1": 256,
        "layer2.0.conv2": (256, 256, 2, 2), "layer2.0.bn2": 256,
        "layer2.0.conv3": (512, 256, 1, 1), "layer2.0.bn3": 512,
        "layer2.0.upsample.0": (1024, 512, 2, 2), "layer2.0.upsample.1": 512,
        **_each("layer2", (1, 2, 3), {"conv1": (256, 512, 1, 1), "bn1": 256, "conv2": (256, 256, 3, 3),
                                      "bn2": 256, "conv3": (512, 256, 1, 1), "bn3": 512}),
        "layer3.0.conv1": (128, 512, 1, 1), "layer3.0.bn1": 128,
        "layer3.0.conv2": (128, 128, 2, 2), "layer3.0.bn2": 128,
        "layer3.0.conv3": (256, 128, 1, 1), "layer3.0.bn3": 256,
        "layer3.0.upsample.0": (512, 256, 2, 2), "layer3.0.upsample.1": 256,
        **_each("layer3", (1, 2, 3, 4, 5), {"conv1": (128, 256, 1, 1), "bn1": 128, "conv2": (128, 128, 3, 3),
                                            "bn2": 128, "conv3": (256, 128, 1, 1), "bn3": 256}),
    },
}

REFERENCES = {"resnet18": RESNET18_REFERENCE, "wide_resnet50_2": WIDE_RESNET50_2_REFERENCE}

#: Reference keys the loader must drop (the unused conv4 / bn4 of ``BN_layer``).
UNUSED_REFERENCE_KEYS = ["bn.bn4.bias", "bn.bn4.num_batches_tracked", "bn.bn4.running_mean",
                         "bn.bn4.running_var", "bn.bn4.weight", "bn.conv4.weight"]


def _random_state(layout: dict[str, tuple[int, ...] | int], seed: int) -> dict[str, torch.Tensor]:
    """A state dict with ``layout``'s keys and shapes and seeded random values (positive
    BatchNorm variances and scales, so a forward pass stays finite)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for path, spec in layout.items():
        if isinstance(spec, int):
            out[f"{path}.weight"] = torch.rand(spec, generator=g) + 0.5
            out[f"{path}.bias"] = 0.1 * torch.randn(spec, generator=g)
            out[f"{path}.running_mean"] = 0.1 * torch.randn(spec, generator=g)
            out[f"{path}.running_var"] = torch.rand(spec, generator=g) + 0.5
            out[f"{path}.num_batches_tracked"] = torch.tensor(17)
        else:
            out[f"{path}.weight"] = 0.05 * torch.randn(spec, generator=g)
    return out


def _reference_checkpoint(arch: str, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """What the reference code saves: ``{'bn': bn.state_dict(), 'decoder': decoder.state_dict()}``."""
    ref = REFERENCES[arch]
    return {"bn": _random_state(ref["bn"], seed), "decoder": _random_state(ref["decoder"], seed + 1)}


def test_reference_tables_are_consistent() -> None:
    """The hand-written tables chain up: each stage's input is the previous stage's output."""
    for ref in REFERENCES.values():
        dec = ref["decoder"]
        bottleneck_out = ref["bn"]["bn_layer.0.downsample.1"]
        assert dec["layer1.0.upsample.0"][0] == bottleneck_out
        assert dec["layer2.0.upsample.0"][0] == dec["layer1.0.upsample.1"]
        assert dec["layer3.0.upsample.0"][0] == dec["layer2.0.upsample.1"]
    assert sum(1 for k in WIDE_RESNET50_2_REFERENCE["decoder"] if k.endswith(".conv1")) == 3 + 4 + 6


@pytest.mark.parametrize("arch", list(REFERENCES))
def test_reference_checkpoint_loads_key_for_key(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "rd4ad", teacher_weights=None)
    ref = _reference_checkpoint(arch, seed=5)
    expected_bn = {k: v for k, v in ref["bn"].items() if f"bn.{k}" not in UNUSED_REFERENCE_KEYS}
    assert set(model.student.bottleneck.state_dict()) == set(expected_bn)
    assert set(model.student.decoder.state_dict()) == set(ref["decoder"])
    dropped = load_reference_state_dict(model, ref)
    assert sorted(dropped) == UNUSED_REFERENCE_KEYS
    for ours, theirs in ((model.student.bottleneck.state_dict(), expected_bn), (model.student.decoder.state_dict(), ref["decoder"])):
        for k, v in theirs.items():
            assert torch.equal(ours[k], v), k


@pytest.mark.parametrize("variant", ["rd4ad", "skrd4ad"])
def test_reference_weights_determine_the_outputs(variant: str, tmp_path) -> None:
    """Two differently initialised models with the same teacher give identical maps once the
    same reference file is loaded (saved plainly and as from nn.DataParallel)."""
    torch.manual_seed(0)
    a = build_model("resnet18", variant, teacher_weights=None).eval()
    torch.manual_seed(123)
    b = build_model("resnet18", variant, teacher_weights=None).eval()
    b.teacher.load_state_dict(a.teacher.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = b(x)[1]
    ref = _reference_checkpoint("resnet18", seed=9)
    torch.save(ref, tmp_path / "reference.pth")
    assert sorted(load_reference_state_dict(a, tmp_path / "reference.pth")) == UNUSED_REFERENCE_KEYS
    parallel = {group: {f"module.{k}": v for k, v in sd.items()} for group, sd in ref.items()}
    assert sorted(load_reference_state_dict(b, parallel)) == UNUSED_REFERENCE_KEYS
    with torch.no_grad():
        out_a, out_b = a(x)[1], b(x)[1]
    for fa, fb, fb_before in zip(out_a, out_b, before, strict=True):
        assert torch.isfinite(fa).all()
        torch.testing.assert_close(fa, fb, rtol=0, atol=0)
        assert not torch.equal(fb, fb_before)  # the load changed the student


def test_load_bare_reference_decoder_and_shape_errors() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", "rd4ad", teacher_weights=None)
    bottleneck_before = {k: v.clone() for k, v in model.student.bottleneck.state_dict().items()}
    decoder = _reference_checkpoint("resnet18", seed=3)["decoder"]
    with pytest.warns(UserWarning, match="bottleneck keeps its current"):
        assert load_reference_state_dict(model, {f"module.{k}": v for k, v in decoder.items()}) == []
    assert torch.equal(model.student.decoder.layer1[0].conv1.weight, decoder["layer1.0.conv1.weight"])
    for k, v in model.student.bottleneck.state_dict().items():
        assert torch.equal(v, bottleneck_before[k]), k
    bad = dict(decoder, **{"layer1.0.conv1.weight": torch.zeros(1, 1, 2, 2)})
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight.*\(1, 1, 2, 2\).*\(512, 256, 2, 2\)"):
        load_reference_state_dict(model, bad)
    wrong_arch = build_model("resnet34", "rd4ad", teacher_weights=None)  # 3/4/6 decoder blocks, not 2/2/2
    with pytest.raises(KeyError, match=r"missing keys \['layer1\.2\."):
        load_reference_state_dict(wrong_arch, {"decoder": decoder})


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

