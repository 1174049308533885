"""Deploying a trained model: the teacher found from anywhere, thresholds from evaluate used by
predict, and a predict that survives bad files and never mixes two runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from skrd4ad.checkpoint import cache_teacher, load_checkpoint, teacher_cache_dir
from skrd4ad.cli import main as cli_main
from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.sources.synthetic.generate import generate
from skrd4ad.evaluate import evaluate
from skrd4ad.io import sha256_file
from skrd4ad.predict import SkippedFilesError, predict
from skrd4ad.thresholds import companion_path, find_thresholds, pipeline_eval_path
from skrd4ad.train import train


def _teacher_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project folder (``dvc.yaml`` marks its root) with a teacher file recorded by its relative
    path, a model trained from inside it, and its evaluation (thresholds beside the checkpoint)."""
    root = tmp_path_factory.mktemp("project")
    (root / "dvc.yaml").write_text("stages: {}\n")
    _teacher_file(root / "teacher" / "mnv2.pth", seed=3)
    generate(root / "raw", ["gravel"], seed=1, image_size=80, n_train=6, n_test_good=4, n_test_bad=6)
    prepared = prepare_class(root / "raw", "gravel", root / "prepared", image_size=64, progress=False)
    config = TrainConfig(arch="mobilenet_v2", variant="skrd4ad", teacher_weights="teacher/mnv2.pth", epochs=1,
                         batch_size=3, device="cpu", seed=5)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train(config, "prepared", "runs/gravel.pt", progress=False)
    finally:
        os.chdir(cwd)
    model = root / "runs" / "gravel.pt"
    metrics = evaluate(model, prepared, root / "eval", EvalConfig(num_figures=0), companion=True)
    return {"root": root, "model": model, "prepared": prepared, "eval": root / "eval",
            "test": root / "raw" / "gravel" / "test", "metrics": metrics}  # type: ignore[dict-item]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------- teacher lookup

