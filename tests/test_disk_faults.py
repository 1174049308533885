"""A full disk (real tmpfs and simulated ENOSPC) and staging folders left by killed runs."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import tmpfs
import torch
from data_fixtures import make_mvtec_class, tar_of_folder

from skrd4ad import io as skio
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data import sources
from skrd4ad.data.sources import FETCH_MARKER, fetch_dataset
from skrd4ad.data.sources.synthetic.generate import generate
from skrd4ad.io import (
    HOST_TAG,
    STAGING_LOCK,
    DiskFullError,
    StagingDir,
    save_torch_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parents[1]
MSG = r"no space left on device while writing {path}; \d+\.\d MB needed"


def _run_py(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted in tmp_path (skipped where mounting is not permitted)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    with tmpfs(mnt, "size=2m"):
        yield mnt


# ---------------------------------------------------------------------------------- real full disk

_PREPARE = """
    import json, shutil, sys
    from skrd4ad.data.prepare import prepare_class
    if sys.argv[4] == "no-precheck":  # the disk fills up while writing (e.g. another job writes too)
        real = shutil.disk_usage
        shutil.disk_usage = lambda p: real(p)._replace(free=1 << 40)
    try:
        prepare_class(sys.argv[1], "brick", sys.argv[2], image_size=int(sys.argv[3]), progress=False, workers=1)
    except Exception as err:
        print(json.dumps({"type": type(err).__name__, "msg": str(err), "oserror": isinstance(err, OSError)}))
        sys.exit(3)
    print(json.dumps({"type": None}))
"""


@pytest.fixture
def raw_brick(tmp_path: Path) -> Path:
    """A tiny synthetic class in normal tmp space: 10 train, 2 good + 5 anomalous test images."""
    return generate(tmp_path / "raw", ["brick"], image_size=64, n_train=10, n_test_good=2, n_test_bad=5)


@pytest.mark.parametrize("mode", ["precheck", "no-precheck"])
def test_prepare_on_a_full_disk_is_a_clear_error(small_disk: Path, raw_brick: Path, mode: str) -> None:
    """At 256 px the arrays take 3.8 MB > the 2 MiB tmpfs: a clear error (not SIGBUS), nothing left,
    the previous cache untouched. ``no-precheck`` hides the free space, so the writes themselves hit ENOSPC."""
    out = small_disk / "brick"
    ok = _run_py(_PREPARE, str(raw_brick), str(out), "32", "precheck")
    assert ok.returncode == 0, ok.stderr
    before = _snapshot(out)
    proc = _run_py(_PREPARE, str(raw_brick), str(out), "256", mode)
    assert proc.returncode == 3, f"rc={proc.returncode} (-7 = SIGBUS)\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] == "DiskFullError" and result["oserror"]
    if mode == "precheck":
        assert _matches(MSG.format(path=out) + r", \d+\.\d MB free", result["msg"]), result["msg"]
    else:
        assert _matches(MSG.format(path=rf"{out}/(train|test|test_masks)\.npy"), result["msg"]), result["msg"]
    assert sorted(os.listdir(small_disk)) == ["brick"]  # no staging folder, no temporary file
    assert _snapshot(out) == before


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.fullmatch(pattern, text) is not None


def test_atomic_writers_on_a_real_full_disk(small_disk: Path) -> None:
    target = small_disk / "state.pt"
    save_torch_atomic({"w": torch.zeros(10)}, target)
    old = target.read_bytes()
    with pytest.raises(DiskFullError, match=MSG.format(path=target)):
        save_torch_atomic({"w": torch.zeros(1_000_000)}, target)  # 4 MB
    blob = small_disk / "blob.bin"
    with pytest.raises(DiskFullError, match=rf"while writing {blob}; 3\.0 MB needed$"):
        write_bytes_atomic(blob, b"\0" * 3_000_000)
    assert target.read_bytes() == old
    assert sorted(os.listdir(small_disk)) == ["state.pt"]


# ---------------------------------------------------------------------------------- simulated ENOSPC


def _writers(tmp_path: Path) -> dict[str, tuple[Path, object]]:
    return {
        "text": (tmp_path / "metrics.csv", lambda p: write_text_atomic(p, "a,b\n1,2\n" * 1000)),
        "json": (tmp_path / "metrics.json", lambda p: write_json_atomic(p, {"auroc": [0.5] * 1000})),
        "bytes": (tmp_path / "blob.bin", lambda p: write_bytes_atomic(p, b"x" * 250_000)),
        "torch": (tmp_path / "resume_state.pt", lambda p: save_torch_atomic({"w": torch.ones(100_000)}, p)),
    }


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("kind", ["text", "json", "bytes", "torch"])
def test_atomic_writers_turn_enospc_into_disk_full_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         kind: str, code: int) -> None:
    path, write = _writers(tmp_path)[kind]
    path.write_bytes(b"old content")

    def full(self: Path, data: object, *args: object, **kwargs: object) -> int:
        with open(self, "wb") as fh:
            fh.write(b"partial")  # some bytes got written before the disk filled up
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(DiskFullError) as info:
        write(path)  # type: ignore[operator]
    err = info.value
    what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    assert _matches(rf"{what} while writing {path}; \d+\.\d MB needed", str(err)), str(err)
    assert isinstance(err, OSError) and err.errno == code and err.filename == str(path)
    assert isinstance(err.__cause__, OSError)
    monkeypatch.undo()
    assert path.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_atomic_path_without_known_size(tmp_path: Path) -> None:
    target = tmp_path / "figure.png"
    with pytest.raises(DiskFullError) as info, skio.atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value) == f"no space left on device while writing {target}"
    assert os.listdir(tmp_path) == []


def test_other_os_errors_are_unchanged(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), skio.atomic_path(tmp_path / "x"):
        raise PermissionError(errno.EACCES, "denied")


# ---------------------------------------------------------------------------------- killed extraction

_SLOW_FETCH = """
    import sys, tarfile, time
    copy = tarfile.copyfileobj
    def slow(*args, **kwargs):  # a slow disk: ~20 files/s, so the test can kill it mid-way
        time.sleep(0.05)
        return copy(*args, **kwargs)
    tarfile.copyfileobj = slow
    from skrd4ad.data.sources import fetch_dataset
    fetch_dataset("mvtec", sys.argv[1], url="http://127.0.0.1:9/unused", sha256=sys.argv[2], progress=False)
