"""Evaluation of one checkpoint on one prepared class: metrics, scores, curves, figures.

Writes into ``out_dir``:

- ``metrics.json``: numbers only, flat keys for ``dvc metrics`` (``image_auroc``, ``pixel_auroc``,
  ``aupro``, ``aupro_seed``, F1-max and its threshold chosen on this test set (the oracle); at the
  deployed threshold (chosen without the test set, see below) the test set's ``image_precision``,
  ``image_recall``, ``image_f1``, ``image_fpr`` and, with masks, ``pixel_precision``, ``pixel_recall``,
  ``pixel_f1``, ``pixel_fpr`` (precision 0 when nothing is flagged); and per test subset (each defect
  folder against all good test images, e.g. VAD's seen ``bad`` and ``bad_unseen_defects``)
  ``image_auroc_<defect>``, which the aggregate table does not tabulate (its columns:
  :data:`skrd4ad.aggregate.METRICS`);
- ``thresholds.json``: the deployed image and pixel thresholds, chosen on the validation images
  prepare held out (``evaluate.threshold_fpr`` on the normal ones, or the F1-max where labelled
  anomalous images outside the test set exist) when the checkpoint was trained on this cache's
  train split (its recorded ``data.train_files`` digest; otherwise, or without validation images,
  the test-set F1-max ships, ``fallback`` saying why), with the test-set F1-max beside them as an
  oracle for comparison, the map settings and the identity of the model they belong to
  (:mod:`skrd4ad.thresholds`; ``companion=True`` also writes it beside the checkpoint, where
  ``predict`` and ``export`` find it);
- ``provenance.json``: what produced them (checkpoint identity, params, dataset digest, package
  versions, the package source's sha256, notes on omitted metrics); not a DVC metric, so diffs stay
  readable.  Nothing in these files changes on an identical rerun (no git revision, no file sha256
  of the checkpoint, which records versions): a forced rerun leaves git clean;
- ``scores.csv``: file, defect_type, label, score per test image;
- ``roc_image.csv``, ``roc_pixel.csv``, ``pro.csv``: curves (at most ``max_curve_points`` rows;
  the pixel ones are header-only for image-level-only datasets: absent, not faked);
- ``figures/``: image | ground truth | overlay for the highest- and lowest-scoring anomalous
  and the highest-scoring good images.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .checkpoint import checkpoint_identity, load_checkpoint
from .config import EvalConfig
from .data.prepared import PreparedClass
from .inference import predict_array
from .io import StagingDir, replace_dir, write_json_atomic, write_text_atomic
from .metrics import compute_metrics
from .models.fold import fold_batchnorm
from .provenance import code_provenance, package_versions
from .thresholds import (FILE_NAME as THRESHOLDS_FILE, companion_path, deployed_thresholds, thresholds_record,
                         write_thresholds)
from .viz import save_triptych

log = logging.getLogger(__name__)

CURVE_FILES = {"image_roc": "roc_image.csv", "pixel_roc": "roc_pixel.csv", "pro": "pro.csv"}
CURVE_COLUMNS = {"image_roc": ["fpr", "tpr"], "pixel_roc": ["fpr", "tpr"], "pro": ["fpr", "pro"]}


def compute_maps(model: torch.nn.Module, images: np.ndarray, config: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps ``(N, H, W)`` float32 and scores ``(N,)`` for uint8 images ``(N, H, W, 3)``,
    batched, kept on the model's device."""
    device = next(model.student.parameters()).device
    n, h, w = images.shape[:3]
    maps = torch.empty((n, h, w), dtype=torch.float32, device=device)
    scores = torch.empty((n,), dtype=torch.float32, device=device)
    for sl, m, s in predict_array(model, images, config):
        maps[sl] = m
        scores[sl] = s
    return maps, scores


def compute_scores(model: torch.nn.Module, images: np.ndarray, config: EvalConfig) -> torch.Tensor:
    """Scores ``(N,)`` float32 on the model's device for uint8 images ``(N, H, W, 3)`` (no maps kept)."""
    device = next(model.student.parameters()).device
    scores = torch.empty((len(images),), dtype=torch.float32, device=device)
    for sl, _, s in predict_array(model, images, config):
        scores[sl] = s
    return scores


