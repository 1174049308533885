"""`dvc exp run -S` with a value that empties a matrix leaves the workspace as it was.

The mechanism (DVC 3.x, ``dvc/repo/experiments/executor/base.py``): before its first stage,
``dvc exp run`` runs ``dvc checkout --force`` on the whole workspace, and a checkout without
targets removes every cached output DVC once linked that no stage of the *new* dvc.yaml declares
(``_remove_unused_links``).  With ``train.seeds: []`` the train/evaluate matrices expand to no
stage, so every checkpoint and figure folder went before ``validate_params`` could object; the
modified params.yaml was left behind.  The guard: validate_params' ``desc`` interpolates the first
item of each list, so DVC's own parser fails before it stashes, checks out or runs anything.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pipeline_fixtures import BIN, ENV, REPO, dvc_pending, make_copy, run
from test_engines import SMALL

DVC = str(BIN / "dvc")
#: The lists the dvc.yaml matrices iterate over.
MATRIX_LISTS = ("data.classes", "model.variants", "train.seeds")


def snapshot(repo: Path) -> dict[str, bytes]:
    """Every file under results/ and data/, and params.yaml, by content."""
    files = [p for top in ("results", "data") for p in (repo / top).rglob("*") if p.is_file()]
    return {str(p.relative_to(repo)): p.read_bytes() for p in [*files, repo / "params.yaml"]}


@pytest.mark.parametrize("key", MATRIX_LISTS)
def test_dvc_refuses_to_parse_an_empty_matrix_list(tmp_path: Path, key: str) -> None:
    """DVC's parser itself (no stage runs) fails on each empty list, naming it."""
    from dvc.repo import Repo

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    params = copy.deepcopy(defaults)
    section, name = key.split(".")
    params[section][name] = []
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    Repo.init(tmp_path, no_scm=True)
    with Repo(tmp_path) as repo, pytest.raises(Exception, match=rf"Could not find '{key}\.0'"):
        repo.index  # noqa: B018 (parsing dvc.yaml is the test)

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(defaults))
    with Repo(tmp_path) as repo:  # the defaults parse: the guard is not always failing
        assert any(stage.name.startswith("train@") for stage in repo.index.stages)


@pytest.mark.slow
def test_exp_run_with_an_empty_list_keeps_every_output_and_params(tmp_path: Path) -> None:
    repo = make_copy(tmp_path, copy.deepcopy(SMALL))
    run([DVC, "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "run"], repo)
    assert dvc_pending(repo) == {}
    before = snapshot(repo)
    assert "results/synthetic/checkpoints/rd4ad/seed111/brick.pt" in before
    assert any("/figures/" in name for name in before)

    for key in MATRIX_LISTS:
        proc = subprocess.run([DVC, "exp", "run", "-S", f"{key}=[]"], cwd=repo, env=ENV, capture_output=True,
                              text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        now = snapshot(repo)  # checkpoints, figures, logs, metrics, params.yaml: byte for byte
        assert sorted(set(before) - set(now)) == [] and now == before, (key, out)
        status = run(["git", "status", "--porcelain"], repo).stdout
        assert status == "", (key, status)
        assert f"Could not find '{key}.0'" in out, out  # DVC's parser stopped it, before any stage
    assert dvc_pending(repo) == {}