"""


def _extract_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.extract") if p.is_dir()]


def test_sigkill_during_extraction_is_cleaned_by_the_next_fetch(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    for i, name in enumerate(("bottle", "cable", "screw", "zipper")):
        make_mvtec_class(src, name, n_train=20, n_good=4, defects={"crack": 4}, size=(128, 128), seed=i)
    archive = tar_of_folder(src)  # ~140 files, 7 MB
    sha = hashlib.sha256(archive).hexdigest()
    root = tmp_path / "data"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / sources.get("mvtec").archive_name).write_bytes(archive)  # verified, not downloaded
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SLOW_FETCH), str(root), sha], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = _extract_dirs(root)
            if dirs and sum(1 for p in dirs[0].rglob("*.png")) >= 5:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the extraction ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert _extract_dirs(root), "the killed extraction left no staging folder to clean"
    with caplog.at_level(logging.WARNING, logger="skrd4ad"):
        out = fetch_dataset("mvtec", root, url="http://127.0.0.1:9/unused", sha256=sha, progress=False)
    assert (out / FETCH_MARKER).is_file() and len(list(out.rglob("*.png"))) == len(list(src.rglob("*.png")))
    assert _extract_dirs(root) == []
    assert sorted(p.name for p in root.iterdir()) == ["downloads", "mvtec"]
    removed = [r.getMessage() for r in caplog.records if "removed stale staging folder" in r.getMessage()]
    assert len(removed) == 1 and _matches(r"removed stale staging folder .*\.fetch \(\d+\.\d MB\) left by an "
                                          r"interrupted run", removed[0]), removed


def test_legacy_extraction_leftovers_are_removed(tmp_path: Path) -> None:
    """Folders the previous version left when killed: ``..mvtec.staging.<random>.extract`` etc."""
    src = tmp_path / "src"
    make_mvtec_class(src, "bottle")
    archive = tar_of_folder(src)
    root = tmp_path / "data"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / sources.get("mvtec").archive_name).write_bytes(archive)
    for name in ("..mvtec.staging.k2j4_x9a.extract", ".mvtec.staging", ".mvtec.converted",
                 "..mvtec.converted.abcdefgh.convert"):
        (root / name / "bottle").mkdir(parents=True)
        (root / name / "bottle" / "x.png").write_bytes(b"x" * 1000)
    (root / "..visa.staging.abcdefgh.extract").mkdir()  # another dataset's: not this fetch's kind
    fetch_dataset("mvtec", root, url="http://127.0.0.1:9/unused", sha256=hashlib.sha256(archive).hexdigest(),
                  progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["..visa.staging.abcdefgh.extract", "downloads", "mvtec"]


# ---------------------------------------------------------------------------------- killed prepare

_HOLD = """
    import sys, time
    from skrd4ad.io import StagingDir
    with StagingDir(sys.argv[1], sys.argv[2], "prepare") as stage:
        print(stage.path, flush=True)
        time.sleep(600)
