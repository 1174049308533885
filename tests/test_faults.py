"""Faults that used to give silent wrong results (issue 12, item 5): each is now an error or a note."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import make_mvtec_class, save_png

from skrd4ad.checkpoint import IDENTITY_KEY, model_identity

from skrd4ad.cli import main as cli_main
from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.data.layout import DatasetError
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.prepared import PreparedClass
from skrd4ad.data.sources.synthetic.generate import generate
from skrd4ad.evaluate import evaluate
from skrd4ad.metrics import AuproSeedUndefinedError, aupro_seed, compute_metrics
from skrd4ad.models.build import build_model
from skrd4ad.models.rd4ad import check_image_size
from skrd4ad.models.reference import load_reference_state_dict
from skrd4ad.predict import predict
from skrd4ad.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-epoch mobilenet_v2 checkpoint on synthetic 'gravel' (64 px) and a prepared 'brick'."""
    root = tmp_path_factory.mktemp("faults")
    generate(root / "raw", ["gravel", "brick"], seed=1, image_size=64, n_train=4, n_test_good=2, n_test_bad=3)
    prepared = prepare_class(root / "raw", "gravel", root / "gravel", image_size=64, progress=False)
    brick = prepare_class(root / "raw", "brick", root / "brick", image_size=64, progress=False)
    config = TrainConfig(arch="mobilenet_v2", variant="skrd4ad", teacher_weights=None, epochs=1, batch_size=4,
                         device="cpu", seed=3)
    torch.manual_seed(0)
    train(config, prepared, root / "model.pt", progress=False)
    return {"root": root, "raw": root / "raw", "prepared": prepared, "brick": brick, "model": root / "model.pt"}


# 1 ------------------------------------------------------------------------ empty masks


