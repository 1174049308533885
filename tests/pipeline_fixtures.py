"""Shared pieces of the pipeline tests: a tiny configuration, temporary git copies of the
repository, and checks of the outputs."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from skrd4ad import paths
from skrd4ad.params import validate_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "OMP_NUM_THREADS": "1"}

TINY = {
    "data": {"dataset": "synthetic", "classes": ["brick", "grass"],
             "synthetic": {"seed": 0, "image_size": 64, "n_train": 8, "n_test_good": 3, "n_test_bad": 5}},
    "prepare": {"image_size": 64},
    "teacher": {"arch": "mobilenet_v2", "source": "none"},
    "model": {"variants": ["rd4ad", "skrd4ad"]},
    "train": {"seeds": [111], "epochs": 1, "batch_size": 4, "checkpoint_every": 1, "device": "cpu",
              "class_overrides": {"brick": {}, "grass": {}},
              "variant_overrides": {"rd4ad": {}, "skrd4ad": {}}},
    "evaluate": {"batch_size": 8, "num_figures": 1, "device": "cpu"},
}


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def dvc_pending(repo: Path) -> dict:
    """``dvc status --json`` without the ``code`` stage's "always changed" (it runs on every repro,
    writing the own-code stamps; anything else listed would re-run)."""
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], repo).stdout)
    code = [item for item in status.pop("code", []) if item != "always changed"]
    return {**status, **({"code": code} if code else {})}


def ran_stages(stdout: str) -> list[str]:
    """The stages a ``dvc repro`` (or ``--dry``) output says it runs, the always-run ``code`` aside."""
    return [s for s in re.findall(r"Running stage '([^']+)'", stdout) if s != "code"]


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())



def write_params(repo: Path, params: dict) -> None:
    """params.yaml with every default filled in (DVC tracks keys only if they are in the file)."""
    full = validate_params(copy.deepcopy(params))
    (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))


def make_copy(tmp_path: Path, params: dict) -> Path:
    """A git copy of the tracked repository files with ``params`` as params.yaml."""
    dest = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("results/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    write_params(dest, params)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run(cmd, dest)
    return dest


def check_results(repo: Path) -> None:
    table = (repo / "results/tables/synthetic.md").read_text()
    from skrd4ad.aggregate import _label

    assert "brick" in table and "grass" in table and "**Mean**" in table
    assert f"Δ {_label('skrd4ad')} − {_label('rd4ad')}" in table
    summary = pd.read_csv(repo / "results/tables/synthetic.csv")
    assert set(summary["variant"]) == {"rd4ad", "skrd4ad", "skrd4ad-rd4ad"}
    for variant in ("rd4ad", "skrd4ad"):
        for cls in ("brick", "grass"):
            metrics = json.loads((repo / f"results/synthetic/eval/{variant}/seed111/{cls}/metrics.json").read_text())
            for key in ("image_auroc", "pixel_auroc", "aupro", "aupro_seed"):
                assert 0.0 <= metrics[key] <= 1.0
            assert all(isinstance(v, float) for v in metrics.values()), metrics  # numbers only
            thresholds = json.loads((repo / f"results/synthetic/eval/{variant}/seed111/{cls}/thresholds.json").read_text())
            assert thresholds["rule"] == "val_fpr" and thresholds["validation"]["n_normal"] >= 1  # held-out images
            assert {"image_precision", "image_recall", "image_f1", "pixel_f1"} <= set(metrics)
            provenance = json.loads((repo / f"results/synthetic/eval/{variant}/seed111/{cls}/provenance.json").read_text())
            assert provenance["train_config"]["variant"] == variant
    for name in paths.aggregate_outputs("synthetic"):
        assert (repo / name).stat().st_size > 0, name
    for kind in paths.PLOT_KINDS:  # one comparison CSV per class: x column, then one column per variant
        for cls in ("brick", "grass"):
            plot = pd.read_csv(repo / f"results/synthetic/plots/{kind}/{cls}.csv")
            assert list(plot.columns) == [paths.PLOT_KINDS[kind], "rd4ad", "skrd4ad"], (kind, cls)