def test_teacher_found_relative_to_the_checkpoints_repository(project: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the recorded 'teacher/mnv2.pth' does not exist here
    model, ckpt = load_checkpoint(project["model"])
    assert ckpt["teacher"]["weights"] == "teacher/mnv2.pth"
    assert model.teacher.weights_id == f"sha256:{sha256_file(project['root'] / 'teacher/mnv2.pth')}"


def test_outside_the_repository_the_teacher_comes_from_the_option_or_the_cache(
        project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKRD4AD_CACHE", str(tmp_path / "cache"))
    alone = tmp_path / "deploy" / "gravel.pt"
    alone.parent.mkdir()
    shutil.copy(project["model"], alone)
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(alone)
    msg = str(err.value)
    assert "teacher/mnv2.pth (missing)" in msg and "--teacher-weights" in msg and "fetch-teacher" in msg
    assert str(teacher_cache_dir()) in msg  # every place tried is named

    teacher = project["root"] / "teacher" / "mnv2.pth"
    want = _state(load_checkpoint(project["model"])[0])
    got = _state(load_checkpoint(alone, teacher_weights=teacher)[0])
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    cached = cache_teacher(teacher)
    assert cached == tmp_path / "cache" / "teachers" / f"{sha256_file(teacher)}.pth"
    got = _state(load_checkpoint(alone)[0])
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_different_teacher_is_refused(project: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    other = _teacher_file(tmp_path / "teacher" / "mnv2.pth", seed=4)  # same relative path, other weights
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKRD4AD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="have identity 'sha256:.* but the model was trained with 'sha256:"):
        load_checkpoint(project["model"], teacher_weights=other)
    # found by the recorded path but with other bytes: skipped, the repository's copy is used
    model, _ = load_checkpoint(project["model"])
    assert model.teacher.weights_id != f"sha256:{sha256_file(other)}"
    alone = tmp_path / "alone.pt"
    shutil.copy(project["model"], alone)
    with pytest.raises(FileNotFoundError, match=r"teacher/mnv2.pth \(other sha256\)"):
        load_checkpoint(alone)


# ----------------------------------------------------------------------------------- thresholds

def test_evaluate_writes_thresholds_beside_the_checkpoint(project: dict[str, Path]) -> None:
    record = json.loads((project["eval"] / "thresholds.json").read_text())
    assert json.loads(companion_path(project["model"]).read_text()) == record
    assert companion_path(project["model"]) == project["model"].with_name("gravel.thresholds.json")
    metrics = project["metrics"]
    assert record["image_threshold"] == metrics["image_f1_threshold"]  # type: ignore[index]
    assert record["pixel_threshold"] == metrics["pixel_f1_threshold"]  # type: ignore[index]
    assert record["checkpoint_id"] == torch.load(project["model"], weights_only=True)["identity"]
    assert "checkpoint_sha256" not in record  # the file's sha256 changes with versions; the model's identity not
    assert record["settings"] == {"combine": "sum", "sigma": 4.0, "score": "max", "topk": 100}
    assert "test set" in record["chosen_on"]


def test_pipeline_checkpoint_maps_to_its_evaluation() -> None:
    ckpt = Path("/w/results/mvtec/checkpoints/skrd4ad/seed250/carpet.pt")
    assert pipeline_eval_path(ckpt) == Path("/w/results/mvtec/eval/skrd4ad/seed250/carpet/thresholds.json")
    assert pipeline_eval_path(Path("runs/carpet.pt")) is None


def test_predict_labels_with_the_evaluated_threshold(project: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred"
    predict(project["model"], [project["test"]], out, masks=True)
    got = pd.read_csv(out / "scores.csv")
    assert list(got.columns) == ["file", "name", "score", "label", "threshold", "threshold_source"]
    t = project["metrics"]["image_f1_threshold"]  # type: ignore[index]
    assert np.allclose(got["threshold"], t, rtol=1e-7, atol=0)
    assert (got["threshold_source"] == str(companion_path(project["model"]))).all()
    # the reference: evaluate's own scores of the same images and the F1-max threshold it chose.
    # The threshold is one of those scores; scores.csv holds them to 8 significant digits, which
    # tells float32 values apart, so compare with the threshold at the same precision (else the
    # image that sets the threshold can read as just below it)
    expected = pd.read_csv(project["eval"] / "scores.csv")
    t = float(f"{t:.8g}")
    want = {"__".join(Path(f).parts[-2:]): ("anomalous" if s >= t else "normal")
            for f, s in zip(expected["file"], expected["score"])}
    assert dict(zip(got["name"], got["label"])) == want
    assert pd.read_csv(out / "skipped.csv").empty
    mask = np.asarray(Image.open(out / "masks" / f"{Path(got['name'][0]).stem}.png"))
    assert mask.shape == (80, 80) and set(np.unique(mask)) <= {0, 255}

    ranked = np.sort(expected["score"].to_numpy())
    middle = float(ranked[4] + ranked[5]) / 2  # between two scores: 5 normal, 5 anomalous
    predict(project["model"], [project["test"]], out, threshold=middle, overlays=False)
    again = pd.read_csv(out / "scores.csv")
    want = {"__".join(Path(f).parts[-2:]): ("anomalous" if s > middle else "normal")
            for f, s in zip(expected["file"], expected["score"])}
    assert dict(zip(again["name"], again["label"])) == want and sorted(want.values()).count("normal") == 5
    assert (again["threshold_source"] == "--threshold").all()
    assert not (out / "overlays").exists() and not (out / "masks").exists()  # the folder was replaced


def test_pixel_threshold_gives_the_masks(project: dict[str, Path], tmp_path: Path) -> None:
    image = next(project["test"].rglob("*.png"))
    predict(project["model"], [image], tmp_path / "lo", masks=True, pixel_threshold=-1.0, overlays=False)
    predict(project["model"], [image], tmp_path / "hi", masks=True, pixel_threshold=1e9, overlays=False)
    assert (np.asarray(Image.open(tmp_path / "lo/masks" / f"{image.stem}.png")) == 255).all()
    assert (np.asarray(Image.open(tmp_path / "hi/masks" / f"{image.stem}.png")) == 0).all()


def test_thresholds_of_another_checkpoint_or_setting_are_refused(project: dict[str, Path], tmp_path: Path) -> None:
    image = next(project["test"].rglob("*.png"))
    other = tmp_path / "other.pt"
    ckpt = torch.load(project["model"], weights_only=True)
    ckpt["final_loss"] = 123.0  # another file (other sha256), the same model: its thresholds hold
    torch.save(ckpt, other)
    assert sha256_file(other) != sha256_file(project["model"])
    predict(other, [image], tmp_path / "same", thresholds=companion_path(project["model"]), overlays=False,
            teacher_weights=project["root"] / "teacher/mnv2.pth")
    key = next(iter(ckpt["student"]))
    ckpt["student"][key] = ckpt["student"][key] + 1e-3  # other weights
    del ckpt["identity"]  # as in a checkpoint written before identities: recomputed from the weights
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match="belongs to another checkpoint"):
        predict(other, [image], tmp_path / "a", thresholds=companion_path(project["model"]))
    with pytest.raises(ValueError, match=r"sigma=2.0 differs from sigma=4.0 that the thresholds in .* were chosen with"):
        predict(project["model"], [image], tmp_path / "b", {"sigma": 2.0})
    predict(project["model"], [image], tmp_path / "c", {"sigma": 2.0}, threshold=0.5, overlays=False)
    assert pd.read_csv(tmp_path / "c/scores.csv")["threshold_source"].tolist() == ["--threshold"]
    with pytest.raises(ValueError, match="--masks needs a pixel threshold"):
        predict(project["model"], [image], tmp_path / "d", masks=True, threshold=0.5)


def test_without_thresholds_scores_only(project: dict[str, Path], tmp_path: Path) -> None:
    alone = tmp_path / "m.pt"
    shutil.copy(project["model"], alone)
    image = next(project["test"].rglob("*.png"))
    predict(alone, [image], tmp_path / "p", teacher_weights=project["root"] / "teacher/mnv2.pth", overlays=False)
    row = pd.read_csv(tmp_path / "p/scores.csv", keep_default_na=False).iloc[0]
    assert row["label"] == "" and row["threshold"] == "" and row["threshold_source"] == ""
    assert find_thresholds(alone) is None


# ----------------------------------------------------------------------------- robust predict

def test_bad_files_are_skipped_listed_and_fail_the_run(project: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(project["test"] / "good", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.jpg").write_bytes(b"")
    n_good = len(list((project["test"] / "good").iterdir()))
    with pytest.raises(SkippedFilesError, match=r"2 of \d+ inputs could not be read .*--allow-skip"):
        predict(project["model"], [folder], tmp_path / "out")
    scores = pd.read_csv(tmp_path / "out/scores.csv")
    skipped = pd.read_csv(tmp_path / "out/skipped.csv")
    assert len(scores) == n_good and "broken.png" not in scores["name"].tolist()  # nothing lost
    assert sorted(Path(f).name for f in skipped["file"]) == ["broken.png", "empty.jpg"]
    assert skipped["reason"].str.len().min() > 0
    assert len(list((tmp_path / "out/overlays").iterdir())) == n_good
    predict(project["model"], [folder], tmp_path / "out", allow_skip=True)  # accepted: no error


def test_output_folder_is_replaced_not_mixed(project: dict[str, Path], tmp_path: Path) -> None:
    images = sorted(project["test"].rglob("*.png"))
    out = tmp_path / "out"
    predict(project["model"], [images[0]], out)
    predict(project["model"], [images[1]], out)
    assert [p.name for p in (out / "overlays").iterdir()] == [f"{images[1].stem}.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a predict output"):
        predict(project["model"], [images[0]], mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_cli_predict_exit_status_and_options(project: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # outside the project
    alone = tmp_path / "gravel.pt"
    shutil.copy(project["model"], alone)
    folder = tmp_path / "in"
    shutil.copytree(project["test"] / "good", folder)
    (folder / "broken.png").write_bytes(b"junk")
    teacher = str(project["root"] / "teacher/mnv2.pth")
    argv = ["predict", "--checkpoint", str(alone), "--out", "p", "--teacher-weights", teacher, "--threshold", "0.5",
            str(folder)]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skrd4ad predict: error: 1 of ") and "skipped.csv" in err[0]
    assert cli_main([*argv[:-1], "--allow-skip", str(folder)]) == 0
    assert (pd.read_csv(tmp_path / "p/scores.csv")["threshold"] == 0.5).all()


def test_killed_runs_leave_no_temporary_folders_behind(project: dict[str, Path], tmp_path: Path) -> None:
    """Folders left by killed evaluate/predict runs (dead pid, no lock holder) go at the next run."""
    from skrd4ad.io import HOST_TAG

    out = tmp_path / "eval"
    out.mkdir()
    dead = 2 ** 22 + 12345  # above Linux's default pid_max: no live process has it
    stale_fig = out / f".figures.{HOST_TAG}-p{dead}.abcd1234.figures"
    stale_pred = tmp_path / f".pred.{HOST_TAG}-p{dead}.abcd1234.predict"
    for folder in (stale_fig, stale_pred):
        folder.mkdir()
        (folder / "half.png").write_bytes(b"")
    evaluate(project["model"], project["prepared"], out, EvalConfig(num_figures=1))
    predict(project["model"], [next(project["test"].rglob("*.png"))], tmp_path / "pred", threshold=1.0)
    assert not stale_fig.exists() and not stale_pred.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _readme_onnx_example() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Deploying a model"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_outside_the_repository_export_and_the_readme_example_agree_with_predict(
        project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's "done when": a checkpoint trained in the repository, moved out with its
    thresholds, exported and predicted with only --teacher-weights; the README's onnxruntime
    example (numpy + Pillow + onnxruntime) gives predict's score and label."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    alone = tmp_path / "deploy" / "gravel.pt"
    alone.parent.mkdir()
    shutil.copy(project["model"], alone)
    shutil.copy(companion_path(project["model"]), companion_path(alone))
    teacher = str(project["root"] / "teacher/mnv2.pth")
    assert cli_main(["export", "--checkpoint", str(alone), "--out", "deploy/gravel.onnx", "--teacher-weights",
                     teacher]) == 0
    assert "onnxruntime vs PyTorch: max map difference" in capsys.readouterr().out
    meta = json.loads((tmp_path / "deploy/gravel.json").read_text())
    record = json.loads(companion_path(alone).read_text())
    assert meta["thresholds"]["image"] == record["image_threshold"] and meta["image_size"] == 64
    assert meta["checkpoint"]["id"] == record["checkpoint_id"]

    image = sorted(project["test"].rglob("*.png"))[-1]
    assert cli_main(["predict", "--checkpoint", str(alone), "--out", "pred", "--teacher-weights", teacher,
                     "--no-overlays", str(image)]) == 0
    want = pd.read_csv(tmp_path / "pred/scores.csv").iloc[0]
    script = tmp_path / "example.py"
    script.write_text(_readme_onnx_example())
    proc = subprocess.run([sys.executable, str(script), "deploy/gravel.onnx", str(image)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()  # "<image>: score <s> <label> (threshold <t>); map (1, 64, 64)"
    assert float(words[2]) == pytest.approx(want["score"], rel=1e-4) and words[3] == want["label"]
    assert proc.stdout.strip().endswith("map (1, 64, 64)")