def at_threshold(pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Counts ``tp``, ``fp``, ``n_pos``, ``n_neg`` of boolean predictions against boolean truth
    (same shape), as 0-d tensors/arrays (no host sync here)."""
    return {"tp": (pred & truth).sum(), "fp": (pred & ~truth).sum(), "n_pos": truth.sum(), "n_neg": (~truth).sum()}


def rates(prefix: str, tp: int, fp: int, n_pos: int, n_neg: int) -> dict[str, float]:
    """``<prefix>_precision`` (0 when nothing is flagged), ``_recall``, ``_f1`` (2tp / (tp + fp + n_pos))
    and ``_fpr`` (0 without negatives) from the counts at one threshold."""
    return {f"{prefix}_precision": tp / (tp + fp) if tp + fp else 0.0,
            f"{prefix}_recall": tp / n_pos if n_pos else 0.0,
            f"{prefix}_f1": 2.0 * tp / (tp + fp + n_pos) if tp + fp + n_pos else 0.0,
            f"{prefix}_fpr": fp / n_neg if n_neg else 0.0}


def deployed_metrics(scores: np.ndarray, labels: np.ndarray, image_t: float, maps: torch.Tensor | None = None,
                     masks: np.ndarray | None = None, pixel_t: float | None = None,
                     chunk: int = 16) -> dict[str, float]:
    """Test-set precision, recall, F1 and FPR at the deployed thresholds: ``image_*`` from
    ``scores`` (N,) >= ``image_t`` against ``labels`` (N,) 0/1; ``pixel_*`` (with ``maps`` (N,H,W) on
    any device, ``masks`` (N,H,W) 0/1 and ``pixel_t``) from the maps, the masks moved to the maps'
    device ``chunk`` images at a time; one host sync for the pixel counts."""
    c = at_threshold(np.asarray(scores) >= image_t, np.asarray(labels).astype(bool))
    out = rates("image", *(int(c[k]) for k in ("tp", "fp", "n_pos", "n_neg")))
    if maps is not None and masks is not None and pixel_t is not None:
        total = torch.zeros(4, dtype=torch.int64, device=maps.device)
        for start in range(0, len(masks), chunk):
            truth = torch.from_numpy(np.array(masks[start:start + chunk])).to(maps.device, non_blocking=True) > 0
            c = at_threshold(maps[start:start + chunk] >= pixel_t, truth)
            total += torch.stack([c["tp"], c["fp"], c["n_pos"], c["n_neg"]])
        out.update(rates("pixel", *(int(v) for v in total.tolist())))
    return out


def _pick_figures(scores: np.ndarray, labels: np.ndarray, k: int) -> list[tuple[str, int]]:
    """(kind, index) of the k highest- and k lowest-scoring anomalous and k highest good images."""
    bad = np.flatnonzero(labels == 1)
    good = np.flatnonzero(labels == 0)
    bad_sorted = bad[np.argsort(-scores[bad], kind="stable")]
    good_sorted = good[np.argsort(-scores[good], kind="stable")]
    picks = [("top_anomalous", int(i)) for i in bad_sorted[:k]]
    picks += [("lowest_anomalous", int(i)) for i in bad_sorted[::-1][:k] if ("top_anomalous", int(i)) not in picks]
    picks += [("top_good", int(i)) for i in good_sorted[:k]]
    return picks


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False, float_format="%.8g"))


def _check_same_data(checkpoint: str | Path, ckpt: dict[str, Any], data_dir: str | Path, data: PreparedClass,
                     allow_other_data: bool) -> list[str]:
    """Refuse data other than the checkpoint's training data (class or source digest differ)
    unless ``allow_other_data``; return the notes for the provenance (empty when they match).

    The digest of an image-level-only cache leaves out the masks, so there a digest mismatch
    alone (same class) is only a note."""
    trained = ckpt.get("data") or {}
    t_cls, t_dig = trained.get("class"), trained.get("source_digest")
    d_cls, d_dig = data.class_name, data.meta.get("source_digest")
    other_class = t_cls is not None and t_cls != d_cls
    other_digest = None not in (t_dig, d_dig) and t_dig != d_dig
    if not (other_class or other_digest):
        return []
    what = (f"{checkpoint} was trained on class {t_cls!r} (source digest {str(t_dig)[:12]}) but {data_dir} "
            f"holds class {d_cls!r} (source digest {str(d_dig)[:12]})")
    if not allow_other_data and (other_class or not data.image_level_only):
        raise ValueError(f"{what}; evaluate on the prepared data of the training class, or pass "
                         "--allow-other-data (Python: allow_other_data=True) to evaluate anyway")
    note = f"other data: {what}"
    log.warning("%s", note)
    return [note]


_NO_VALIDATION = "no validation images (prepare.val_fraction 0, or a single training image)"


def _other_split(checkpoint: str | Path, ckpt: dict[str, Any], data_dir: str | Path,
                 data: PreparedClass) -> str | None:
    """Why ``data``'s validation images cannot choose the threshold of ``ckpt`` (its train split,
    ``data.train_files`` in the checkpoint, differs from ``data``'s or is unknown); None when it is
    the same split."""
    trained = (ckpt.get("data") or {}).get("train_files")
    current = data.train_files_digest()
    if trained == current:
        return None
    if trained is None:
        return (f"{checkpoint} records no train split (written before checkpoints recorded it), so the validation "
                f"images of {data_dir} may have been trained on")
    return (f"{checkpoint} was trained on another train split than {data_dir} holds (train-files digest "
            f"{trained[:12]} vs {current[:12]}), so its validation images may have been trained on")


def evaluate(checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path,
             config: EvalConfig | None = None, *, params: dict[str, Any] | None = None,
             allow_other_data: bool = False, companion: bool = False,
             teacher_weights: str | Path | None = None) -> dict[str, float]:
    """Evaluate ``checkpoint`` on the prepared class ``data_dir``; write the files listed in the
    module docstring into ``out_dir``; return the scalar metrics.

    Data whose class or source digest differ from those recorded in the checkpoint is refused
    (ValueError) unless ``allow_other_data``; then, as for an image-level-only cache of the
    training class, it is a warning and a provenance note. Non-finite maps or scores (a diverged
    checkpoint) raise ValueError naming the checkpoint.  ``companion`` also writes the thresholds
    beside the checkpoint (``<stem>.thresholds.json``); ``teacher_weights`` as in
    :func:`~skrd4ad.checkpoint.load_checkpoint`."""
    config = config or EvalConfig()
    out_dir = Path(out_dir)
    model, ckpt, data, data_notes = _load(checkpoint, data_dir, config, teacher_weights, allow_other_data)
    maps, scores = compute_maps(model, data.test_images, config)
    _check_finite(checkpoint, data_dir, "test", maps, scores)
    scores_np = scores.cpu().numpy()
    deployed, fallback, n_labelled = _deployed_thresholds(model, ckpt, checkpoint, data, data_dir, config)
    result = _metrics_and_figures(out_dir, data, maps, scores_np, config)
    for note in result.notes:
        log.warning("%s: %s", data_dir, note)

    checkpoint_id = checkpoint_identity(ckpt)
    provenance = {
        "checkpoint": str(checkpoint),
        "checkpoint_id": checkpoint_id,
        "train_config": ckpt["config"],
        "teacher": ckpt["teacher"],
        "evaluate_config": vars(config),
        "params": params,
        "dataset": {"class": data.class_name, "source_digest": data.meta.get("source_digest"),
                    "image_size": data.image_size, "n_test": int(len(data.test_labels)),
                    "n_anomalous": int(data.test_labels.sum()), "n_val": int(len(data.val_images)),
                    "n_labelled_anomalies": n_labelled, "image_level_only": bool(data.image_level_only)},
        "versions": package_versions(),
        "code": code_provenance(),
        "notes": [*data_notes, *result.notes, *_empty_curve_notes(result)],
    }
    scalars = {k: float(v) for k, v in result.scalars.items()}
    record = thresholds_record(scalars, vars(config), checkpoint_id, ckpt, deployed, fallback=fallback)
    scalars.update(deployed_metrics(scores_np, data.test_labels, record["image_threshold"], maps, data.test_masks,
                                    record["pixel_threshold"]))
    _write_outputs(out_dir, data, scores_np, result, provenance, record, scalars,
                   [companion_path(checkpoint)] if companion else [])
    log.info("%s: %s", data_dir, ", ".join(f"{k}={v:.4f}" for k, v in sorted(scalars.items())))
    return scalars


def _load(checkpoint: str | Path, data_dir: str | Path, config: EvalConfig, teacher_weights: str | Path | None,
          allow_other_data: bool) -> tuple[torch.nn.Module, dict[str, Any], PreparedClass, list[str]]:
    """The checkpoint's model (BatchNorm folded) and the prepared class, checked to belong together."""
    model, ckpt = load_checkpoint(checkpoint, device=config.device, teacher_weights=teacher_weights)
    fold_batchnorm(model)  # inference only: BatchNorm folded into the convolutions
    data = PreparedClass(data_dir)
    size = data.image_size
    if size != int(ckpt["image_size"]):
        raise ValueError(f"{data_dir} was prepared at {size} px but {checkpoint} was trained at "
                         f"{ckpt['image_size']} px; prepare the class at the training size")
    data_notes = _check_same_data(checkpoint, ckpt, data_dir, data, allow_other_data)
    labels = data.test_labels
    log.info("evaluating %s on %s: %d test images (%d anomalous) at %d px, device %s, %d threads", checkpoint,
             data_dir, len(labels), int(labels.sum()), size, next(model.parameters()).device,
             torch.get_num_threads())
    return model, ckpt, data, data_notes


def _deployed_thresholds(model: torch.nn.Module, ckpt: dict[str, Any], checkpoint: str | Path, data: PreparedClass,
                         data_dir: str | Path, config: EvalConfig) -> tuple[Any, str | None, int]:
    """The deployed thresholds, chosen on the validation images (held out by prepare, never trained
    on) and any labelled anomalous images outside the test set, or None; why the test-set F1-max
    stands in when there are none (``fallback``); how many labelled anomalous images there were."""
    val_maps = val_scores = anomaly_scores = None
    other_split = _other_split(checkpoint, ckpt, data_dir, data) if len(data.val_images) else None
    if other_split is not None:
        log.warning("%s: the deployed threshold is the test-set F1-max (optimistic on that set); re-train with "
                    "the current split (skrd4ad train --data %s, or the pipeline's train step) to choose it on "
                    "held-out images", other_split, data_dir)
    elif len(data.val_images):
        val_maps, val_scores = compute_maps(model, data.val_images, config)
        _check_finite(checkpoint, data_dir, "validation", val_maps, val_scores)
        labelled = getattr(data, "labelled_anomalies", None)
        if labelled is not None and len(labelled):
            anomaly_scores = compute_scores(model, labelled, config)
            _check_finite(checkpoint, data_dir, "labelled anomalous", None, anomaly_scores)
    deployed = None if val_scores is None else deployed_thresholds(
        val_scores.cpu().numpy(), config.threshold_fpr,
        val_maps=None if data.test_masks is None else val_maps.cpu().numpy(),  # type: ignore[union-attr]
        anomaly_scores=None if anomaly_scores is None else anomaly_scores.cpu().numpy())
    del val_maps
    if deployed is None and other_split is None:
        log.warning("%s holds %s: the deployed threshold is the test-set F1-max, optimistic on that set; prepare with "
                    "val_fraction > 0 to choose it on held-out images", data_dir, _NO_VALIDATION)
    fallback = other_split or (None if deployed is not None else _NO_VALIDATION)
    return deployed, fallback, 0 if anomaly_scores is None else int(len(anomaly_scores))


def _metrics_and_figures(out_dir: Path, data: PreparedClass, maps: torch.Tensor, scores_np: np.ndarray,
                         config: EvalConfig) -> Any:
    """The metrics of the test set, while worker threads draw the figures (Pillow's PNG encoder and
    NumPy's sorts release the GIL); ``figures/`` is replaced only once both succeed."""
    masks, labels, manifest = data.test_masks, data.test_labels, data.test_manifest  # masks memory-mapped
    defect_types = manifest["defect_type"].astype(str).tolist()
    fig_dir = out_dir / "figures"
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, torch.get_num_threads())), thread_name_prefix="figures")
    with StagingDir(out_dir, fig_dir.name, "figures") as stage:  # a killed run's folder goes at the next start
        try:
            pending = _submit_figures(pool, stage.path, data, maps, scores_np, labels, manifest, config.num_figures)
            result = compute_metrics(scores_np, labels, defect_types, maps if masks is not None else None, masks,
                                     fpr_limit=config.fpr_limit, max_curve_points=config.max_curve_points)
            for future in pending:
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        stage.seal()
        replace_dir(stage.path, fig_dir)
    return result