def test_empty_mask_of_anomalous_image_is_an_error_unless_allowed(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    make_mvtec_class(tmp_path, size=(20, 24))
    save_png(tmp_path / "widget/ground_truth/crack/001_mask.png", np.zeros((20, 24), np.uint8))
    with pytest.raises(DatasetError, match=r"mask .*crack/001_mask.png of anomalous test image .*crack/001.png "
                                           r"is all zero.*pass --allow-empty-masks \(params: prepare.allow_empty_masks: true\) to keep it"):
        prepare_class(tmp_path, "widget", tmp_path / "out", image_size=8, progress=False)
    assert not (tmp_path / "out").exists()
    assert cli_main(["prepare", "--root", str(tmp_path), "--classes", "widget", "--out", str(tmp_path / "cli"),
                     "--image-size", "32"]) == 1
    assert "--allow-empty-masks" in capsys.readouterr().err

    data = PreparedClass(prepare_class(tmp_path, "widget", tmp_path / "out", image_size=8, progress=False,
                                       allow_empty_masks=True))
    assert data.meta["allow_empty_masks"] is True
    assert data.meta["empty_masks"] == ["widget/ground_truth/crack/001_mask.png"]
    row = data.test_manifest[data.test_manifest["file"] == "widget/test/crack/001.png"].iloc[0]
    assert row["status"] == "ok" and "allow_empty_masks" in row["reason"] and not data.test_masks[row["index"]].any()
    assert cli_main(["prepare", "--root", str(tmp_path), "--classes", "widget", "--out", str(tmp_path / "cli"),
                     "--image-size", "32", "--allow-empty-masks"]) == 0
    assert json.loads((tmp_path / "cli/meta.json").read_text())["allow_empty_masks"] is True
    default = PreparedClass(prepare_class(tmp_path, "widget", tmp_path / "ok", image_size=8, progress=False,
                                          image_level_only=True))
    assert "allow_empty_masks" not in default.meta  # default caches keep their former meta.json


def test_pipeline_param_allow_empty_masks_reaches_prepare(tmp_path: Path) -> None:
    """prepare.allow_empty_masks in params.yaml is what the prepare stage (both engines) passes on."""
    import importlib.util

    from skrd4ad.params import validate_params

    make_mvtec_class(tmp_path, size=(20, 24))
    save_png(tmp_path / "widget/ground_truth/crack/001_mask.png", np.zeros((20, 24), np.uint8))
    spec = importlib.util.spec_from_file_location(
        "prepare_stage", Path(__file__).resolve().parents[1] / "workflow/scripts/prepare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    params = validate_params({"data": {"classes": ["widget"]}, "prepare": {"image_size": 32}})
    assert params["prepare"]["allow_empty_masks"] is False
    with pytest.raises(DatasetError, match="is all zero"):
        stage.run(params, tmp_path, "widget", tmp_path / "out")
    params["prepare"]["allow_empty_masks"] = True
    stage.run(params, tmp_path, "widget", tmp_path / "out")
    assert json.loads((tmp_path / "out/meta.json").read_text())["allow_empty_masks"] is True


# 2 ------------------------------------------------------------------------ NaN checkpoint


def test_nan_checkpoint_is_an_error_in_predict_and_evaluate(trained: dict[str, Path], tmp_path: Path) -> None:
    ckpt = torch.load(trained["model"], map_location="cpu", weights_only=True)
    ckpt["student"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                       for k, v in ckpt["student"].items()}
    ckpt[IDENTITY_KEY] = model_identity(ckpt)  # as a diverged training writes it (an edited file is refused)
    bad = tmp_path / "nan_model.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match=r"nan_model.pt gives non-finite \(NaN/inf\) anomaly maps or scores on 5 "
                                         r"of 5 images .*retrain"):
        predict(bad, [trained["raw"] / "gravel/test"], tmp_path / "pred", overlays=False)
    assert not (tmp_path / "pred/scores.csv").exists()
    with pytest.raises(ValueError, match=r"nan_model.pt gives non-finite .* on 5 of 5 test images"):
        evaluate(bad, trained["prepared"], tmp_path / "eval", EvalConfig(num_figures=0))
    assert not (tmp_path / "eval/metrics.json").exists()


# 3 ------------------------------------------------------------------------ other class / data


def test_evaluate_refuses_other_data_unless_allowed(trained: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"model.pt was trained on class 'gravel' \(source digest [0-9a-f]{12}\) "
                                         r"but .*brick holds class 'brick'.*allow_other_data=True"):
        evaluate(trained["model"], trained["brick"], tmp_path / "e1", EvalConfig(num_figures=0))
    generate(tmp_path / "raw2", ["gravel"], seed=2, image_size=64, n_train=4, n_test_good=2, n_test_bad=3)
    other = prepare_class(tmp_path / "raw2", "gravel", tmp_path / "gravel2", image_size=64, progress=False)
    with pytest.raises(ValueError, match=r"class 'gravel' \(source digest .* holds class 'gravel' \(source digest"):
        evaluate(trained["model"], other, tmp_path / "e2", EvalConfig(num_figures=0))
    assert cli_main(["evaluate", "--checkpoint", str(trained["model"]), "--data", str(trained["brick"]),
                     "--out", str(tmp_path / "e3"), "--num-figures", "0"]) == 1
    assert "--allow-other-data" in capsys.readouterr().err

    evaluate(trained["model"], trained["brick"], tmp_path / "e4", EvalConfig(num_figures=0), allow_other_data=True)
    notes = json.loads((tmp_path / "e4/provenance.json").read_text())["notes"]
    assert any(n.startswith("other data:") and "'brick'" in n for n in notes)
    assert cli_main(["evaluate", "--checkpoint", str(trained["model"]), "--data", str(trained["brick"]),
                     "--out", str(tmp_path / "e5"), "--num-figures", "0", "--allow-other-data"]) == 0
    evaluate(trained["model"], trained["prepared"], tmp_path / "e6", EvalConfig(num_figures=0))  # own data: fine
    own_notes = json.loads((tmp_path / "e6/provenance.json").read_text())["notes"]
    assert not any(n.startswith("other data") for n in own_notes)
    # an image-level-only cache of the training class: its digest leaves out the masks, so only a note
    image_level = prepare_class(trained["raw"], "gravel", tmp_path / "gravel_img", image_size=64,
                                image_level_only=True, progress=False)
    evaluate(trained["model"], image_level, tmp_path / "e7", EvalConfig(num_figures=0))
    notes = json.loads((tmp_path / "e7/provenance.json").read_text())["notes"]
    assert any(n.startswith("other data:") and "holds class 'gravel'" in n for n in notes)


# 4 ------------------------------------------------------------------------ bare reference decoder


def test_bare_reference_decoder_warns_that_the_bottleneck_stays_random(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", "rd4ad", teacher_weights=None)
    path = tmp_path / "seed_seg1.pth"
    torch.save(dict(model.student.decoder.state_dict()), path)
    with pytest.warns(UserWarning, match=r"reference checkpoint .*seed_seg1.pth holds no 'bn' \(bottleneck\) "
                                         r"weights.*random"):
        load_reference_state_dict(model, path)
    full = {"bn": dict(model.student.bottleneck.state_dict()), "decoder": dict(model.student.decoder.state_dict())}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_reference_state_dict(model, full) == []


# 5 ------------------------------------------------------------------------ infinite map values


def test_aupro_seed_with_an_infinite_map_value_is_a_note() -> None:
    maps = np.zeros((2, 8, 8), np.float32)
    maps[1, 0, 0] = np.inf
    maps[1, 3, 3] = 1
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:5, 2:5] = True
    with pytest.raises(AuproSeedUndefinedError, match=r"image 1: its map spans \[0.0, inf\].*make the map finite"):
        aupro_seed(maps, masks)
    with pytest.warns(RuntimeWarning, match="aupro_seed omitted"):
        result = compute_metrics(np.array([0.0, 1.0]), np.array([0, 1]), None, maps, masks)
    assert "aupro_seed" not in result.scalars and "pixel_auroc" in result.scalars
    assert any("image 1" in n and "inf" in n for n in result.notes)


# 6 ------------------------------------------------------------------------ image size


def test_image_size_must_be_a_multiple_of_32(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_mvtec_class(tmp_path, size=(40, 40))
    with pytest.raises(SystemExit) as exit_info:  # read against the schema's bounds while parsing: usage error
        cli_main(["prepare", "--root", str(tmp_path), "--classes", "widget", "--out", str(tmp_path / "out"),
                  "--image-size", "33"])
    assert exit_info.value.code == 2
    assert "--image-size: prepare.image_size: 33 is not a multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"image_size=100 must be a positive multiple of 32 .*use 96 or 128"):
        check_image_size(100)
    with pytest.raises(ValueError, match=r"image_size=16 .*use 32$"):
        check_image_size(16)
    assert check_image_size(64) == 64
    model = build_model("mobilenet_v2", "rd4ad", teacher_weights=None).eval()
    with pytest.raises(ValueError, match=r"input of 64x33 px: side=33 must be a positive multiple of 32.*32 or 64"):
        model(torch.zeros(1, 3, 64, 33))
