"""Thresholds chosen without the test set: the held-out validation split of prepare, the
deployed-threshold rules, thresholds.json, and predict / export / metrics at that threshold."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.data.prepare import prepare_class, validation_split
from skrd4ad.data.prepared import PreparedClass
from skrd4ad.data.sources.synthetic.generate import generate
from skrd4ad.evaluate import compute_maps, evaluate
from skrd4ad.predict import predict
from skrd4ad.thresholds import (ORACLE_CHOSEN_ON, THRESHOLDS_FORMAT, deployed_thresholds, f1_threshold, find_thresholds,
                                fpr_threshold)
from skrd4ad.train import train

from data_fixtures import make_mvtec_class, random_rgb, save_png


def _u(name: str) -> float:
    """The documented rule, written out here: first 8 bytes of sha256(name), big-endian, / 2**64."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) / 2.0**64


# ------------------------------------------------------------------------------------ the split

def test_split_follows_the_documented_hash_rule() -> None:
    names = [f"train/good/{i:03d}.png" for i in range(200)]
    held = validation_split(names, 0.1)
    assert held.tolist() == [_u(n) < 0.1 for n in names]
    assert 8 <= held.sum() <= 35  # about 20 of 200
    assert not validation_split(names, 0.0).any()


def test_adding_a_file_moves_at_most_that_file() -> None:
    names = [f"train/good/{i:03d}.png" for i in range(60)]
    before = dict(zip(names, validation_split(names, 0.15)))
    assert 0 < sum(before.values()) < len(names)
    rng = np.random.default_rng(0)
    for extra in [f"train/good/{i:03d}.png" for i in range(60, 90)] + ["train/good/zz_new.png"]:
        grown = names + [extra]
        order = rng.permutation(len(grown))  # the listing order does not matter either
        after = dict(zip([grown[i] for i in order], validation_split([grown[i] for i in order], 0.15)))
        assert {n: after[n] for n in names} == before


def test_small_classes_keep_one_image_on_each_side() -> None:
    two = ["train/good/a.png", "train/good/b.png"]
    held = validation_split(two, 0.001)  # no file below 0.001: the smallest hash is held out anyway
    assert held.tolist() == [_u(two[0]) < _u(two[1]), _u(two[1]) < _u(two[0])]
    three = ["train/good/a.png", "train/good/b.png", "train/good/c.png"]
    held = validation_split(three, 0.999)  # every file below: the largest hash stays in train
    keys = [_u(n) for n in three]
    assert held.tolist() == [k != max(keys) for k in keys]
    assert not validation_split(["train/good/a.png"], 0.5).any()  # one image: it is trained on
    with pytest.raises(ValueError, match="val_fraction"):
        validation_split(two, 1.0)


def test_prepare_holds_out_the_split_and_never_trains_on_it(tmp_path: Path) -> None:
    written = make_mvtec_class(tmp_path / "raw", n_train=20, size=(16, 16))
    out = prepare_class(tmp_path / "raw", "widget", tmp_path / "prep", image_size=16, val_fraction=0.2,
                        progress=False)
    data = PreparedClass(out)
    train_files = [f"widget/train/good/{i:03d}.png" for i in range(20)]
    want_val = [f for f in train_files if _u(f.removeprefix("widget/")) < 0.2]
    assert 0 < len(want_val) < 20
    rows = data.manifest
    assert rows.loc[rows["split"] == "val", "file"].tolist() == want_val
    assert rows.loc[rows["split"] == "train", "file"].tolist() == [f for f in train_files if f not in want_val]
    assert data.meta["n_val"] == len(want_val) and data.meta["counts"]["val"] == {"good": len(want_val)}
    assert data.meta["n_train"] == 20 - len(want_val) and data.meta["val_fraction"] == 0.2
    np.testing.assert_array_equal(np.asarray(data.val_images), np.stack([written[f] for f in want_val]))
    np.testing.assert_array_equal(np.asarray(data.train_images),
                                  np.stack([written[f] for f in train_files if f not in want_val]))
    assert list(data.val_manifest["file"]) == want_val

    # one more training image: it is the only file that may change sides
    save_png(tmp_path / "raw" / "widget/train/good/020.png", random_rgb(np.random.default_rng(9), 16, 16))
    again = PreparedClass(prepare_class(tmp_path / "raw", "widget", tmp_path / "prep2", image_size=16,
                                        val_fraction=0.2, progress=False))
    now_val = again.manifest.loc[again.manifest["split"] == "val", "file"].tolist()
    assert [f for f in now_val if f != "widget/train/good/020.png"] == want_val

    # without val_fraction: no val.npy and an empty val set (the cache of earlier versions)
    plain = PreparedClass(prepare_class(tmp_path / "raw", "widget", tmp_path / "plain", image_size=16,
                                        progress=False))
    assert not (plain.path / "val.npy").exists() and plain.val_images.shape == (0, 16, 16, 3)
    assert "n_val" not in plain.meta and len(plain.train_images) == 21


