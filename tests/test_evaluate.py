"""Evaluation step, prediction on new images and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from skrd4ad.cli import main as cli_main
from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.prepared import PreparedClass
from skrd4ad.data.sources.synthetic.generate import generate
from skrd4ad.evaluate import compute_maps, evaluate
from skrd4ad.predict import predict
from skrd4ad.checkpoint import load_checkpoint
from skrd4ad.train import train
from skrd4ad.viz import save_triptych


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    generate(root / "raw", ["gravel"], seed=1, image_size=80, n_train=6, n_test_good=4, n_test_bad=6)
    prepared = prepare_class(root / "raw", "gravel", root / "prepared", image_size=64, progress=False)
    config = TrainConfig(arch="mobilenet_v2", variant="skrd4ad", teacher_weights=None, epochs=1, batch_size=3,
                         device="cpu", seed=5)
    torch.manual_seed(0)
    train(config, prepared, root / "model.pt", progress=False)
    return {"root": root, "raw": root / "raw", "prepared": prepared, "model": root / "model.pt"}


def test_evaluate_writes_consistent_outputs(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    scalars = evaluate(trained["model"], trained["prepared"], out, EvalConfig(batch_size=4, num_figures=2,
                                                                                max_curve_points=50))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "aupro_seed", "image_f1_max", "pixel_f1_max"):
        assert key in metrics and metrics[key] == scalars[key]
    assert {k for k in metrics if k.startswith("image_auroc_")} == {
        f"image_auroc_{d}" for d in ("scratch", "stain", "hole", "foreign", "smear")}
    assert all(isinstance(v, float) for v in metrics.values())  # numbers only: dvc metrics, no provenance
    assert metrics["image_f1_threshold"] == pytest.approx(scalars["image_f1_threshold"])
    prov = json.loads((out / "provenance.json").read_text())
    ckpt = torch.load(trained["model"], map_location="cpu", weights_only=True)
    assert prov["checkpoint_id"] == ckpt["identity"] and len(prov["checkpoint_id"]) == len("sha256:") + 64
    assert "git" not in prov and len(prov["code"]["source_sha256"]) == 64  # nothing a rerun changes
    assert prov["dataset"]["source_digest"] == PreparedClass(trained["prepared"]).meta["source_digest"]
    assert prov["train_config"]["variant"] == "skrd4ad" and "torch" in prov["versions"]

    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == ["file", "defect_type", "label", "score"] and len(scores) == 10
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(scores["label"], scores["score"]), abs=1e-6)
    for name, cols in (("roc_image.csv", ["fpr", "tpr"]), ("roc_pixel.csv", ["fpr", "tpr"]), ("pro.csv", ["fpr", "pro"])):
        curve = pd.read_csv(out / name)
        assert list(curve.columns) == cols and 2 <= len(curve) <= 50
        assert curve["fpr"].is_monotonic_increasing
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert sum(f.startswith("top_anomalous") for f in figures) == 2
    assert sum(f.startswith("top_good") for f in figures) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_failed_figure_keeps_the_previous_outputs(trained: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eval"
    evaluate(trained["model"], trained["prepared"], out, EvalConfig(num_figures=1))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing(path: Path, *args, **kwargs) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(f"disk full while writing {path}")
        save_triptych(path, *args, **kwargs)

    monkeypatch.setattr("skrd4ad.evaluate.save_triptych", failing)
    with pytest.raises(OSError, match="disk full"):
        evaluate(trained["model"], trained["prepared"], out, EvalConfig(num_figures=2))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # old figures and metrics untouched, nothing half-written
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_batched_maps_equal_one_by_one(trained: dict[str, Path]) -> None:
    model, _ = load_checkpoint(trained["model"])
    images = PreparedClass(trained["prepared"]).test_images
    maps8, scores8 = compute_maps(model, images, EvalConfig(batch_size=8))
    maps1, scores1 = compute_maps(model, images, EvalConfig(batch_size=1))
    torch.testing.assert_close(maps8, maps1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores8, maps8.flatten(1).amax(1))


def test_image_level_only_has_no_pixel_metrics(trained: dict[str, Path], tmp_path: Path) -> None:
    prepared = prepare_class(trained["raw"], "gravel", tmp_path / "prep_img", image_size=64,
                             image_level_only=True, progress=False)
    evaluate(trained["model"], prepared, tmp_path / "eval", EvalConfig(num_figures=1))
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert "image_auroc" in metrics
    assert not {"pixel_auroc", "aupro", "aupro_seed", "pixel_f1_max"} & set(metrics)
    assert pd.read_csv(tmp_path / "eval/pro.csv").empty and pd.read_csv(tmp_path / "eval/roc_pixel.csv").empty
    notes = json.loads((tmp_path / "eval/provenance.json").read_text())["notes"]
    assert any(n.startswith("roc_pixel.csv and pro.csv hold the header only: the test set has no masks") for n in notes)


def test_size_mismatch_is_reported(trained: dict[str, Path], tmp_path: Path) -> None:
    prepared = prepare_class(trained["raw"], "gravel", tmp_path / "prep96", image_size=96, progress=False)
    with pytest.raises(ValueError, match="prepared at 96 px .* trained at 64 px"):
        evaluate(trained["model"], prepared, tmp_path / "eval")


def test_predict_matches_evaluate_scores(trained: dict[str, Path], tmp_path: Path) -> None:
    evaluate(trained["model"], trained["prepared"], tmp_path / "eval", EvalConfig(num_figures=0))
    expected = pd.read_csv(tmp_path / "eval/scores.csv")
    csv_path = predict(trained["model"], [trained["raw"] / "gravel" / "test"], tmp_path / "pred",
                       EvalConfig(batch_size=3))
    got = pd.read_csv(csv_path)
    assert len(got) == len(expected)
    by_name = dict(zip(got["name"], got["score"]))
    for file, score in zip(expected["file"], expected["score"]):
        parts = Path(file).parts  # gravel/test/<defect>/<name>
        assert by_name["__".join(parts[-2:])] == pytest.approx(score, rel=1e-5)
    overlay = Image.open(tmp_path / "pred/overlays" / f"{Path(got['name'][0]).stem}.png")
    # the overlay at the original resolution (80 px, not the model's 64), a title line above it and a
    # colour bar beside it: 8 px margins, 20 px title
    assert overlay.size[1] == 8 + 20 + 80 + 8 and overlay.size[0] > 80 + 8 + 8 + 14


def test_predict_converts_grayscale_and_names_bad_files(trained: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8), mode="L").save(folder / "g.png")
    csv_path = predict(trained["model"], [folder / "g.png"], tmp_path / "out", overlays=False)
    assert len(pd.read_csv(csv_path)) == 1 and not (tmp_path / "out/overlays").exists()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png"):
        predict(trained["model"], [folder], tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predict(trained["model"], [folder / "missing.png"], tmp_path / "out3")


def test_cli_help_evaluate_and_errors(trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in ((["--help"], "fetch-teacher"), (["train", "--help"], "--consistency-weight"),
                           (["predict", "--help"], "--no-overlays")):
        with pytest.raises(SystemExit) as exit_:
            cli_main(argv)
        assert exit_.value.code == 0
        assert expected in capsys.readouterr().out
    assert cli_main(["evaluate", "--checkpoint", str(trained["model"]), "--data", str(trained["prepared"]),
                     "--out", str(tmp_path / "e"), "--num-figures", "0", "--batch-size", "4"]) == 0
    assert "pixel_auroc" in capsys.readouterr().out
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(trained["prepared"]),
                     "--out", str(tmp_path / "e2")]) == 1
    assert "nope.pt does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a fixed set of values: argparse lists them (usage error, 2)
        cli_main(["train", "--data", str(trained["prepared"]), "--out", str(tmp_path / "m.pt"), "--variant", "res3"])
    assert exit_.value.code == 2 and "invalid choice: 'res3' (choose from 'rd4ad', 'skrd4ad'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a range: a usage error naming the option, key and range (2)
        cli_main(["train", "--data", str(trained["prepared"]), "--out", str(tmp_path / "m.pt"), "--epochs", "0"])
    assert exit_.value.code == 2
    assert ("argument --epochs: train.epochs: 0 is less than the minimum of 1 (allowed: at least 1)"
            in capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("skrd4ad ")
