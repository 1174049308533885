"""An identical rerun leaves git clean: tracked outputs record nothing a same-code rerun changes
(no git revision, no checkpoint file sha256; the model's identity and the source digest instead)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pipeline_fixtures import BIN, make_copy, run
from test_engines import SMALL

SNAKEMAKE, DVC = str(BIN / "snakemake"), str(BIN / "dvc")


def changed(repo: Path) -> list[str]:
    """``git status --porcelain`` lines (the training logs hold no timings, so they count too)."""
    return run(["git", "status", "--porcelain"], repo).stdout.splitlines()


#: A run from scratch, and the same run forced again (every job).  Each engine against itself: the
#: engines give jobs different thread counts, which changes the float rounding of the weights.
RUNS = {"dvc": ([DVC, "repro"], [DVC, "repro", "--force"]),
        "snakemake": ([SNAKEMAKE, "--cores", "2"], [SNAKEMAKE, "--cores", "2", "--forceall"])}


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(RUNS))
def test_forced_rerun_leaves_git_clean(tmp_path: Path, engine: str) -> None:
    first, again = RUNS[engine]
    repo = make_copy(tmp_path, copy.deepcopy(SMALL))
    run(first, repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "run"], repo)
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    tracked = run(["git", "ls-files", "results"], repo).stdout.split()
    assert any(name.endswith("/provenance.json") for name in tracked)
    assert any(name.endswith("/thresholds.json") for name in tracked)
    checkpoint = repo / "results/synthetic/checkpoints/rd4ad/seed111/brick.pt"
    before = checkpoint.stat().st_mtime_ns

    run(again, repo)  # every job again: checkpoints (their md5 in dvc.lock), eval outputs, tables
    assert checkpoint.stat().st_mtime_ns != before  # it was rewritten
    assert changed(repo) == []
