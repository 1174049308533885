"""An output that cannot be written (issue 21, item 5): every command's ``--out`` on a read-only file
system, under a parent that is a file, or without permission gives one line naming the OUTPUT path
(not a temporary beside it), the cause and what to do; nothing is left behind."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tmpfs

from skrd4ad.cli import main
from skrd4ad.io import OutputError, StagingDir, atomic_path, replace_dir, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--arch", "mobilenet_v2", "--teacher-weights", "none", "--batch-size", "4", "--device", "cpu",
         "--seed", "5", "--epochs", "1"]
RO = "the file system is read-only; choose another output path"


@pytest.fixture
def data(cli_brick: dict[str, Path]) -> dict[str, Path]:
    return cli_brick


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A read-only tmpfs (skipped where mounting is not permitted)."""
    with tmpfs(tmp_path_factory.mktemp("ro"), "ro,size=1m") as mnt:
        yield mnt


def commands(data: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """Every CLI command that writes, with ``out`` as the path it writes (the ``--out`` or ``--log``)."""
    model, prepared = str(data["model"]), str(data["prepared"])
    return {
        "export": ["export", "--checkpoint", model, "--out", str(out / "m.onnx")],
        "predict": ["predict", "--checkpoint", model, "--out", str(out / "pred"), "--no-overlays",
                    str(data["image"])],
        "evaluate": ["evaluate", "--checkpoint", model, "--data", prepared, "--out", str(out / "eval"),
                     "--no-companion"],
        "train": ["train", "--data", prepared, "--out", str(out / "m.pt"), *TRAIN],
        "prepare": ["prepare", "--root", str(data["raw"]), "--classes", "brick", "--out", str(out / "brick"),
                    "--image-size", "32"],
        "synthetic": ["synthetic", "--out", str(out / "raw"), "--classes", "brick", "--image-size", "32",
                      "--n-train", "2", "--n-test-good", "1", "--n-test-bad", "1"],
        "params": ["params", "--base", str(REPO / "params.yaml"), str(REPO / "workflow/config/gpu.yaml"),
                   "--out", str(out / "params.yaml")],
    }


WRITTEN = {"export": "m.onnx", "predict": "pred", "evaluate": "eval", "train": "m.pt", "prepare": "brick",
           "synthetic": "raw", "params": "params.yaml"}


@pytest.mark.parametrize("command", sorted(WRITTEN))
def test_read_only_output_is_one_line_naming_the_output(data: dict[str, Path], read_only: Path, command: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = commands(data, read_only)[command]
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    target = read_only / WRITTEN[command]
    assert lines[-1].startswith(f"skrd4ad {command}: error: cannot write {target}"), lines[-1]
    assert RO in lines[-1] and ".tmp" not in lines[-1] and "Errno" not in lines[-1], lines[-1]


@pytest.mark.parametrize("command", sorted(WRITTEN))
def test_parent_that_is_a_file_is_one_line_naming_it(data: dict[str, Path], tmp_path: Path, command: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be\n")
    argv = commands(data, blocker / "sub")[command]
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    target = blocker / "sub" / WRITTEN[command]
    assert last == (f"skrd4ad {command}: error: cannot write {target}: {blocker} is a file, not a folder; "
                    "move it away or choose another output path"), last
    assert blocker.read_text() == "a file where a folder should be\n"
    assert sorted(os.listdir(tmp_path)) == ["results"]


def test_train_log_on_a_read_only_file_system_names_the_log(data: dict[str, Path], read_only: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(data["prepared"]), "--out", str(tmp_path / "m.pt"), "--log",
            str(read_only / "log.tsv"), *TRAIN]
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"skrd4ad train: error: cannot write {read_only / 'log.tsv'}: {RO}"), last


# ---------------------------------------------------------------------------------- the helpers


def test_helpers_name_the_final_path(read_only: Path, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=rf"^cannot write {read_only / 'a.txt'}: {RO}"):
        write_text_atomic(read_only / "a.txt", "x")
    with pytest.raises(OutputError, match=rf"^cannot write {read_only / 'out'}: {RO}"):
        with StagingDir(read_only, "out", "test"):
            pass
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(OutputError, match=rf"^cannot write {tmp_path / 'f' / 'out'}: {tmp_path / 'f'} is a file"):
        (tmp_path / "f").write_text("")
        replace_dir(staging, tmp_path / "f" / "out")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match=rf"^cannot write {tmp_path / 'folder'}: a folder of that name"):
        write_text_atomic(tmp_path / "folder", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "folder", "staging"]


def test_permission_denied_names_the_output_and_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root bypasses permissions, so the EACCES of creating the temporary file is simulated."""
    def denied(*args: object, dir: str, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OutputError, match=rf"^cannot write {tmp_path / 'a.txt'}: permission denied in {tmp_path}; "
                                          r"choose another output path or fix the folder's permissions$"):
        with atomic_path(tmp_path / "a.txt"):
            pass


def test_other_errors_inside_the_block_pass_unchanged(tmp_path: Path) -> None:
    """A read error of another file inside the block is not blamed on the output."""
    with pytest.raises(PermissionError, match="elsewhere"):
        with atomic_path(tmp_path / "a.txt"):
            raise PermissionError(errno.EACCES, "elsewhere", "/some/input")
    assert list(tmp_path.iterdir()) == []
