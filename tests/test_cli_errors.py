"""User-facing errors are one line (issue 12, items 6 and 7): the CLI exits 1 with
``skrd4ad <command>: error: <message>`` (traceback only with --debug); stage scripts end with one
``ERROR`` line on stderr (DVC) or in their Snakemake log file, after their start line."""

from __future__ import annotations

import copy
import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_fixtures import BIN, ENV, REPO, TINY, make_copy

from skrd4ad import paths
from skrd4ad.errors import ParamsError, format_error
from skrd4ad.cli import main
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.sources.synthetic.generate import generate
from skrd4ad.models.teacher import build_teacher
from skrd4ad.checkpoint import load_checkpoint
from skrd4ad.train import default_state_path

TRAIN = ["--arch", "mobilenet_v2", "--teacher-weights", "none", "--batch-size", "4", "--device", "cpu",
         "--seed", "5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic 'brick' prepared at 64 px and a 1-epoch mobilenet_v2 checkpoint trained on it."""
    root = tmp_path_factory.mktemp("cli_errors")
    generate(root / "raw", ["brick"], seed=1, image_size=64, n_train=8, n_test_good=2, n_test_bad=3)
    prepared = prepare_class(root / "raw", "brick", root / "prepared", image_size=64, progress=False)
    assert main(["train", "--data", str(prepared), "--out", str(root / "model.pt"), "--epochs", "1", *TRAIN]) == 0
    image = next((root / "raw/brick/test/good").iterdir())
    return {"prepared": prepared, "model": root / "model.pt", "image": image}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("skrd4ad ")]


# ----------------------------------------------------------------------------- CLI


def test_nan_loss_is_one_line_exit_1_and_traceback_only_with_debug(data: dict[str, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(data["prepared"]), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
            "--lr", "1e30", *TRAIN]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"skrd4ad train: error: training diverged at epoch 1 of {tmp_path / 'm.pt'}: loss nan; "
        "lower the learning rate (train.lr, --lr) or set amp to none")
    assert not (tmp_path / "m.pt").exists()

    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):  # before or after the command
        assert main(debug_argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "FloatingPointError" in err
        assert err.strip().splitlines()[-1].startswith("skrd4ad train: error: training diverged at epoch 1")


def test_usage_errors_keep_argparse_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "1"])
    assert exc.value.code == 2 and "--data" in capsys.readouterr().err


