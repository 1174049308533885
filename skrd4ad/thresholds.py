"""Decision thresholds of a trained model: written by evaluate, read by predict and export.

``evaluate`` writes ``thresholds.json`` into its output folder and (from the command line) the
same file beside the checkpoint as ``<stem>.thresholds.json``, the checkpoint's companion.  It
holds the image and pixel F1-max thresholds, the map settings they are valid for, and the
identity of the model they belong to (``checkpoint_id``,
:func:`skrd4ad.checkpoint.checkpoint_identity`: a digest of the weights and the model's settings,
not of the file, so an identical rerun writes an identical file).  An older file that records the
checkpoint file's sha256 instead (``checkpoint_sha256``) is still accepted when that sha256 equals
the checkpoint file's; otherwise it is refused with the fix (evaluate again).  They were chosen on the test set, so a label from
them is optimistic on that set: choose them on held-out images before trusting them in production.

:func:`find_thresholds` looks, in order, for an explicit file, the companion beside the
checkpoint, and the evaluation folder the pipeline wrote for a pipeline checkpoint.

>>> t = find_thresholds("runs/brick.pt")  # doctest: +SKIP
>>> t.image, t.settings["sigma"]  # doctest: +SKIP
(3.2871, 4.0)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import identity_of_file
from .config import EvalConfig, from_dict
from .io import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

THRESHOLDS_FORMAT = "skrd4ad-thresholds-v1"
#: The evaluate settings a threshold depends on: another blur or score changes the scale.
MAP_SETTINGS = ("combine", "sigma", "score", "topk")
CHOSEN_ON = "test set, F1-max (optimistic on that set; choose on held-out images for production)"
FILE_NAME = "thresholds.json"


@dataclass(frozen=True)
class Thresholds:
    """Image threshold (score >= it: anomalous), pixel threshold (None without masks), the map
    settings they hold for, the identity of the model they belong to (None in an older file, which
    has the checkpoint file's ``checkpoint_sha256`` instead), and the file they were read from."""

    image: float
    pixel: float | None
    settings: dict[str, Any]
    checkpoint_id: str | None
    source: str
    checkpoint_sha256: str | None = None


def thresholds_record(metrics: dict[str, float], settings: dict[str, Any], checkpoint_id: str,
                      ckpt: dict[str, Any]) -> dict[str, Any]:
    """The JSON object evaluate writes, from its scalar metrics, the evaluate config and the
    model's identity (:func:`skrd4ad.checkpoint.checkpoint_identity`)."""
    pixel = metrics.get("pixel_f1_threshold")
    return {
        "format": THRESHOLDS_FORMAT,
        "image_threshold": float(metrics["image_f1_threshold"]),
        "pixel_threshold": None if pixel is None or not math.isfinite(pixel) else float(pixel),
        "chosen_on": CHOSEN_ON,
        "settings": {k: settings[k] for k in MAP_SETTINGS},
        "checkpoint_id": checkpoint_id,
        "class": (ckpt.get("data") or {}).get("class"),
        "variant": ckpt.get("variant"),
        "image_size": int(ckpt["image_size"]),
    }


def companion_path(checkpoint: str | os.PathLike[str]) -> Path:
    """``runs/brick.pt`` -> ``runs/brick.thresholds.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.{FILE_NAME}")


def pipeline_eval_path(checkpoint: str | os.PathLike[str]) -> Path | None:
    """``.../results/<name>/checkpoints/<variant>/seed<N>/<cls>.pt`` -> the pipeline's
    ``.../results/<name>/eval/<variant>/seed<N>/<cls>/thresholds.json``; None for other paths."""
    from .pipeline import path, path_regex

    text = Path(checkpoint).as_posix()
    match = re.search("(?:^|/)" + path_regex("checkpoint") + "$", text)
    if match is None:
        return None
    return Path(text[:match.start("name")].removesuffix("results/") + path("eval", **match.groupdict()), FILE_NAME)


def write_thresholds(record: dict[str, Any], *paths: str | os.PathLike[str]) -> None:
    for path in paths:
        write_json_atomic(path, record)


def read_thresholds(path: str | os.PathLike[str], checkpoint_id: str | None = None,
                    checkpoint: str | os.PathLike[str] | None = None) -> Thresholds:
    """Read a thresholds file; errors name the file (unreadable, other format, other model).

    With ``checkpoint_id`` the file must belong to that model; an older file (file sha256 only)
    must then match the sha256 of the file ``checkpoint``."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
        if obj.get("format") != THRESHOLDS_FORMAT:
            raise ValueError(f"format {obj.get('format')!r}, expected {THRESHOLDS_FORMAT}")
        image = float(obj["image_threshold"])
        pixel = None if obj.get("pixel_threshold") is None else float(obj["pixel_threshold"])
        settings = {k: obj["settings"][k] for k in MAP_SETTINGS}
        model_id = None if obj.get("checkpoint_id") is None else str(obj["checkpoint_id"])
        file_sha = None if obj.get("checkpoint_sha256") is None else str(obj["checkpoint_sha256"])
        if model_id is None and file_sha is None:
            raise KeyError("checkpoint_id")
    except FileNotFoundError:
        raise FileNotFoundError(f"thresholds file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"thresholds file {path} is not valid ({type(exc).__name__}: {exc}); "
                         "run skrd4ad evaluate again to rewrite it") from exc
    if checkpoint_id is not None:
        _check_belongs(path, model_id, file_sha, checkpoint_id, checkpoint)
    return Thresholds(image=image, pixel=pixel, settings=settings, checkpoint_id=model_id, source=str(path),
                      checkpoint_sha256=file_sha)


def _check_belongs(path: Path, model_id: str | None, file_sha: str | None, checkpoint_id: str,
                   checkpoint: str | os.PathLike[str] | None) -> None:
    fix = "evaluate this checkpoint (skrd4ad evaluate), or pass --threshold"
    if model_id is not None:
        if model_id != checkpoint_id:
            raise ValueError(f"thresholds file {path} belongs to another checkpoint (model {model_id[:19]}..., this "
                             f"one {checkpoint_id[:19]}...); {fix}")
        return
    actual = sha256_file(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None
    if actual != file_sha:
        raise ValueError(f"thresholds file {path} belongs to another checkpoint (older file: checkpoint_sha256 "
                         f"{str(file_sha)[:12]}..., this file's {str(actual)[:12]}...); {fix}")
    log.info("thresholds file %s: older format (checkpoint file sha256) matches %s; evaluate again to record the "
             "model identity", path, checkpoint)


def settings_for(given: EvalConfig | Mapping[str, Any] | None, found: Thresholds | None, *,
                 own_threshold: bool = False) -> EvalConfig:
    """The evaluate settings to predict or export with: the keys ``given`` sets, the map settings
    the thresholds ``found`` were chosen with for the others, then the defaults.

    A map setting (combine, sigma, score, topk) that ``given`` sets to another value than the
    thresholds' raises ValueError naming the key, because a threshold only holds on the scale it
    was chosen on; with ``own_threshold`` (the caller brings its own) the thresholds do not count.
    In an :class:`EvalConfig` a map setting equal to its default counts as not set; a mapping
    sets exactly its keys."""
    if isinstance(given, EvalConfig):
        given = {k: v for k, v in dataclasses.asdict(given).items()
                 if k not in MAP_SETTINGS or v != getattr(EvalConfig, k)}
    values = dict(given or {})
    if found is not None and not own_threshold:
        for key in MAP_SETTINGS:
            if key in values and values[key] != found.settings[key]:
                raise ValueError(f"{key}={values[key]!r} differs from {key}={found.settings[key]!r} that the thresholds "
                                 f"in {found.source} were chosen with; drop {key}, evaluate the checkpoint with "
                                 f"{key}={values[key]!r} first, or give your own threshold (predict --threshold)")
            values.setdefault(key, found.settings[key])
    return from_dict(EvalConfig, values, "evaluate")


def find_thresholds(checkpoint: str | os.PathLike[str], explicit: str | os.PathLike[str] | None = None,
                    checkpoint_id: str | None = None) -> Thresholds | None:
    """The thresholds of ``checkpoint``: ``explicit`` (must exist), else its companion file, else
    the pipeline's evaluation of it; None when there are none.  A file found for another model
    (other identity; ``checkpoint_id`` default: read from the checkpoint) is an error, never silently used."""
    model_id = checkpoint_id or identity_of_file(checkpoint)
    if explicit is not None:
        return read_thresholds(explicit, model_id, checkpoint)
    for cand in (companion_path(checkpoint), pipeline_eval_path(checkpoint)):
        if cand is not None and cand.is_file():
            return read_thresholds(cand, model_id, checkpoint)
    return None
