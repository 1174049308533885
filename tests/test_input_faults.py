"""Inputs that used to give a cryptic or silent result (issue 21, items 4, 6, 8-11): each is now one
line naming the file or key and what to do, or a warning naming the file."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_mvtec_class, save_png

from skrd4ad.cli import main
from skrd4ad.data.layout import DatasetError
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.prepared import PreparedClass
from skrd4ad.data.sources.synthetic.generate import generate

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--arch", "mobilenet_v2", "--teacher-weights", "none", "--batch-size", "4", "--device", "cpu",
         "--seed", "5", "--epochs", "1"]


@pytest.fixture
def data(cli_brick: dict[str, Path]) -> dict[str, Path]:
    return cli_brick


def last_error(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# 6 ------------------------------------------------------------------------ truncated prepared arrays


@pytest.mark.parametrize("name", ["train.npy", "test.npy", "test_masks.npy"])
def test_truncated_prepared_array_names_the_file_sizes_and_the_command(data: dict[str, Path], tmp_path: Path,
                                                                        name: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "brick"
    shutil.copytree(data["prepared"], cache)
    full = (cache / name).stat().st_size
    with open(cache / name, "r+b") as fh:
        fh.truncate(full - 1000)
    with pytest.raises(DatasetError) as err:
        PreparedClass(cache)
    raw = data["raw"].resolve()
    assert str(err.value) == (
        f"{cache / name} is truncated ({full - 1000} of {full} bytes); re-run prepare for brick: "
        f"skrd4ad prepare --root {raw} --classes brick --out {cache} --image-size 64 --val-fraction 0 (or the pipeline's prepare step)")
    assert main(["evaluate", "--checkpoint", str(data["model"]), "--data", str(cache), "--out",
                 str(tmp_path / "eval"), "--no-companion"]) == 1
    assert last_error(capsys) == f"skrd4ad evaluate: error: {err.value}"


def test_prepared_array_with_a_damaged_header_names_the_file(data: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "brick"
    shutil.copytree(data["prepared"], cache)
    (cache / "test.npy").write_bytes(b"\x93NUMPY\x01")
    with pytest.raises(DatasetError, match=rf"^{cache / 'test.npy'} is not a readable \.npy file .*re-run prepare "
                                           r"for brick: skrd4ad prepare "):
        PreparedClass(cache)


# 9 ------------------------------------------------------------------------ not a torch file


@pytest.mark.parametrize("command", ["export", "evaluate", "predict"])
def test_teacher_weights_that_are_an_image_say_so_without_torch_advice(data: dict[str, Path], tmp_path: Path,
                                                                      command: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    png = data["image"]
    out = {"export": tmp_path / "m.onnx", "evaluate": tmp_path / "eval", "predict": tmp_path / "pred"}[command]
    extra = {"export": [], "evaluate": ["--data", str(data["prepared"]), "--no-companion"],
             "predict": [str(png)]}[command]
    argv = [command, "--checkpoint", str(data["model"]), "--out", str(out), "--teacher-weights", str(png), *extra]
    assert main(argv) == 1
    line = last_error(capsys)
    assert line == (f"skrd4ad {command}: error: {png} is not a PyTorch weights file (it is a PNG image); pass the "
                    ".pth file written by `skrd4ad fetch-teacher --out FILE`, "
                    "or leave --teacher-weights out to use the teacher recorded in the checkpoint"), line
    assert "weights_only" not in line and not out.exists()


def test_train_teacher_weights_that_are_yaml_say_so(data: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(data["prepared"]), "--out", str(tmp_path / "m.pt"), *TRAIN,
            "--teacher-weights", str(REPO / "params.yaml")]
    assert main(argv) == 1
    line = last_error(capsys)
    assert line == (f"skrd4ad train: error: {REPO / 'params.yaml'} is not a PyTorch weights file (it is a text file); "
                    "pass the .pth file written by `skrd4ad fetch-teacher --out FILE`, or one of imagenet, pypi, none")


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_checkpoint_that_is_an_image_says_so_without_torch_advice(data: dict[str, Path], tmp_path: Path,
                                                                 command: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    png = data["image"]
    extra = {"export": [], "evaluate": ["--data", str(data["prepared"])], "predict": [str(png)]}[command]
    assert main([command, "--checkpoint", str(png), "--out", str(tmp_path / "o"), *extra]) == 1
    line = last_error(capsys)
    assert line == (f"skrd4ad {command}: error: {png} is not a skrd4ad checkpoint (it is a PNG image); pass the .pt "
                    "file written by skrd4ad train (its --out)"), line


# 8, 11 ------------------------------------------------------------------------ params files


def params_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "params.yaml").read_text()
    assert text.count(old) == 1, old
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_yaml_syntax_error_in_an_overlay_names_the_file_and_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    overlay = tmp_path / "a.yaml"
    overlay.write_text("train:\n  epochs: 3\n  lr: [0.1\n")
    base = tmp_path / "params.yaml"
    base.write_text((REPO / "params.yaml").read_text())
    assert main(["params", "--base", str(base), str(overlay)]) == 1
    line = last_error(capsys)
    assert line.startswith(f"skrd4ad params: error: {overlay}, line 4, column 1: invalid YAML ("), line
    assert line.endswith("; fix the syntax there") and "unicode string" not in line
    assert base.read_text() == (REPO / "params.yaml").read_text()


def test_yaml_syntax_error_in_params_yaml_names_it_in_the_cli_and_the_dvc_stage(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    text = (REPO / "params.yaml").read_text().splitlines(keepends=True)
    n = next(i for i, line in enumerate(text) if line.startswith("train:"))
    text.insert(n + 1, "    : oops: [\n")
    bad = tmp_path / "params.yaml"
    bad.write_text("".join(text))
    assert main(["params", "--check", "--base", str(bad)]) == 1
    assert last_error(capsys).startswith(f"skrd4ad params: error: {bad}, line {n + 2}, column ")
    proc = subprocess.run([sys.executable, str(REPO / "workflow/scripts/validate_params.py"), "--params", str(bad),
                           "--out", str(tmp_path / "ok")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert f"ERROR skrd4ad.stage.validate_params: {bad}, line {n + 2}, column " in last, proc.stderr
    assert not (tmp_path / "ok").exists()


def test_params_check_names_the_bad_key_and_writes_nothing(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = params_with(tmp_path, "\n  epochs: ", "\n  epochs: ten #")
    before = bad.read_bytes()
    assert main(["params", "--check", "--base", str(bad)]) == 1
    assert last_error(capsys) == (f"skrd4ad params: error: {bad}: invalid params: train.epochs: 'ten' is not of "
                                  "type 'integer'")
    assert bad.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    good = tmp_path / "good.yaml"
    good.write_text((REPO / "params.yaml").read_text())
    overlay = tmp_path / "o.yaml"
    overlay.write_text("train:\n  epochs: -1\n")
    assert main(["params", "--check", "--base", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: valid"
    assert main(["params", "--check", "--base", str(good), str(overlay)]) == 1
    assert last_error(capsys).startswith(f"skrd4ad params: error: {good} + {overlay}: invalid params: train.epochs")


# 10 ------------------------------------------------------------------------ opt-outs named as the user types them


def test_prepare_opt_outs_name_the_cli_flag_and_the_params_key(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    make_mvtec_class(tmp_path / "empty", size=(20, 24))
    save_png(tmp_path / "empty/widget/ground_truth/crack/001_mask.png", np.zeros((20, 24), np.uint8))
    assert main(["prepare", "--root", str(tmp_path / "empty"), "--classes", "widget", "--out", str(tmp_path / "o1"),
                 "--image-size", "32"]) == 1
    assert last_error(capsys).endswith("or pass --allow-empty-masks (params: prepare.allow_empty_masks: true) "
                                       "to keep it")

    make_mvtec_class(tmp_path / "broken", size=(20, 24))
    broken = next((tmp_path / "broken/widget/train/good").iterdir())
    broken.write_bytes(b"not an image")
    assert main(["prepare", "--root", str(tmp_path / "broken"), "--classes", "widget", "--out", str(tmp_path / "o2"),
                 "--image-size", "32"]) == 1
    assert last_error(capsys).endswith("or pass --allow-skip to skrd4ad prepare (Python: allow_skip=True; the "
                                       "pipeline never skips) to skip it (it is then listed in manifest.csv as "
                                       "skipped)")

    make_mvtec_class(tmp_path / "nomask", size=(20, 24))
    (tmp_path / "nomask/widget/ground_truth/crack/001_mask.png").unlink()
    assert main(["prepare", "--root", str(tmp_path / "nomask"), "--classes", "widget", "--out", str(tmp_path / "o3"),
                 "--image-size", "32"]) == 1
    assert last_error(capsys).endswith("treat the class as image-level only (pass --image-level-only; params: "
                                       "data.image_level_only: true)")


def test_evaluate_on_other_data_names_the_cli_flag_first(data: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    other = generate(tmp_path / "raw", ["gravel"], seed=2, image_size=64, n_train=2, n_test_good=1, n_test_bad=1)
    prepared = prepare_class(other, "gravel", tmp_path / "gravel", image_size=64, progress=False)
    assert main(["evaluate", "--checkpoint", str(data["model"]), "--data", str(prepared), "--out",
                 str(tmp_path / "e"), "--no-companion"]) == 1
    assert last_error(capsys).endswith("or pass --allow-other-data (Python: allow_other_data=True) to evaluate "
                                       "anyway")


# 4 ------------------------------------------------------------------------ masks that mix scales


def test_mask_with_a_stray_255_keeps_every_defect_pixel_and_warns_naming_it(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture
                                                                           ) -> None:
    make_mvtec_class(tmp_path, size=(32, 32))
    mixed = np.zeros((32, 32), np.uint8)
    mixed[10:13, 10:14] = 1  # 12 defect pixels on the 0/1 scale...
    mixed[11, 12] = 255  # ...one of them written as 255
    plain = np.zeros((32, 32), np.uint8)
    plain[2:5, 3:8] = 255  # 15 pixels, 0/255: no warning
    gt = tmp_path / "widget/ground_truth/crack"
    masks = sorted(gt.iterdir())
    save_png(masks[0], mixed)
    save_png(masks[1], plain)
    with caplog.at_level(logging.WARNING, logger="skrd4ad.data.prepare"):
        data = PreparedClass(prepare_class(tmp_path, "widget", tmp_path / "out", image_size=32, progress=False))
    rows = dict(zip(data.test_manifest["file"], data.test_manifest["index"]))
    row = {m: rows["widget/test/crack/" + m.name.replace("_mask", "")] for m in masks[:2]}
    assert int(data.test_masks[row[masks[0]]].sum()) == 12  # half the max (127.5) kept 1
    assert int(data.test_masks[row[masks[1]]].sum()) == 15
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"mask {masks[0]}: it has 3 distinct values (0, 1, 255), not {{0, max}}; every non-zero "
                        "pixel counts as defect: if the low values are noise or a second scale, save the mask as "
                        "0/255"], warnings