def damage(model: Path, dest: Path, how: str) -> Path:
    blob = model.read_bytes()
    dest.write_bytes({"empty": b"", "truncated": blob[: len(blob) // 2], "text": b"not a checkpoint\n" * 20}[how])
    return dest


@pytest.mark.parametrize("how", ["empty", "truncated", "text"])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_damaged_checkpoint_is_one_line_naming_the_file(data: dict[str, Path], tmp_path: Path, how: str,
                                                        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = damage(data["model"], tmp_path / f"{how}.pt", how)
    if command == "evaluate":
        argv = ["evaluate", "--checkpoint", str(bad), "--data", str(data["prepared"]), "--out", str(tmp_path / "e")]
    else:
        argv = ["predict", "--checkpoint", str(bad), "--out", str(tmp_path / "p"), str(data["image"])]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1, err
    line = error_lines(err)[0]
    if how == "text":  # not a torch file at all: said before torch.load (issue 21, item 9)
        assert line == (f"skrd4ad {command}: error: {bad} is not a skrd4ad checkpoint (it is a text file); pass the "
                        ".pt file written by skrd4ad train (its --out)")
        return
    assert line.startswith(f"skrd4ad {command}: error: checkpoint {bad} ")
    assert line.endswith("delete it and train again (or pass the checkpoint written by skrd4ad train)")
    expected = "is empty (0 bytes" if how == "empty" else "cannot be read, it is truncated, corrupt or not a checkpoint"
    assert expected in line
    with pytest.raises(ValueError, match="delete it and train again"):
        load_checkpoint(bad)


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_damaged_resume_state_is_set_aside_and_training_restarts(data: dict[str, Path], tmp_path: Path, how: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "m.pt"
    argv = ["train", "--data", str(data["prepared"]), "--out", str(model), "--epochs", "2", *TRAIN]
    assert main([*argv, "--max-epochs-this-run", "1"]) == 0  # a real resume state after epoch 1
    state = default_state_path(model)
    blob = state.read_bytes()
    state.write_bytes(b"" if how == "empty" else blob[: len(blob) // 2])
    caplog.clear()
    assert main(argv) == 0
    corrupt = state.with_name(state.name + ".corrupt")
    assert corrupt.is_file() and not state.exists() and model.is_file()
    warning = [r.getMessage() for r in caplog.records
               if r.levelname == "WARNING" and "resume state" in r.getMessage()]
    assert len(warning) == 1 and f"resume state {state} is damaged" in warning[0]
    assert f"moved it to {corrupt} and training {model} from epoch 0" in warning[0]
    # restarted from scratch: the same weights as a run that never had a resume state
    assert main(["train", "--data", str(data["prepared"]), "--out", str(tmp_path / "clean.pt"), "--epochs", "2",
                 *TRAIN]) == 0
    got, want = (torch.load(p, weights_only=True)["student"] for p in (model, tmp_path / "clean.pt"))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_full_disk_is_one_line(data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    def full(obj: object, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("skrd4ad.train.save_torch_atomic", full)
    assert main(["train", "--data", str(data["prepared"]), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
                 *TRAIN]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("skrd4ad train: error: no space left on device writing ")
    assert err.strip().endswith(": free some disk space (or write the outputs elsewhere) and run again")


def test_format_error_is_one_line() -> None:
    assert format_error(ParamsError("invalid params:\n  train: bad\n  train.lr: worse")) == (
        "invalid params: train: bad; train.lr: worse")
    assert format_error(KeyError("teacher")) == "KeyError: missing key 'teacher'"
    assert format_error(IndexError("list index out of range")) == "IndexError: list index out of range"
    message = "x.pt does not exist; train first"
    assert format_error(FileNotFoundError(message)) == message


# ----------------------------------------------------------------------------- stage scripts


def script(name: str) -> str:
    return str(REPO / "workflow" / "scripts" / f"{name}.py")


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_stage_script_under_dvc_ends_with_one_error_line(data: dict[str, Path], tmp_path: Path) -> None:
    """As DVC runs it (``python workflow/scripts/train.py --params ...``): start line and epoch
    lines on stderr, then ``ERROR ...: training diverged ...`` last, exit 1, traceback only with --debug."""
    params = copy.deepcopy(TINY)
    params["train"]["lr"] = 1e30
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**params, "train": {**params["train"], "epochz": 3}}))
    teacher = tmp_path / paths.teacher_path("mobilenet_v2")
    teacher.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_teacher("mobilenet_v2", None).state_dict(), teacher)
    argv = [script("train"), "--data", str(data["prepared"]), "--class", "brick", "--variant", "rd4ad",
            "--seed", "111", "--model", "m.pt", "--log", "m.tsv"]

    proc = run_script(argv, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert " ERROR skrd4ad.stage.train: training diverged at epoch 1 of m.pt: loss nan; lower the learning rate " \
           "(train.lr, --lr) or set amp to none" in lines[-1]
    assert any("INFO skrd4ad.train: training m.pt (rd4ad, mobilenet_v2 teacher) on " in line
               and "8 train images at 64 px" in line and "device cpu, 1 threads" in line for line in lines), lines

    proc = run_script([*argv, "--debug"], tmp_path)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    assert "ERROR skrd4ad.stage.train: training diverged at epoch 1" in proc.stderr.strip().splitlines()[-1]

    proc = run_script([*argv, "--params", "bad.yaml"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "ERROR skrd4ad.stage.train: invalid params: train: Additional properties are not allowed "
        "('epochz' was unexpected)")


def test_failed_snakemake_jobs_write_start_and_error_lines_to_their_logs(tmp_path: Path) -> None:
    """A folder dataset with a corrupt image in 'brick' (prepare fails) and lr 1e30 (training
    'grass' diverges): each job's log file has its start line and ends with its ERROR line."""
    source = generate(tmp_path / "parts", ["brick", "grass"], seed=1, image_size=64, n_train=8, n_test_good=2,
                      n_test_bad=3)
    broken = sorted((source / "brick/train/good").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])
    params = copy.deepcopy(TINY)
    params["data"].update(dataset="folder", folder=str(source), name="parts")
    params["model"]["variants"] = ["rd4ad"]
    params["train"].update(lr=1e30, variant_overrides={"rd4ad": {}})
    repo = make_copy(tmp_path, params)
    targets = ["data/prepared/parts/brick", paths.path("checkpoint", name="parts", variant="rd4ad", seed=111,
                                                          cls="grass")]
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "--keep-going", *targets], cwd=repo, env=ENV,
                          capture_output=True, text=True, timeout=600)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0, console

    prepare_log = (repo / "logs/prepare/parts/brick.log").read_text().strip().splitlines()
    assert "INFO skrd4ad.stage.prepare: preparing brick from " in prepare_log[0]
    assert "8 train / 5 test files, 64 px" in prepare_log[0]
    assert f" ERROR skrd4ad.stage.prepare: cannot read data/raw/parts/brick/train/good/{broken.name}: " \
        in prepare_log[-1], prepare_log
    assert prepare_log[-1].endswith("replace or remove the file, or pass --allow-skip to skrd4ad prepare (Python: "
                                    "allow_skip=True; the pipeline never skips) to skip it (it is then listed in "
                                    "manifest.csv as skipped)")
    assert "Traceback (most recent call last)" in "\n".join(prepare_log)  # the file keeps the traceback

    train_log = (repo / "logs/train/parts/rd4ad/seed111/grass.log").read_text().strip().splitlines()
    assert any("INFO skrd4ad.train: training results/parts/checkpoints/rd4ad/seed111/grass.pt" in line
               and "device cpu, 2 threads" in line for line in train_log), train_log
    assert "ERROR skrd4ad.stage.train: training diverged at epoch 1 of " in train_log[-1], train_log
    # the console shows the one-line errors too (not only Snakemake's pointer to the log)
    assert "ERROR skrd4ad.stage.prepare: cannot read" in console
    assert "ERROR skrd4ad.stage.train: training diverged" in console
    for ok in ("logs/download/parts.log", "logs/prepare/parts/grass.log"):
        lines = (repo / ok).read_text().strip().splitlines()
        assert "done in" in lines[-1] and "ERROR" not in "\n".join(lines), (ok, lines)


# ----------------------------------------------------------------------------- bounded options


@pytest.mark.parametrize("argv, message", [
    (["prepare", "--val-fraction", "0.7"],
     "argument --val-fraction: prepare.val_fraction: 0.7 is greater than the maximum of 0.5 (allowed: from 0 to 0.5)"),
    (["prepare", "--val-fraction", "-0.1"],
     "argument --val-fraction: prepare.val_fraction: -0.1 is less than the minimum of 0 (allowed: from 0 to 0.5)"),
    (["prepare", "--image-size", "16"],
     "argument --image-size: prepare.image_size: 16 is less than the minimum of 32 (allowed: at least 32)"),
    (["evaluate", "--fpr-limit", "0"],
     "argument --fpr-limit: evaluate.fpr_limit: 0.0 is less than or equal to the minimum of 0 "
     "(allowed: above 0 and at most 1)"),
    (["synthetic", "--n-train", "0"],
     "argument --n-train: data.synthetic.n_train: 0 is less than the minimum of 1 (allowed: at least 1)"),
    (["export", "--topk", "0"], "argument --topk: evaluate.topk: 0 is less than the minimum of 1 (allowed: at least 1)"),
])
def test_a_bounded_option_out_of_range_is_one_usage_error_naming_option_and_range(
        argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every numeric option with bounds in the params schema is checked against them while the
    command line is read: one line naming the option, the params key and the range (exit 2)."""
    required = {"prepare": ["--root", "r", "--classes", "c", "--out", str(tmp_path / "o")],
                "evaluate": ["--checkpoint", "m.pt", "--data", "d", "--out", str(tmp_path / "o")],
                "synthetic": ["--out", str(tmp_path / "o")],
                "export": ["--checkpoint", "m.pt", "--out", str(tmp_path / "o.onnx")]}[argv[0]]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *required])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines()[-1] == f"skrd4ad {argv[0]}: error: {message}"
    assert not (tmp_path / "o").exists()


def test_bounded_options_accept_their_limits() -> None:
    from skrd4ad.cli import build_parser

    parser = build_parser()
    for value in ("0", "0.5"):
        assert parser.parse_args(["prepare", "--root", "r", "--classes", "c", "--out", "o", "--val-fraction",
                                  value]).val_fraction == float(value)
    assert parser.parse_args(["train", "--data", "d", "--out", "m.pt", "--epochs", "1"]).epochs == 1


@pytest.mark.parametrize("command", ["train", "evaluate", "export"])
def test_a_failed_command_removes_the_empty_output_folder_it_made(
        data: dict[str, Path], tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A command that fails (here: a checkpoint or prepared folder that does not exist) leaves no
    empty ``--out`` folder behind, nor the new parents it made; a folder that existed stays."""
    out = tmp_path / "new" / "deeper"
    missing = tmp_path / "missing.pt"
    argv = {"train": ["train", "--data", str(tmp_path / "no-data"), "--out", str(out / "m.pt"), "--epochs", "1",
                      "--teacher-weights", "none", "--arch", "resnet18"],
            "evaluate": ["evaluate", "--checkpoint", str(missing), "--data", str(data["prepared"]), "--out", str(out)],
            "export": ["export", "--checkpoint", str(missing), "--out", str(out / "m.onnx")]}[command]
    assert main(argv) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()  # existed before: kept
    assert main(argv) == 1
    assert (tmp_path / "new").is_dir() and not out.exists()
