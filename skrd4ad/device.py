"""Device choice and mixed precision, shared by training and inference."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available; use device: auto or cpu")
    return device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for ``amp`` in none|bf16|fp16 (fp16 needs CUDA)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp: fp16 autocast needs a CUDA device; use bf16 or none on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def slow_bf16_warning(device: torch.device, amp: str) -> str | None:
    """A one-line warning when ``amp: bf16`` runs on a CPU without native bf16 kernels (no AMX or
    AVX512-BF16: oneDNN emulates them, slower than float32), else None."""
    if amp != "bf16" or device.type != "cpu":
        return None
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # private, so a build without it only skips the warning
            return None
    except (AttributeError, RuntimeError):
        return None
    return ("amp: bf16 on a CPU without native bf16 (no AMX or AVX512-BF16): expect slower steps than "
            "float32; set train.amp: none on this machine")


def memory_format_for(spec: str, device: torch.device, arch: str, amp: str) -> torch.memory_format:
    """The training layout for ``train.memory_format`` (auto|channels_last|contiguous) under
    ``train.amp`` (none|bf16|fp16).

    ``auto``: channels_last on a GPU (what cuDNN's tensor-core kernels prefer); on a CPU the layout
    ``benchmarks/bench_layout.py`` measured faster (2 cores with AVX-512 and AMX, contiguous /
    channels_last step time, median of interleaved rounds): in float32 channels_last for
    mobilenet_v2 (1.18x) and resnet18 (1.07x), contiguous for wide_resnet50_2 (0.96x) and, by its
    same bottleneck blocks, resnet50; under bf16 autocast channels_last for all (wide_resnet50_2
    1.05x, mobilenet_v2 1.47x).  A fixed rule, not a probe at run time, so the same settings give
    the same weights on the same machine."""
    if spec == "channels_last":
        return torch.channels_last
    if spec == "contiguous":
        return torch.contiguous_format
    if spec != "auto":
        raise ValueError(f"memory_format {spec!r} is not auto, channels_last or contiguous")
    if device.type == "cpu" and amp == "none" and arch in ("resnet50", "wide_resnet50_2"):
        return torch.contiguous_format
    return torch.channels_last


def compile_for(spec: str | bool, device: torch.device) -> bool:
    """Whether ``train.compile`` (auto|true|false) compiles the model: auto is off until measured
    to pay off (on 2 CPU cores the compile time is not won back in short runs)."""
    return spec is True
