"""Tests of the frozen teacher encoder (random weights, tiny inputs, no downloads)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import skrd4ad.models.teacher as teacher_mod
from skrd4ad.io import sha256_file
from skrd4ad.models.teacher import (
    TEACHER_ARCHS,
    Teacher,
    build_teacher,
    load_teacher_state_dict,
)

# Written out independently of the module's table.
EXPECTED_CHANNELS = {
    "resnet18": (64, 128, 256),
    "resnet34": (64, 128, 256),
    "resnet50": (256, 512, 1024),
    "wide_resnet50_2": (256, 512, 1024),
    "mobilenet_v2": (24, 32, 96),
}
# Modules of the full torchvision network whose outputs the teacher must reproduce.
TAPS = {
    "mobilenet_v2": ("features.3", "features.6", "features.13"),
}
RESNET_TAPS = ("layer1", "layer2", "layer3")


def _reference_maps(net: nn.Module, arch: str, x: torch.Tensor) -> list[torch.Tensor]:
    """Intermediate outputs of the full torchvision network, captured with forward hooks."""
    modules = dict(net.named_modules())
    outs: list[torch.Tensor] = []
    hooks = [modules[name].register_forward_hook(lambda m, i, o: outs.append(o))
             for name in TAPS.get(arch, RESNET_TAPS)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return outs


def _calibrated(arch: str) -> nn.Module:
    """Random torchvision net whose BN running stats fit its own activations.

    With the default statistics (0, 1) random activations shrink towards zero with depth,
    and a teacher cut one block too early or too late could still match to tolerance.
    """
    net = getattr(torchvision.models, arch)(weights=None)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 64, 64))
    return net.eval()


def test_arch_list() -> None:
    assert TEACHER_ARCHS == tuple(EXPECTED_CHANNELS)


@pytest.mark.parametrize("arch", list(EXPECTED_CHANNELS))
def test_three_maps_match_torchvision(arch: str) -> None:
    torch.manual_seed(0)
    net = _calibrated(arch)
    teacher = load_teacher_state_dict(arch, net.state_dict())
    assert teacher.channels == EXPECTED_CHANNELS[arch]
    assert teacher.arch == arch
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = teacher(x)
    assert len(maps) == 3
    for f, c, s in zip(maps, EXPECTED_CHANNELS[arch], (4, 8, 16)):
        assert f.shape == (2, c, 64 // s, 96 // s)
    for f, ref in zip(maps, _reference_maps(net, arch, x)):
        assert ref.std() > 0.1  # activations did not vanish, so the comparison is meaningful
        torch.testing.assert_close(f, ref)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_dropped_layers_not_built(arch: str) -> None:
    names = {n.split(".")[0] for n, _ in Teacher(arch).named_parameters()}
    assert not names & {"layer4", "fc", "classifier"}
    if arch == "mobilenet_v2":
        assert len(Teacher(arch).features) == 14


def test_frozen_and_eval_survive_parent_train() -> None:
    torch.manual_seed(0)
    parent = nn.ModuleDict({"teacher": build_teacher("resnet18", None), "head": nn.BatchNorm2d(3)})
    parent.train()
    teacher = parent["teacher"]
    assert parent["head"].training  # the parent did switch its other children
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(4, 3, 32, 32) * 3 + 1
    maps = teacher(x)
    assert not any(f.requires_grad for f in maps)  # no autograd graph for a frozen teacher
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics unchanged


def test_gradient_reaches_input_but_not_weights() -> None:
    teacher = build_teacher("mobilenet_v2", None)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    sum(f.sum() for f in teacher(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_channels_last_and_autocast(arch: str) -> None:
    torch.manual_seed(0)
    teacher = load_teacher_state_dict(arch, _calibrated(arch).state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = teacher(x)
        cl = teacher.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = teacher(x)
    for r, c, lo in zip(ref, cl, low):
        torch.testing.assert_close(c, r, rtol=1e-4, atol=1e-4)
        assert lo.dtype == torch.bfloat16
        assert torch.corrcoef(torch.stack([lo.float().flatten(), r.flatten()]))[0, 1] > 0.99


def test_input_shape_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(3, 32, 32\)"):
        build_teacher("resnet18", None)(torch.zeros(3, 32, 32))


def test_load_ignores_dropped_layers_either_way() -> None:
    full = torchvision.models.resnet18(weights=None).state_dict()
    teacher = load_teacher_state_dict("resnet18", full, weights_id="x")
    assert teacher.weights_id == "x"
    partial = {k: v for k, v in full.items() if not k.startswith(("layer4.", "fc."))}
    teacher2 = load_teacher_state_dict("resnet18", partial)
    for k, v in teacher2.state_dict().items():
        assert torch.equal(v, full[k])
        assert torch.equal(teacher.state_dict()[k], full[k])


def test_load_errors_name_key_and_shapes() -> None:
    full = torchvision.models.resnet18(weights=None).state_dict()
    missing = {k: v for k, v in full.items() if k != "layer2.0.bn1.running_var"}
    with pytest.raises(ValueError, match=r"lacks key 'layer2\.0\.bn1\.running_var'"):
        load_teacher_state_dict("resnet18", missing)
    prefixed = {f"module.{k}": v for k, v in full.items()}
    with pytest.raises(ValueError, match=r"'module\.conv1\.weight'.*DataParallel"):
        load_teacher_state_dict("resnet18", prefixed)
    bad = dict(full, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(ValueError, match=r"'layer1\.0\.conv1\.weight'.*\(64, 64, 1, 1\).*\(64, 64, 3, 3\)"):
        load_teacher_state_dict("resnet18", bad)
    # resnet34 weights do not fit a resnet18 teacher: layer1.2.* is unknown there
    with pytest.raises(ValueError, match=r"not in torchvision's resnet18"):
        load_teacher_state_dict("resnet18", torchvision.models.resnet34(weights=None).state_dict())
    with pytest.raises(ValueError, match=r"'conv1\.weight' holds a list"):
        load_teacher_state_dict("resnet18", dict(full, **{"conv1.weight": [1.0]}))


def test_unknown_arch_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"'vgg16'.*resnet18, resnet34.*mobilenet_v2"):
        build_teacher("vgg16", None)


def test_build_random_and_from_file(tmp_path: Path) -> None:
    assert build_teacher("resnet18", None).weights_id == "random"
    assert build_teacher("resnet18", "none").weights_id == "random"
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    teacher = build_teacher("mobilenet_v2", path)
    assert teacher.weights_id == f"sha256:{sha256_file(path)}"
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, state[k])
    assert build_teacher("mobilenet_v2", str(path)).weights_id == teacher.weights_id


def test_build_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'imagnet'.*'imagenet', 'pypi', 'none' or a path"):
        build_teacher("resnet18", "imagnet")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth.*weights_only=True"):
        build_teacher("resnet18", junk)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, ckpt)
    with pytest.raises(ValueError, match=r"ckpt\.pth.*'state_dict' is a OrderedDict"):
        build_teacher("resnet18", ckpt)


def test_imagenet_missing_names_file_and_command(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth"
    with pytest.raises(FileNotFoundError) as info:
        build_teacher("wide_resnet50_2", "imagenet")
    message = str(info.value)
    assert str(expected) in message
    assert "skrd4ad fetch-teacher --arch wide_resnet50_2 --source imagenet" in message
    assert "Wide_ResNet50_2_Weights.IMAGENET1K_V1" in message
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []  # nothing fetched or written


def test_imagenet_cached_file_hash_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = torchvision.models.resnet18(weights=None).state_dict()
    fake = cache / "resnet18-f37072fd.pth"  # real torchvision name, fake content
    torch.save(state, fake)
    with pytest.raises(ValueError, match=r"does not start with the prefix 'f37072fd'"):
        build_teacher("resnet18", "imagenet")
    # Same file under a name whose prefix matches its content: loads, identity recorded.
    digest = sha256_file(fake)
    fake.rename(cache / f"resnet18-{digest[:8]}.pth")
    fake_enum = types.SimpleNamespace(url=f"https://example.invalid/models/resnet18-{digest[:8]}.pth")
    monkeypatch.setattr(teacher_mod, "imagenet_weights", lambda arch: fake_enum)
    teacher = build_teacher("resnet18", "imagenet")
    assert teacher.weights_id == f"torchvision:ResNet18_Weights.IMAGENET1K_V1:sha256:{digest}"
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, state[k])


def test_imagenet_cache_path_matches_torchvision_url() -> None:
    for arch in TEACHER_ARCHS:
        weights = teacher_mod.imagenet_weights(arch)
        assert weights.url.endswith("/" + teacher_mod.imagenet_cache_path(arch).name)
        assert repr(weights).endswith("IMAGENET1K_V1")