"""


def _stale(parent: Path, name: str, *, lock: bool = False) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "train.npy").write_bytes(np.random.default_rng(0).bytes(150_000))
    if lock:
        (folder / STAGING_LOCK).touch()
    return folder


def test_prepare_removes_stale_staging_of_its_class_and_keeps_live_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "raw"
    make_mvtec_class(raw, "widget")
    parent = tmp_path / "prepared"
    out = parent / "widget_16"
    # another live prepare of the same output, in its own process: holds its staging folder
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLD), str(parent), "widget_16"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    fd = None
    try:
        live = Path(holder.stdout.readline().strip())  # type: ignore[union-attr]
        assert live.name.endswith(".prepare") and (live / STAGING_LOCK).is_file()
        dead = _dead_pid()
        stale = [
            _stale(parent, f".widget_16.{HOST_TAG}-p{dead}.aaaaaaaa.prepare"),  # no lock file, dead pid
            _stale(parent, f".widget_16.{HOST_TAG}-p{os.getpid()}.bbbbbbbb.prepare", lock=True),  # lock free
            _stale(parent, f".widget_16.otherhost-p{dead}.cccccccc.prepare", lock=True),  # lock free
            _stale(parent, ".widget_16.dddddddd.prepare"),  # the name before this change (no owner)
        ]
        held = _stale(parent, f".widget_16.otherhost-p{dead}.eeeeeeee.prepare", lock=True)
        kept = [
            held,  # lock held (by this test, standing in for a process on another machine)
            _stale(parent, f".widget_16.{HOST_TAG}-p{os.getpid()}.ffffffff.prepare"),  # no lock, live pid
            _stale(parent, ".widget_16.otherhost-p1.gggggggg.prepare"),  # no lock, other machine: unknown
            _stale(parent, f".widget_160.{HOST_TAG}-p{dead}.hhhhhhhh.prepare"),  # another class
            _stale(parent, f".widget_16.{HOST_TAG}-p{dead}.iiiiiiii.extract"),  # another kind
        ]
        fd = os.open(held / STAGING_LOCK, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with caplog.at_level(logging.WARNING, logger="skrd4ad"):
            prepare_class(raw, "widget", out, image_size=16, progress=False, workers=1)
        assert (out / "meta.json").is_file() and not (out / STAGING_LOCK).exists()
        assert not any(p.exists() for p in stale)
        assert all(p.is_dir() for p in kept) and live.is_dir()  # the live process's folder survived
        lines = [r.getMessage() for r in caplog.records if "removed stale staging folder" in r.getMessage()]
        assert sorted(lines) == sorted(
            f"removed stale staging folder {p} (0.2 MB) left by an interrupted run" for p in stale
        )
        holder.send_signal(signal.SIGKILL)  # a real kill: the kernel drops its lock
        holder.wait()
        prepare_class(raw, "widget", out, image_size=16, progress=False, workers=1)
        assert not live.exists()
    finally:
        if fd is not None:
            os.close(fd)
        holder.kill()
        holder.communicate()
    assert sorted(p.name for p in parent.iterdir()) == sorted([out.name, *(p.name for p in kept)])


def test_staging_dir_lifecycle(tmp_path: Path) -> None:
    with StagingDir(tmp_path, "cls", "prepare") as stage:
        assert stage.path.name.startswith(f".cls.{HOST_TAG}-p{os.getpid()}.") and stage.path.name.endswith(".prepare")
        assert skio.clean_stale_staging(tmp_path, "cls", "prepare") == []  # our own, live: kept
        (stage.path / "data").write_text("x")
        stage.seal()
        assert sorted(os.listdir(stage.path)) == ["data"]
        os.replace(stage.path, tmp_path / "cls")
    assert sorted(os.listdir(tmp_path)) == ["cls"]
    with pytest.raises(RuntimeError), StagingDir(tmp_path, "cls", "prepare") as stage:
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["cls"]
