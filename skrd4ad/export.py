"""Export a trained checkpoint to ONNX: the whole inference path, uint8 images in, scores and maps out.

The exported graph (:class:`AnomalyDetector`) takes ``images``, uint8 ``(B, S, S, 3)`` RGB
already resized to the checkpoint's ``image_size`` S (the layout of a prepared cache), and
returns ``scores`` float32 ``(B,)`` and ``maps`` float32 ``(B, S, S)``: ImageNet normalisation,
teacher and student with BatchNorm folded into the convolutions, the anomaly map with its
Gaussian blur, and the image score, computed by the same functions as
:func:`skrd4ad.inference.predict_batch`.  The batch size is free.  Beside ``model.onnx`` a
sidecar ``model.json`` records the settings, the thresholds (if any), and what the model came
from (:func:`export_onnx`).

Needs the ``export`` extra (``pip install -e '.[export]'``: onnx, onnxruntime, onnxscript).

>>> export_onnx("runs/brick.pt", "deploy/brick.onnx")  # doctest: +SKIP
>>> scores, maps = verify_onnx("deploy/brick.onnx", images_uint8)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import io
import os
import re
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import identity_of_file, load_checkpoint
from .config import EvalConfig
from .data.prepared import to_model_input
from .io import atomic_path, sha256_file, write_json_atomic
from .models.anomaly_map import anomaly_map, blur_matrices, image_scores
from .models.fold import fold_batchnorm
from .models.rd4ad import ReverseDistillation
from .thresholds import MAP_SETTINGS, find_thresholds, settings_for

ONNX_FORMAT = "skrd4ad-onnx-v1"
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")
INSTALL_HINT = "pip install -e '.[export]'"
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
#: Batch of the example input given to the exporter (>= 2: torch.export specialises sizes 0 and 1).
_EXAMPLE_BATCH = 2
#: The exported model is checked against the PyTorch model on random images before it is kept:
#: max |difference| <= this times the range of the maps (float32 rounding is about 1e-6).
_VERIFY_RTOL = 1e-4


def require_onnx(*, onnxscript: bool = False) -> tuple[Any, Any]:
    """``(onnx, onnxruntime)`` modules (and check onnxscript, needed by the dynamo exporter);
    ImportError with the install command when one is missing."""
    try:
        import onnx
        import onnxruntime
        if onnxscript:
            import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx, onnxruntime and onnxscript ({err.name or err} is missing): "
                          f"{INSTALL_HINT}") from err
    return onnx, onnxruntime


class AnomalyDetector(nn.Module):
    """A loaded model (BatchNorm folded: :func:`fold_batchnorm`) and the map and score settings as one module:
    ``forward(images uint8 (B, S, S, 3)) -> (scores (B,), maps (B, S, S))`` float32.

    The Gaussian blur matrices are buffers, so the blur is two matrix products in the graph."""

    def __init__(self, model: ReverseDistillation, image_size: int, settings: EvalConfig) -> None:
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.combine, self.sigma, self.score = settings.combine, float(settings.sigma), settings.score
        self.topk = min(int(settings.topk), self.image_size ** 2)
        device = next(model.parameters()).device
        mats = blur_matrices(self.image_size, self.image_size, self.sigma, device=device)
        # None: no blur (sigma 0) or above 512 px, where gaussian_blur's convolution runs in the graph
        self.register_buffer("blur_h", None if mats is None else mats[0].clone())
        self.register_buffer("blur_w", None if mats is None else mats[1].clone())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        s = self.image_size
        if tuple(images.shape[1:]) != (s, s, 3):
            raise ValueError(f"expected uint8 images (B, {s}, {s}, 3) resized to the checkpoint's image_size, "
                             f"got {tuple(images.shape)}")
        x = to_model_input(images, images.device).contiguous(memory_format=torch.channels_last)
        t, st = self.model(x)
        blur = None if self.blur_h is None else (self.blur_h, self.blur_w)
        maps = anomaly_map(t, st, (s, s), combine=self.combine, sigma=self.sigma, blur=blur)
        return image_scores(maps, self.score, self.topk), maps


def export_onnx(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *,
                teacher_weights: str | os.PathLike[str] | None = None,
                thresholds: str | os.PathLike[str] | None = None,
                config: EvalConfig | Mapping[str, Any] | None = None, opset: int | None = None,
                dynamo: bool = False) -> Path:
    """Write ``checkpoint`` as an ONNX model ``out`` and its sidecar ``out.with_suffix('.json')``.

    Both files are written atomically, the sidecar last (it records the model's sha256).  Before
    they are written, the model is run with onnxruntime on random images of another batch size
    than the traced one and compared with the PyTorch model (ValueError when they differ).

    ``thresholds``: a thresholds file; default the checkpoint's own
    (:func:`~skrd4ad.thresholds.find_thresholds`; none found: the sidecar's ``thresholds`` is null).
    ``config``: the map settings (combine, sigma, score, topk).  Rule: when thresholds are found,
    their settings are exported; a setting in ``config`` that differs from them raises ValueError
    naming the key, because a threshold only holds for the settings it was chosen with (see
    :func:`~skrd4ad.thresholds.settings_for`).  ``opset``: the ONNX opset, default the exporter's.  Returns ``out``.

    ``dynamo``: False (default) uses the TorchScript exporter, True ``torch.export`` (needs onnxscript).
    Why TorchScript: same outputs, but 1-5 s per export against 10-30 s for torch.export's symbolic batch on 2 cores.
    (Both were checked for resnet18, mobilenet_v2 and wide_resnet50_2, both variants; a batch size that
    tracing baked in would fail the check above.  torch 2.9+ calls the TorchScript exporter deprecated.)
    """
    require_onnx(onnxscript=dynamo)
    checkpoint, out = Path(checkpoint), Path(out)
    sidecar = out.with_suffix(".json")
    if sidecar == out:
        raise ValueError(f"output {out} must not end in .json: the sidecar {sidecar} is written beside it")
    model_id = identity_of_file(checkpoint)
    found = find_thresholds(checkpoint, thresholds, model_id)
    settings = settings_for(config, found)
    model, ckpt = load_checkpoint(checkpoint, device="cpu", teacher_weights=teacher_weights)
    fold_batchnorm(model)
    size = int(ckpt["image_size"])
    detector = AnomalyDetector(model, size, settings).eval()

    # Reference outputs first: running the module eagerly also fills the lru caches it reads
    # (ImageNet constants) with real tensors; first filled inside torch.export they would keep
    # its fake tensors and break every later eager call in this process.
    images = torch.randint(0, 256, (_EXAMPLE_BATCH + 1, size, size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = tuple(v.numpy() for v in detector(images))
    if not all(np.isfinite(v).all() for v in reference):
        raise ValueError(f"{checkpoint} gives non-finite (NaN/inf) anomaly maps or scores: its weights are "
                         "probably NaN/inf (a diverged training run); retrain it")
    proto = to_onnx(detector, opset=opset, dynamo=dynamo)
    data = proto.SerializeToString()
    check = _check_parity(data, images, *reference)
    with atomic_path(out, size=len(data)) as tmp:
        tmp.write_bytes(data)

    used_opset = next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))
    teacher = ckpt["teacher"]
    teacher_sha = _SHA256.search(str(teacher.get("weights_id", "")))
    write_json_atomic(sidecar, {
        "format": ONNX_FORMAT,
        "onnx_file": out.name,
        "onnx_sha256": sha256_file(out),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", size, size, 3],
                  "layout": "uint8 NHWC RGB, resized to image_size (no normalisation: the model does it)"},
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch"]},
                    {"name": "maps", "dtype": "float32", "shape": ["batch", size, size]}],
        "image_size": size,
        "settings": {k: getattr(settings, k) for k in MAP_SETTINGS},
        "thresholds": None if found is None else {
            "image": found.image, "pixel": found.pixel, "chosen_on": found.chosen_on, "source": found.source,
            "rule": "score >= image: anomalous; map >= pixel: anomalous pixel"},
        "class": (ckpt.get("data") or {}).get("class"),
        "variant": ckpt["variant"],
        "arch": ckpt.get("arch", teacher.get("arch")),
        "teacher": {"arch": teacher.get("arch"), "weights_id": teacher.get("weights_id"),
                    "sha256": teacher_sha.group(1) if teacher_sha else None},
        "checkpoint": {"file": checkpoint.name, "id": model_id},  # the model's identity, not the file's sha256
        "opset": int(used_opset),
        "exporter": f"torch.onnx.export(dynamo={dynamo})",
        "parity_check": check,
        "versions": {"torch": torch.__version__, **{name: _version(name) for name in
                                                     ("onnx", "onnxscript", "onnxruntime", "skrd4ad")}},
    })
    return out


def to_onnx(detector: AnomalyDetector, *, opset: int | None = None, dynamo: bool = False) -> Any:
    """The ONNX ModelProto of ``detector`` (checked by ``onnx.checker``), batch dimension dynamic;
    ``opset`` and ``dynamo`` as in :func:`export_onnx`.  Run ``detector`` eagerly once before (see
    :func:`export_onnx`).  Not compared with the PyTorch model: :func:`export_onnx` does that."""
    onnx, _ = require_onnx(onnxscript=dynamo)
    s = detector.image_size
    example = torch.zeros(_EXAMPLE_BATCH, s, s, 3, dtype=torch.uint8)
    names = {"input_names": [INPUT_NAME], "output_names": list(OUTPUT_NAMES), "opset_version": opset}
    with torch.no_grad(), warnings.catch_warnings():
        if dynamo:
            proto = torch.onnx.export(detector, (example,), dynamo=True, verbose=False, **names,
                                      dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}).model_proto
        else:
            # the legacy exporter warns that it is deprecated, and about the shape checks it traces
            # (static sides); export_onnx checks the batch size by running another one
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            buffer = io.BytesIO()
            if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5
                names["dynamo"] = False
            torch.onnx.export(detector, (example,), buffer, **names,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}})
            proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    return proto


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def onnx_session(model: str | os.PathLike[str] | bytes, threads: int | None = None, *,
                 spinning: bool = True) -> Any:
    """An onnxruntime CPU InferenceSession of an ONNX file (or its bytes); ``threads``: intra-op
    threads (default onnxruntime's: one per core); ``spinning=False``: its idle threads sleep
    instead of busy-waiting after a run (fairer to other work on the same cores)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def verify_onnx(model: str | os.PathLike[str] | bytes | Any, images: np.ndarray | Tensor, *,
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported model with onnxruntime on the CPU: ``(scores (B,), maps (B, S, S))``
    float32 for uint8 ``images`` (B, S, S, 3).  ``model``: the ONNX file, its bytes, or an
    :func:`onnx_session` to reuse; ``threads`` as in :func:`onnx_session`."""
    sess = model if hasattr(model, "run") else onnx_session(model, threads)
    batch = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
    if batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (B, S, S, 3), got {batch.dtype}")
    scores, maps = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch)})
    return scores, maps


def _check_parity(data: bytes, images: Tensor, ref_scores: np.ndarray, ref_maps: np.ndarray) -> dict[str, Any]:
    """Run the serialised model on ``images``; raise ValueError unless its maps and scores equal
    the PyTorch model's ``ref_*`` to :data:`_VERIFY_RTOL` of the map range."""
    scores, maps = verify_onnx(data, images)
    scale = max(float(ref_maps.max() - ref_maps.min()), 1e-12)
    map_diff = float(np.abs(maps - ref_maps).max()) / scale
    score_diff = float(np.abs(scores - ref_scores).max()) / scale
    if not (map_diff <= _VERIFY_RTOL and score_diff <= _VERIFY_RTOL):  # also catches NaN
        raise ValueError(f"the exported ONNX model differs from the PyTorch model (max map difference "
                         f"{map_diff:.2e}, score difference {score_diff:.2e} of the map range, allowed "
                         f"{_VERIFY_RTOL:g}); nothing was written")
    return {"images": int(images.shape[0]), "input": "random uint8", "max_map_diff_rel": map_diff,
            "max_score_diff_rel": score_diff}


__all__ = ["AnomalyDetector", "INPUT_NAME", "ONNX_FORMAT", "OUTPUT_NAMES", "export_onnx",
           "onnx_session", "require_onnx", "to_onnx", "verify_onnx"]