# ------------------------------------------------------------------------------------ the rules

SCORES = [0.1, 0.4, 0.35, 0.8, 0.2, 0.6, 0.9, 0.3, 0.5, 0.7]  # ten normal images, distinct scores


@pytest.mark.parametrize(("fpr", "want"), [
    (0.1, 0.9),   # k = 1: only the top score (0.9) is flagged: 1/10
    (0.2, 0.8),   # k = 2: 0.9 and 0.8
    (0.25, 0.8),  # k = floor(2.5) = 2
    (0.5, 0.5),   # k = 5: 0.9 0.8 0.7 0.6 0.5
])
def test_fpr_rule_on_hand_made_scores(fpr: float, want: float) -> None:
    assert fpr_threshold(SCORES, fpr) == want


def test_fpr_rule_edges_written_by_hand() -> None:
    # k = 0: just above the largest score, in the scores' own precision (float32: 1.5 + 2**-23)
    assert fpr_threshold(np.array([0.5, 1.5], dtype=np.float32), 0.01) == 1.5 + 2.0**-23
    assert fpr_threshold(np.array([0.5, 1.5]), 0.0) == 1.5 + 2.0**-52
    # ties: [1, 2, 2, 5] at k = 2 would flag three (5, 2, 2): the next value up, 5, flags one
    assert fpr_threshold([1.0, 2.0, 2.0, 5.0], 0.5) == 5.0
    # ties at the top: [1, 2, 3, 3, 3] with k = 1 or 2: no score qualifies, just above 3
    assert fpr_threshold([1.0, 2.0, 3.0, 3.0, 3.0], 0.4) == 3.0 + 2.0**-51
    assert fpr_threshold([1.0, 2.0, 3.0, 3.0, 3.0], 0.6) == 3.0  # k = 3: the three 3s
    # 0.29 x 100 is 28.999999999999996 in floating point; k is 29: scores 72..100 are flagged
    assert fpr_threshold(np.arange(1.0, 101.0), 0.29) == 72.0
    with pytest.raises(ValueError, match="threshold_fpr"):
        fpr_threshold(SCORES, 1.0)


def test_f1_rule_with_labelled_anomalies_written_by_hand() -> None:
    # normals 0.1 0.2 0.3 0.4, anomalies 0.35 0.5 0.6; F1 = 2tp / (tp + fp + 3) at each threshold:
    # 0.6: 2/4 = .5; 0.5: 4/5 = .8; 0.4: 4/6; 0.35: 6/7 = .857 (best); 0.3: 6/8; 0.2: 6/9; 0.1: 6/10
    got = deployed_thresholds(np.array([0.1, 0.2, 0.3, 0.4]), 0.25, anomaly_scores=np.array([0.35, 0.5, 0.6]))
    assert got is not None and got["image"] == 0.35 and got["rule"] == "val_f1_max"
    assert got["validation"] == {"n_normal": 4, "n_anomalous": 3, "threshold_fpr": 0.25, "fpr": 0.25, "recall": 1.0,
                                 "anomaly_share": 3 / 7, "constraint": "f1_max"}
    capped = deployed_thresholds(np.array([0.1, 0.2, 0.3, 0.4]), 0.0, anomaly_scores=np.array([0.35, 0.5, 0.6]))
    # no normal may be flagged: thresholds above 0.4; F1 there is 0.8 (tp 2, fp 0), the lowest such t
    assert capped["validation"]["constraint"] == "threshold_fpr" and capped["image"] == 0.5
    assert capped["validation"]["fpr"] == 0.0 and capped["validation"]["recall"] == 2 / 3
    normal_only = deployed_thresholds(np.array([0.1, 0.2, 0.3, 0.4]), 0.25, anomaly_scores=np.zeros(0))
    assert normal_only is not None and normal_only["rule"] == "val_fpr" and normal_only["image"] == 0.4
    assert deployed_thresholds(np.zeros(0), 0.01) is None


