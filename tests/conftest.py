"""Shared test setup: the one place for fixtures used by more than one test file.

* ``_private_teacher_cache`` (session, automatic): keeps every test, and the subprocesses it
  starts, out of the user's caches.
* torch runs on at most 2 threads in this process (the suites' CPU budget).
* ``prepared_brick`` (session): a small synthetic class, prepared; read-only for its users.

Plain helper functions (no fixtures) live in importable modules beside this file:
``data_fixtures`` (tiny MVTec-layout classes, archives, PNG bytes) and ``pipeline_fixtures``
(tiny pipeline configuration, git copies of the repository, output checks).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _private_teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``SKRD4AD_CACHE`` in a temporary folder: ``fetch-teacher`` fills it and checkpoints look
    their teacher up there, never in ``~/.cache``.  Set in ``os.environ`` so pipeline
    subprocesses see it too."""
    old = os.environ.get("SKRD4AD_CACHE")
    os.environ["SKRD4AD_CACHE"] = str(tmp_path_factory.mktemp("skrd4ad-cache"))
    yield
    if old is None:
        os.environ.pop("SKRD4AD_CACHE", None)
    else:
        os.environ["SKRD4AD_CACHE"] = old


@pytest.fixture(scope="session")
def prepared_brick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic ``brick`` (seed 0, generated at 96 px: 6 train, 2 good + 3 anomalous test
    images) prepared at 64 px; returns the prepared folder.  Shared: do not write into it."""
    from skrd4ad.data.prepare import prepare_class
    from skrd4ad.data.sources.synthetic.generate import generate

    root = tmp_path_factory.mktemp("prepared_brick")
    generate(root / "raw", ["brick"], seed=0, image_size=96, n_train=6, n_test_good=2, n_test_bad=3)
    return prepare_class(root / "raw", "brick", root / "prepared", image_size=64, progress=False)


@contextlib.contextmanager
def tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mnt`` with ``options`` (e.g. ``size=2m``, ``ro,size=1m``) for the block;
    the test is skipped where mounting is not permitted (root only: root ignores chmod)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(scope="session")
def cli_brick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic 'brick' (64 px), its prepared cache, a 1-epoch mobilenet_v2 checkpoint trained
    through the CLI and one test image (read-only: tests write elsewhere)."""
    from skrd4ad.cli import main
    from skrd4ad.data.prepare import prepare_class
    from skrd4ad.data.sources.synthetic.generate import generate

    root = tmp_path_factory.mktemp("cli_brick")
    raw = generate(root / "raw", ["brick"], seed=1, image_size=64, n_train=8, n_test_good=2, n_test_bad=3)
    prepared = prepare_class(raw, "brick", root / "prepared", image_size=64, progress=False)
    assert main(["train", "--data", str(prepared), "--out", str(root / "model.pt"), "--arch", "mobilenet_v2",
                 "--teacher-weights", "none", "--batch-size", "4", "--device", "cpu", "--seed", "5",
                 "--epochs", "1"]) == 0
    image = next((raw / "brick/test/good").iterdir())
    return {"raw": raw, "prepared": prepared, "model": root / "model.pt", "image": image}
