"""Decision thresholds of a trained model: written by evaluate, read by predict and export.

``evaluate`` writes ``thresholds.json`` into its output folder and (from the command line) the
same file beside the checkpoint as ``<stem>.thresholds.json``, the checkpoint's companion.  It
holds the deployed image and pixel thresholds (``image_threshold``, ``pixel_threshold``: what
``predict`` and the exported model use), how they were chosen (``rule``, ``chosen_on``,
``validation``), the test-set F1-max thresholds under ``oracle`` (for comparison only, never
used), the map settings they are valid for, and the identity of the model they belong to
(``checkpoint_id``, :func:`skrd4ad.checkpoint.checkpoint_identity`: a digest of the weights and the
model's settings, not of the file, so an identical rerun writes an identical file).  An older file
that records the checkpoint file's sha256 instead (``checkpoint_sha256``) is still accepted when
that sha256 equals the checkpoint file's; otherwise it is refused with the fix (evaluate again).

The deployed threshold never sees the test set (:func:`deployed_thresholds`): it is chosen on the
validation images that prepare held out (``prepare.val_fraction``, never trained on):

- ``val_fpr`` (default, normal images only): :func:`fpr_threshold` of the validation scores at
  ``evaluate.threshold_fpr``; the pixel threshold likewise over every pixel of their maps;
- ``val_f1_max`` (labelled anomalous images outside the test set exist, e.g. VAD's ``train/bad``):
  the image F1-max over the validation normals and those images, among the thresholds whose
  validation FPR is at most ``evaluate.threshold_fpr`` (``validation.constraint`` says which bound
  chose it: ``f1_max`` or, with a warning, ``threshold_fpr``); the pixel one as above.  F1
  depends on the share of anomalies, and this set's (``validation.anomaly_share``, A / (V + A))
  is not the test set's: the threshold is F1-optimal at that share, not at the test set's;
- ``test_f1_max`` (no validation images: ``val_fraction`` 0, or a class of one training image; or
  a checkpoint trained on another train split than the cache's, whose validation images it may
  have been trained on, e.g. an older checkpoint that records no split): the test-set F1-max, as
  before, labelled optimistic; ``fallback`` says why.

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

import numpy as np

from .checkpoint import identity_of_file
from .config import EvalConfig, from_dict
from .io import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

THRESHOLDS_FORMAT = "skrd4ad-thresholds-v2"
#: Formats :func:`read_thresholds` accepts: v1 (test-set F1-max only) and v2 (deployed + oracle).
READABLE_FORMATS = ("skrd4ad-thresholds-v1", THRESHOLDS_FORMAT)
#: The evaluate settings a threshold depends on: another blur or score changes the scale.
MAP_SETTINGS = ("combine", "sigma", "score", "topk")
#: ``chosen_on`` of a threshold chosen on the test set (v1 files; v2 without validation images).
CHOSEN_ON = "test set, F1-max (optimistic on that set; choose on held-out images for production)"
ORACLE_CHOSEN_ON = ("test set, F1-max: an oracle for comparison only (tuned on the images the metrics are "
                    "reported on); never used by predict or export")
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
    chosen_on: str = CHOSEN_ON


def _allowed_false_positives(fpr: float, n: int) -> int:
    """``floor(fpr x n)`` with 1e-9 of slack (0.29 x 100 gives 29): how many of ``n`` normals a
    threshold at false-positive rate ``fpr`` may flag."""
    return int(math.floor(fpr * n + 1e-9))


def fpr_threshold(scores: Any, fpr: float) -> float:
    """The threshold with at most a fraction ``fpr`` of the normal ``scores`` at or above it.

    Args: scores float (n,) (or any shape: every value counts; e.g. every pixel of the maps) of
    normal images, ``fpr`` in [0, 1).  With ``k = floor(fpr * n)`` (1e-9 of slack, so 0.29 x 100
    gives 29) the rule is: the smallest score ``t`` with ``#(scores >= t) <= k`` (without ties:
    the k-th largest score, so k images count as anomalous, k/n <= fpr); when no score qualifies
    (k = 0, or ties at the top) the next float above the largest score in the scores' own
    precision, so none does.  A sample is anomalous when ``score >= t``.

    >>> fpr_threshold([1.0, 2.0, 3.0, 4.0], 0.25), fpr_threshold([1.0, 2.0, 3.0, 4.0], 0.5)
    (4.0, 3.0)
    """
    s = np.asarray(scores)
    s = s.reshape(-1) if s.dtype in (np.float32, np.float64) else s.astype(np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("fpr_threshold needs at least one score")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"threshold_fpr={fpr} must be in [0, 1) (evaluate.threshold_fpr in params.yaml)")
    if not np.isfinite(s).all():
        raise ValueError("fpr_threshold: the scores hold NaN or inf")
    n = s.size
    k = _allowed_false_positives(fpr, n)
    top = s.max()
    above_all = float(np.nextafter(top, np.array(np.inf, dtype=s.dtype)))
    if k == 0:
        return above_all
    v = np.partition(s, n - k)[n - k]  # the k-th largest
    if int((s >= v).sum()) <= k:
        return float(v)
    higher = s[s > v]  # ties at v: the next distinct value up (fewer than k scores reach it)
    return float(higher.min()) if higher.size else above_all


def f1_threshold(scores: Any, labels: Any) -> float:
    """The F1-max threshold (score >= it: anomalous) of ``scores`` float (n,) with ``labels``
    0/1 (n,); the same rule as the test set's ``image_f1_threshold`` (:mod:`skrd4ad.metrics`)."""
    from .metrics import compute_metrics

    return float(compute_metrics(scores, labels, None).scalars["image_f1_threshold"])


