"""Decision thresholds of a trained model: written by evaluate, read by predict and export.

``evaluate`` writes ``thresholds.json`` into its output folder and (from the command line) the
same file beside the checkpoint as ``<stem>.thresholds.json``, the checkpoint's companion.  It
holds the image and pixel F1-max thresholds, the map settings they are valid for, and the
sha256 of the checkpoint they belong to.  They were chosen on the test set, so a label from
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
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import EvalConfig, from_dict
from .io import sha256_file, write_json_atomic

THRESHOLDS_FORMAT = "skrd4ad-thresholds-v1"
#: The evaluate settings a threshold depends on: another blur or score changes the scale.
MAP_SETTINGS = ("combine", "sigma", "score", "topk")
CHOSEN_ON = "test set, F1-max (optimistic on that set; choose on held-out images for production)"
FILE_NAME = "thresholds.json"


@dataclass(frozen=True)
class Thresholds:
    """Image threshold (score >= it: anomalous), pixel threshold (None without masks), the map
    settings they hold for, and the file they were read from."""

    image: float
    pixel: float | None
    settings: dict[str, Any]
    checkpoint_sha256: str
    source: str


def thresholds_record(metrics: dict[str, float], settings: dict[str, Any], checkpoint_sha256: str,
                      ckpt: dict[str, Any]) -> dict[str, Any]:
    """The JSON object evaluate writes, from its scalar metrics and the evaluate config."""
    pixel = metrics.get("pixel_f1_threshold")
    return {
        "format": THRESHOLDS_FORMAT,
        "image_threshold": float(metrics["image_f1_threshold"]),
        "pixel_threshold": None if pixel is None or not math.isfinite(pixel) else float(pixel),
        "chosen_on": CHOSEN_ON,
        "settings": {k: settings[k] for k in MAP_SETTINGS},
        "checkpoint_sha256": checkpoint_sha256,
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


def read_thresholds(path: str | os.PathLike[str], checkpoint_sha256: str | None = None) -> Thresholds:
    """Read a thresholds file; errors name the file (unreadable, other format, other checkpoint)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
        if obj.get("format") != THRESHOLDS_FORMAT:
            raise ValueError(f"format {obj.get('format')!r}, expected {THRESHOLDS_FORMAT}")
        image = float(obj["image_threshold"])
        pixel = None if obj.get("pixel_threshold") is None else float(obj["pixel_threshold"])
        settings = {k: obj["settings"][k] for k in MAP_SETTINGS}
        digest = str(obj["checkpoint_sha256"])
    except FileNotFoundError:
        raise FileNotFoundError(f"thresholds file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"thresholds file {path} is not valid ({type(exc).__name__}: {exc}); "
                         "run skrd4ad evaluate again to rewrite it") from exc
    if checkpoint_sha256 is not None and digest != checkpoint_sha256:
        raise ValueError(f"thresholds file {path} belongs to another checkpoint (sha256 {digest[:12]}..., this one "
                         f"{checkpoint_sha256[:12]}...); evaluate this checkpoint, or pass --threshold")
    return Thresholds(image=image, pixel=pixel, settings=settings, checkpoint_sha256=digest, source=str(path))


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
                    checkpoint_sha256: str | None = None) -> Thresholds | None:
    """The thresholds of ``checkpoint``: ``explicit`` (must exist), else its companion file, else
    the pipeline's evaluation of it; None when there are none.  A file found for another
    checkpoint (other sha256) is an error, never silently used."""
    digest = checkpoint_sha256 or sha256_file(checkpoint)
    if explicit is not None:
        return read_thresholds(explicit, digest)
    for cand in (companion_path(checkpoint), pipeline_eval_path(checkpoint)):
        if cand is not None and cand.is_file():
            return read_thresholds(cand, digest)
    return None