# ------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model trained on the train split of a class with a held-out validation split."""
    root = tmp_path_factory.mktemp("val")
    generate(root / "raw", ["gravel"], seed=1, image_size=80, n_train=12, n_test_good=4, n_test_bad=6)
    prepared = prepare_class(root / "raw", "gravel", root / "prepared", image_size=64, val_fraction=0.25,
                             progress=False)
    assert len(PreparedClass(prepared).val_images) >= 2
    config = TrainConfig(arch="mobilenet_v2", variant="rd4ad", teacher_weights=None, epochs=1, batch_size=4,
                         device="cpu", seed=5)
    torch.manual_seed(0)
    train(config, prepared, root / "model.pt", progress=False)
    evaluate(root / "model.pt", prepared, root / "eval", EvalConfig(num_figures=0, device="cpu"), companion=True)
    return {"root": root, "prepared": prepared, "model": root / "model.pt", "eval": root / "eval",
            "test": root / "raw" / "gravel" / "test"}


def _eager(run: dict[str, Path], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skrd4ad.checkpoint import load_checkpoint
    from skrd4ad.models.fold import fold_batchnorm

    model, _ = load_checkpoint(run["model"], device="cpu")
    fold_batchnorm(model)
    maps, scores = compute_maps(model, images, EvalConfig(device="cpu"))
    return maps.numpy(), scores.numpy()


def test_thresholds_json_holds_the_validation_threshold_and_the_labelled_oracle(run: dict[str, Path]) -> None:
    record = json.loads((run["eval"] / "thresholds.json").read_text())
    metrics = json.loads((run["eval"] / "metrics.json").read_text())
    data = PreparedClass(run["prepared"])
    val_maps, val_scores = _eager(run, np.asarray(data.val_images))
    assert record["format"] == THRESHOLDS_FORMAT and record["rule"] == "val_fpr"
    # threshold_fpr 0.01 with a handful of validation images: k = 0, just above the largest score
    top = np.float32(val_scores.max())
    assert record["image_threshold"] == float(np.nextafter(top, np.float32(np.inf)))
    # pixels: n = V x 64 x 64 values, k = floor(0.01 n) of them may be flagged: the k-th largest value
    ranked = np.sort(val_maps.ravel())[::-1]
    k = ranked.size // 100
    assert ranked[k - 1] > ranked[k]  # no tie at the cut (else the rule steps up)
    assert record["pixel_threshold"] == float(ranked[k - 1])
    assert record["validation"] == {"n_normal": len(val_scores), "n_anomalous": 0, "threshold_fpr": 0.01, "fpr": 0.0}
    assert "validation set" in record["chosen_on"] and "test" not in record["chosen_on"]
    assert "fallback" not in record  # the file of a run on its own split keeps its earlier keys
    assert record["oracle"] == {"image_threshold": metrics["image_f1_threshold"],
                                "pixel_threshold": metrics["pixel_f1_threshold"], "chosen_on": ORACLE_CHOSEN_ON}
    assert "oracle" in record["oracle"]["chosen_on"] and "never used" in record["oracle"]["chosen_on"]


def test_metrics_at_the_deployed_threshold(run: dict[str, Path]) -> None:
    record = json.loads((run["eval"] / "thresholds.json").read_text())
    metrics = json.loads((run["eval"] / "metrics.json").read_text())
    scores = pd.read_csv(run["eval"] / "scores.csv")
    t = record["image_threshold"]
    flagged = scores["score"].to_numpy() >= float(f"{t:.8g}")  # scores.csv: 8 significant digits
    bad = scores["label"].to_numpy() == 1
    tp, fp = int((flagged & bad).sum()), int((flagged & ~bad).sum())
    assert metrics["image_recall"] == pytest.approx(tp / bad.sum())
    assert metrics["image_precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert metrics["image_f1"] == pytest.approx(2 * tp / (tp + fp + bad.sum()))
    assert metrics["image_fpr"] == pytest.approx(fp / (~bad).sum())
    data = PreparedClass(run["prepared"])
    maps, _ = _eager(run, np.asarray(data.test_images))
    truth = np.asarray(data.test_masks) > 0
    hit = maps >= record["pixel_threshold"]
    ptp, pfp = int((hit & truth).sum()), int((hit & ~truth).sum())
    assert metrics["pixel_recall"] == pytest.approx(ptp / truth.sum())
    assert metrics["pixel_fpr"] == pytest.approx(pfp / (~truth).sum())
    assert metrics["pixel_f1"] == pytest.approx(2 * ptp / (ptp + pfp + truth.sum()))
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_predict_and_export_use_the_deployed_threshold(run: dict[str, Path], tmp_path: Path) -> None:
    record = json.loads((run["eval"] / "thresholds.json").read_text())
    assert record["image_threshold"] != record["oracle"]["image_threshold"]
    found = find_thresholds(run["model"])
    assert found is not None and (found.image, found.pixel) == (record["image_threshold"], record["pixel_threshold"])
    predict(run["model"], [run["test"]], tmp_path / "pred", overlays=False)
    got = pd.read_csv(tmp_path / "pred" / "scores.csv")
    assert np.allclose(got["threshold"], record["image_threshold"], rtol=1e-7, atol=0)
    pytest.importorskip("onnxruntime")
    from skrd4ad.export import export_onnx

    out = export_onnx(run["model"], tmp_path / "deploy" / "gravel.onnx")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["thresholds"]["image"], meta["thresholds"]["pixel"]) == (record["image_threshold"],
                                                                           record["pixel_threshold"])
    assert meta["thresholds"]["chosen_on"] == record["chosen_on"]


def test_labelled_anomalies_outside_the_test_set_switch_to_the_f1_rule(run: dict[str, Path], tmp_path: Path) -> None:
    base = PreparedClass(run["prepared"])
    # stand-ins for labelled anomalous training images (VAD's train/bad), written as prepare writes
    # them: the test set's anomalous ones
    extra = np.array(base.test_images)[base.test_labels == 1]
    prepared = tmp_path / "prepared"
    shutil.copytree(run["prepared"], prepared)
    np.save(prepared / "labelled_anomalies.npy", extra)
    meta = json.loads((prepared / "meta.json").read_text())
    (prepared / "meta.json").write_text(json.dumps({**meta, "n_labelled_anomalies": len(extra)}))
    assert PreparedClass(prepared).labelled_anomalies.shape == extra.shape
    evaluate(run["model"], prepared, tmp_path / "eval", EvalConfig(num_figures=0, device="cpu"))
    record = json.loads((tmp_path / "eval" / "thresholds.json").read_text())
    _, val_scores = _eager(run, np.asarray(base.val_images))
    _, anomaly_scores = _eager(run, extra)
    s = np.r_[val_scores, anomaly_scores].astype(np.float64)
    y = np.r_[np.zeros(len(val_scores)), np.ones(len(anomaly_scores))].astype(bool)
    # brute force: F1 at every threshold whose validation FPR is within evaluate.threshold_fpr (0.01
    # by default: with a handful of validation normals, none may be flagged), the highest on ties
    cap = EvalConfig().threshold_fpr
    above = float(np.nextafter(val_scores.max(), np.float32(np.inf)))  # just above every normal
    cands = {float(t) for t in s if (val_scores >= t).mean() <= cap} | {above}
    f1 = {t: 2 * (y & (s >= t)).sum() / ((s >= t).sum() + y.sum()) for t in cands}
    best = max(f1.values())
    assert record["rule"] == "val_f1_max" and record["validation"]["fpr"] <= cap
    assert record["image_threshold"] == pytest.approx(max(t for t, v in f1.items() if v == best), rel=1e-6)
    assert record["validation"]["n_anomalous"] == len(extra)
    # the F1 above holds at this set's anomaly share (A / (V + A)), recorded beside it
    assert record["validation"]["anomaly_share"] == len(extra) / (len(val_scores) + len(extra))


def test_without_a_validation_set_the_test_threshold_ships_labelled_so(run: dict[str, Path], tmp_path: Path) -> None:
    plain = prepare_class(run["root"] / "raw", "gravel", tmp_path / "plain", image_size=64, progress=False)
    shutil.copy(run["model"], tmp_path / "model.pt")
    evaluate(tmp_path / "model.pt", plain, tmp_path / "eval", EvalConfig(num_figures=0, device="cpu"),
             allow_other_data=True)
    record = json.loads((tmp_path / "eval" / "thresholds.json").read_text())
    assert record["rule"] == "test_f1_max" and record["validation"] is None
    assert record["image_threshold"] == record["oracle"]["image_threshold"]
    assert "test set" in record["chosen_on"] and "optimistic" in record["chosen_on"]
    assert record["fallback"].startswith("no validation images")


# ------------------------------------------------------------------- the checkpoint's train split

def _train_rows(prepared: Path) -> list[str]:
    """The train split as written in manifest.csv: files of the ok train rows in index order."""
    import csv

    with open(prepared / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train" and r["status"] == "ok"]
    return [r["file"] for r in sorted(rows, key=lambda r: int(r["index"]))]


def test_the_checkpoint_records_its_train_split_outside_its_identity(run: dict[str, Path]) -> None:
    from skrd4ad.checkpoint import IDENTITY_KEY, model_identity, read_checkpoint

    ckpt = read_checkpoint(run["model"])
    files = _train_rows(run["prepared"])
    assert 0 < len(files) < 12 and not any(f in files for f in PreparedClass(run["prepared"]).val_manifest["file"])
    assert ckpt["data"]["train_files"] == hashlib.sha256("\n".join(files).encode()).hexdigest()
    # the model's identity (checkpoint_id) does not hash the data record: unchanged without it
    older = {**ckpt, "data": {k: v for k, v in ckpt["data"].items() if k != "train_files"}}
    assert model_identity(older) == model_identity(ckpt) == ckpt[IDENTITY_KEY]


def _evaluate_with_log(model: Path, prepared: Path, out: Path, caplog: pytest.LogCaptureFixture) -> dict:
    caplog.clear()
    with caplog.at_level("WARNING", logger="skrd4ad.evaluate"):
        evaluate(model, prepared, out, EvalConfig(num_figures=0, device="cpu"))
    return json.loads((out / "thresholds.json").read_text())


def test_a_checkpoint_of_another_split_is_not_thresholded_on_its_training_images(
        run: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Trained with val_fraction 0 (every normal image trained on), evaluated on the cache that
    holds some of those images out: they are training images of this model, so the test-set
    oracle ships, labelled so, with one warning that says why and what to do."""
    whole = prepare_class(run["root"] / "raw", "gravel", tmp_path / "whole", image_size=64, progress=False)
    assert len(PreparedClass(whole).val_images) == 0
    config = TrainConfig(arch="mobilenet_v2", variant="rd4ad", teacher_weights=None, epochs=1, batch_size=4,
                         device="cpu", seed=5)
    train(config, whole, tmp_path / "whole.pt", progress=False)
    record = _evaluate_with_log(tmp_path / "whole.pt", run["prepared"], tmp_path / "eval", caplog)
    assert record["rule"] == "test_f1_max" and record["validation"] is None
    assert record["image_threshold"] == record["oracle"]["image_threshold"]
    assert "another train split" in record["fallback"] and "optimistic" in record["chosen_on"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "another train split" in warnings[0]
    assert "re-train with the current split" in warnings[0]


def test_a_checkpoint_without_a_recorded_split_falls_back_to_the_oracle(
        run: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An older checkpoint (no data.train_files): its split is unknown, so is the validation set's."""
    ckpt = torch.load(run["model"], map_location="cpu", weights_only=True)
    del ckpt["data"]["train_files"]
    torch.save(ckpt, tmp_path / "older.pt")
    record = _evaluate_with_log(tmp_path / "older.pt", run["prepared"], tmp_path / "eval", caplog)
    assert record["rule"] == "test_f1_max" and "records no train split" in record["fallback"]
    assert record["image_threshold"] == record["oracle"]["image_threshold"]
    assert record["checkpoint_id"] == json.loads((run["eval"] / "thresholds.json").read_text())["checkpoint_id"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "records no train split" in warnings[0]


# ------------------------------------------------------------------------------------- CLI

def test_cli_settings_come_from_the_schema(tmp_path: Path) -> None:
    from skrd4ad.cli import build_parser, main as cli_main
    from skrd4ad.schema import defaults as schema_defaults

    parser = build_parser()
    args = parser.parse_args(["prepare", "--root", "r", "--classes", "c", "--out", "o"])
    assert args.val_fraction == schema_defaults("prepare")["val_fraction"] == 0.1
    args = parser.parse_args(["evaluate", "--checkpoint", "m.pt", "--data", "d", "--out", "o", "--threshold-fpr", "0.05"])
    assert args.threshold_fpr == 0.05 and EvalConfig().threshold_fpr == 0.01
    with pytest.raises(SystemExit):  # predict and export use the thresholds file; the rule is evaluate's
        parser.parse_args(["predict", "--checkpoint", "m.pt", "--out", "o", "--threshold-fpr", "0.05", "x.png"])
    make_mvtec_class(tmp_path / "raw", n_train=12, size=(16, 16))
    assert cli_main(["prepare", "--root", str(tmp_path / "raw"), "--classes", "widget", "--out",
                     str(tmp_path / "prep"), "--image-size", "32", "--val-fraction", "0.3"]) == 0
    data = PreparedClass(tmp_path / "prep")
    names = [f"train/good/{i:03d}.png" for i in range(12)]
    assert len(data.val_images) == sum(_u(n) < 0.3 for n in names) and data.meta["val_fraction"] == 0.3
    assert "--val-fraction 0.3" in data.rerun_command()


def test_labelled_anomalies_never_ship_a_threshold_above_the_fpr_cap(caplog: pytest.LogCaptureFixture) -> None:
    """An undertrained model: the anomalies score no higher than the normals, so the plain F1-max
    flags every image (validation FPR 1.0).  The deployed threshold is the F1-max among those with
    validation FPR <= threshold_fpr, with a warning, and thresholds.json says the cap chose it."""
    normal = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    anomalous = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.95])
    plain = f1_threshold(np.r_[normal, anomalous], np.r_[np.zeros(10), np.ones(10)])
    assert (normal >= plain).mean() == 1.0  # what shipped before
    with caplog.at_level("WARNING"):
        got = deployed_thresholds(normal, 0.1, anomaly_scores=anomalous)
    assert got["validation"]["fpr"] <= 0.1 and got["validation"]["constraint"] == "threshold_fpr"
    # one normal of ten may be flagged: t in (0.9, 1.0]; F1 at 0.95: tp 1, fp 1, fn 9 -> 2/12; at 1.0: 0
    assert got["image"] == 0.95 and got["validation"]["recall"] == 0.1
    assert "evaluate.threshold_fpr" in caplog.text
    good = deployed_thresholds(normal, 0.1, anomaly_scores=np.array([1.5, 2.0]))
    assert good["validation"]["constraint"] == "f1_max" and good["image"] == 1.5