def _f1_max_within_fpr(normal: np.ndarray, anomalous: np.ndarray, fpr: float, floor_t: float) -> float:
    """The threshold with the highest F1 of ``score >= t`` among those that flag at most
    ``floor(fpr x n)`` of the ``normal`` scores (the same count as :func:`fpr_threshold`, whose
    threshold ``floor_t`` always qualifies); the highest such ``t`` on ties, as :func:`f1_threshold`."""
    cands = np.unique(np.r_[floor_t, normal, anomalous])
    fp = normal.size - np.searchsorted(np.sort(normal), cands, side="left")
    cands = cands[fp <= _allowed_false_positives(fpr, normal.size)]
    tp = anomalous.size - np.searchsorted(np.sort(anomalous), cands, side="left")
    fp = normal.size - np.searchsorted(np.sort(normal), cands, side="left")
    f1 = 2 * tp / np.maximum(2 * tp + fp + (anomalous.size - tp), 1)
    return float(cands[len(f1) - 1 - int(np.argmax(f1[::-1]))])


def deployed_thresholds(val_scores: Any, threshold_fpr: float, *, val_maps: Any = None,
                        anomaly_scores: Any = None) -> dict[str, Any] | None:
    """The deployed thresholds from the validation images alone (see the module docstring), as
    the ``image``, ``pixel``, ``rule``, ``chosen_on`` and ``validation`` entries of the record;
    None without validation images.

    Args: val_scores float (V,) of the held-out normal images; val_maps float (V, H, W) or None
    (then no pixel threshold); anomaly_scores float (A,) of labelled anomalous images outside the
    test set, or None/empty (then the normal-only rule)."""
    v = np.asarray(val_scores, dtype=np.float64).reshape(-1) if val_scores is not None else np.zeros(0)
    if v.size == 0:
        return None
    a = np.zeros(0) if anomaly_scores is None else np.asarray(anomaly_scores, dtype=np.float64).reshape(-1)
    src = np.asarray(val_scores).reshape(-1)  # own precision: the next float above a float32 score is float32
    constraint = None
    if a.size:
        image = f1_threshold(np.concatenate([v, a]), np.r_[np.zeros(v.size), np.ones(a.size)])
        rule = "val_f1_max"
        chosen_on = (f"validation set, F1-max over {v.size} held-out normal training images and {a.size} labelled "
                     f"anomalous images outside the test set, at a validation FPR of at most {threshold_fpr}")
        constraint = "f1_max"
        if (v >= image).mean() > threshold_fpr:  # the F1 optimum flags too many normals: the FPR cap binds
            image = _f1_max_within_fpr(v, a, threshold_fpr, fpr_threshold(src, threshold_fpr))
            constraint = "threshold_fpr"
            log.warning("the validation F1-max threshold flags more than %s of the %d validation normals; "
                        "the deployed threshold is the F1-max within that false-positive rate "
                        "(evaluate.threshold_fpr) instead", threshold_fpr, v.size)
    else:
        image = fpr_threshold(src, threshold_fpr)
        rule = "val_fpr"
        chosen_on = (f"validation set: {v.size} held-out normal training images, target false-positive rate "
                     f"{threshold_fpr} (smallest score t with #(scores >= t) <= floor({threshold_fpr} x {v.size}))")
    pixel = None if val_maps is None else fpr_threshold(val_maps, threshold_fpr)
    validation = {"n_normal": int(v.size), "n_anomalous": int(a.size), "threshold_fpr": float(threshold_fpr),
                  "fpr": float((v >= image).mean())}
    if a.size:  # F1 depends on the anomaly share, which here is not the test set's (nor production's)
        validation["recall"] = float((a >= image).mean())
        validation["anomaly_share"] = float(a.size / (v.size + a.size))
        validation["constraint"] = constraint  # which bound chose it: the F1 optimum or the FPR cap
    return {"image": float(image), "pixel": pixel, "rule": rule, "chosen_on": chosen_on, "validation": validation}


def thresholds_record(metrics: dict[str, float], settings: dict[str, Any], checkpoint_id: str,
                      ckpt: dict[str, Any], deployed: dict[str, Any] | None = None, *,
                      fallback: str | None = None) -> dict[str, Any]:
    """The JSON object evaluate writes, from its scalar metrics (the test set's F1-max thresholds:
    the oracle), the deployed thresholds (:func:`deployed_thresholds`; None: no usable validation
    images, the oracle is deployed, labelled so, with ``fallback``, why, recorded beside ``rule``),
    the evaluate config and the model's identity (:func:`skrd4ad.checkpoint.checkpoint_identity`)."""
    pixel = metrics.get("pixel_f1_threshold")
    oracle = {"image_threshold": float(metrics["image_f1_threshold"]),
              "pixel_threshold": None if pixel is None or not math.isfinite(pixel) else float(pixel),
              "chosen_on": ORACLE_CHOSEN_ON}
    if deployed is None:
        deployed = {"image": oracle["image_threshold"], "pixel": oracle["pixel_threshold"], "rule": "test_f1_max",
                    "chosen_on": CHOSEN_ON, "validation": None}
    return {
        "format": THRESHOLDS_FORMAT,
        "image_threshold": float(deployed["image"]),
        "pixel_threshold": None if deployed["pixel"] is None else float(deployed["pixel"]),
        "rule": deployed["rule"],
        **({"fallback": fallback} if deployed["rule"] == "test_f1_max" and fallback else {}),
        "chosen_on": deployed["chosen_on"],
        "validation": deployed["validation"],
        "oracle": oracle,
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
    from .paths import path, path_regex

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
        if obj.get("format") not in READABLE_FORMATS:
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
                      checkpoint_sha256=file_sha, chosen_on=str(obj.get("chosen_on") or CHOSEN_ON))


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
