"""Loading bottleneck/decoder weights saved by the reference RD4AD code (hq-deng/RD4AD).

The reference saves ``{'bn': bn.state_dict(), 'decoder': decoder.state_dict()}`` (or a bare
decoder state dict).  Key map, reference -> ours:

==========================  ===========================================================
reference key               our key
==========================  ===========================================================
``bn.<k>``                  ``bottleneck.<k>`` (same names: ``bn_layer.*``, ``conv1..3``, ``bn1..3``)
``bn.conv4.*``, ``bn.bn4.*``  dropped: defined but never used in the reference forward pass
``decoder.<k>``             ``decoder.<k>`` (same names: ``layer1..3.<i>.conv*/bn*/upsample.*``)
``module.`` prefixes        stripped (checkpoints saved from ``nn.DataParallel``)
==========================  ===========================================================

Shapes are checked key by key; a mismatch names the key and both shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .rd4ad import ReverseDistillation

#: Reference bottleneck parameters that exist in its state dict but not in its forward pass.
UNUSED_REFERENCE_PREFIXES = ("conv4.", "bn4.")


def _strip_module(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _load_checked(module: nn.Module, sd: Mapping[str, Tensor], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise KeyError(f"{what}: state dict does not match the {type(module).__name__} of this "
                       f"architecture; missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                       f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
                       "Check that the teacher architecture matches the one used for training.")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{what}: key {k!r} has shape {tuple(v.shape)} in the file but "
                             f"{tuple(own[k].shape)} in the model; wrong architecture?")
    module.load_state_dict(dict(sd))


def load_reference_state_dict(model: ReverseDistillation,
                              state: Mapping[str, object] | str | Path) -> list[str]:
    """Load reference RD4AD weights (path or loaded object) into ``model`` in place.

    Accepts ``{'bn': ..., 'decoder': ...}`` or a bare decoder state dict (the seed's ``--seg 1``
    saves only the decoder): then only the decoder is loaded, the bottleneck keeps its current
    (random) weights and a UserWarning naming the file says so (a warning, not an error: such
    files are what the seed writes).  Returns the reference keys that were dropped (see the
    module's key map).
    """
    source = f"reference checkpoint {state}" if isinstance(state, (str, Path)) else "reference state dict"
    if isinstance(state, (str, Path)):
        state = torch.load(state, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a state dict mapping, got {type(state).__name__}")
    dropped: list[str] = []
    if "decoder" in state and isinstance(state["decoder"], Mapping):
        decoder_sd = _strip_module(state["decoder"])  # type: ignore[arg-type]
        bn_sd_raw = state.get("bn")
        if bn_sd_raw is not None:
            bn_sd = {}
            for k, v in _strip_module(bn_sd_raw).items():  # type: ignore[arg-type]
                if k.startswith(UNUSED_REFERENCE_PREFIXES):
                    dropped.append(f"bn.{k}")
                else:
                    bn_sd[k] = v
            _load_checked(model.student.bottleneck, bn_sd, "reference 'bn'")
    else:
        decoder_sd = _strip_module(state)  # type: ignore[arg-type]
        bn_sd_raw = None
    _load_checked(model.student.decoder, decoder_sd, "reference 'decoder'")
    if bn_sd_raw is None:
        warnings.warn(f"{source} holds no 'bn' (bottleneck) weights, only the decoder: the bottleneck keeps its "
                      "current (random) weights, so outputs will not match the reference; load a file saved as "
                      "{'bn': bn.state_dict(), 'decoder': decoder.state_dict()}", UserWarning, stacklevel=2)
    return dropped