def _empty_curve_notes(result: Any) -> list[str]:
    """Why a curve file holds its header only (an image-level-only class has no pixel curves)."""
    empty = [CURVE_FILES[key] for key in CURVE_FILES if result.curves.get(key) is None]
    return [f"{' and '.join(empty)} hold the header only: the test set has no masks (image-level only), so "
            "no pixel ROC or PRO curve exists"] if empty else []


def _write_outputs(out_dir: Path, data: PreparedClass, scores_np: np.ndarray, result: Any,
                   provenance: dict[str, Any], record: dict[str, Any], scalars: dict[str, float],
                   companions: list[Path]) -> None:
    """Scores, curves, provenance and thresholds, then ``metrics.json`` last (the step's result)."""
    manifest = data.test_manifest
    _write_csv(out_dir / "scores.csv", pd.DataFrame({
        "file": manifest["file"], "defect_type": manifest["defect_type"].astype(str).tolist(),
        "label": data.test_labels, "score": scores_np}))
    for key, name in CURVE_FILES.items():
        frame = result.curves.get(key)
        _write_csv(out_dir / name, frame if frame is not None else pd.DataFrame(columns=CURVE_COLUMNS[key]))
    write_json_atomic(out_dir / "provenance.json", provenance)
    write_thresholds(record, out_dir / THRESHOLDS_FILE, *companions)
    write_json_atomic(out_dir / "metrics.json", scalars)


def _check_finite(checkpoint: str | Path, data_dir: str | Path, which: str, maps: torch.Tensor | None,
                  scores: torch.Tensor) -> None:
    """Non-finite maps or scores (a diverged checkpoint): ValueError naming the checkpoint."""
    ok = torch.isfinite(scores)
    if maps is not None:
        ok &= torch.isfinite(maps).flatten(1).all(1)
    if not bool(ok.all()):
        raise ValueError(f"{checkpoint} gives non-finite (NaN/inf) anomaly maps or scores on {int((~ok).sum())} of "
                         f"{len(scores)} {which} images of {data_dir}: its weights are probably NaN/inf (a diverged "
                         "training run) or amp overflowed; retrain it, or evaluate with amp none")


def _submit_figures(pool: ThreadPoolExecutor, fig_dir: Path, data: PreparedClass, maps: torch.Tensor,
                    scores: np.ndarray, labels: np.ndarray, manifest: pd.DataFrame, k: int) -> list[Future[None]]:
    """Queue one :func:`save_triptych` per selected image (see :func:`_pick_figures`) on ``pool``,
    all on the colour scale of the whole test set; the maps are copied to the host once."""
    picks = _pick_figures(scores, labels, k)
    if not picks:
        return []
    vmin, vmax = (float(v) for v in torch.aminmax(maps))
    index = torch.as_tensor([i for _, i in picks], device=maps.device)
    chosen = maps.index_select(0, index).float().cpu().numpy()
    pending = []
    for rank, ((kind, i), amap) in enumerate(zip(picks, chosen)):
        mask = None if data.test_masks is None else np.asarray(data.test_masks[i])
        defect = manifest.loc[i, "defect_type"]
        stem = Path(str(manifest.loc[i, "file"])).stem
        pending.append(pool.submit(
            save_triptych, fig_dir / f"{kind}_{rank:02d}_{defect}_{stem}.png", np.asarray(data.test_images[i]),
            mask, amap, title=f"{kind}: {defect}/{stem} score {scores[i]:.4f}", vmin=vmin, vmax=vmax))
    return pending
