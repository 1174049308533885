"""The pipeline: params validation, both engines' declared outputs, lint/dry runs, and an
end-to-end run of Snakemake and DVC on a tiny configuration in temporary git copies."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_fixtures import (BIN, ENV, REPO, TINY, check_results, default_params, dvc_pending, make_copy, ran_stages, run,
                               write_params)

from skrd4ad import paths
from skrd4ad.contrasts import contrasts
from skrd4ad.errors import ParamsError
from skrd4ad.jobparams import train_config
from skrd4ad.params import merged_params, validate_params

# ----------------------------------------------------------------------------- params

def test_default_params_are_valid_and_complete() -> None:
    params = validate_params(default_params())
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
    (lambda p: p["data"].update(dataset="folder", folder="/x"), "data.name: give your folder dataset a name"),
    (lambda p: p["data"].update(dataset="folder", folder="/x", name="synthetic"), "data.name: give your folder"),
    (lambda p: p["data"].update(dataset="mvtec"), "data.name: 'synthetic' names the synthetic dataset"),
    (lambda p: p["data"].update(folder="/my/images"), "data.folder is only read for dataset 'folder'"),
    (lambda p: p["data"].update(name="my data"), "data.name"),
    (lambda p: p["data"].update(name=None), "data.name: None is not of type 'string'"),  # DVC needs the value
    (lambda p: p["data"].update(folder=None), "data.folder: None is not of type 'string'"),
    (lambda p: p["data"].update(dataset="folder", folder="~/parts", name="parts"), "DVC does not expand '~'"),
    (lambda p: p.update(extra=1), "(top level): Additional properties"),
    (lambda p: p["report"].update(baseline="res3"), "report.baseline: 'res3' is not in model.variants"),
    (lambda p: p["report"].update(contrasts=[["rd4ad", "res3"]]), "report.contrasts[0]: 'res3' is not in model.variants"),
    (lambda p: p["report"].update(contrasts=[["rd4ad", "rd4ad"]]), "report.contrasts[0]: [rd4ad, rd4ad] is a variant against itself"),
    (lambda p: p["report"].update(contrasts=[["rd4ad"]]), "report.contrasts.0"),
    (lambda p: p["report"].update(contrasts=[["rd4ad", "skrd4ad"], ["rd4ad", "skrd4ad"]]), "report.contrasts[1]: [rd4ad, skrd4ad] is listed twice"),
])
def test_bad_params_fail_naming_the_key(mutate, message: str) -> None:
    params = default_params()
    mutate(params)
    with pytest.raises(ParamsError) as err:
        validate_params(params)
    assert message in str(err.value)


def test_contrasts_default_to_every_variant_against_the_baseline() -> None:
    params = validate_params({"data": {"classes": ["brick"]}})
    assert params["report"] == {"baseline": "rd4ad", "contrasts": None, "tag": ""}
    assert contrasts(params) == [("rd4ad", "skrd4ad")]
    params["report"]["baseline"] = "skrd4ad"
    assert contrasts(params) == [("skrd4ad", "rd4ad")]
    params["report"]["contrasts"] = [["skrd4ad", "rd4ad"], ["rd4ad", "skrd4ad"]]  # declared: as given
    assert contrasts(params) == [("skrd4ad", "rd4ad"), ("rd4ad", "skrd4ad")]
    one = validate_params({"data": {"classes": ["brick"]}, "model": {"variants": ["skrd4ad"]}})
    assert contrasts(one) == []  # a single variant: nothing to compare, no error


def test_defaults_are_filled() -> None:
    params = validate_params({"data": {"classes": ["brick"]}})
    assert params["train"]["epochs"] == 200 and params["train"]["lr"] == 0.005
    assert params["teacher"] == {"arch": "mobilenet_v2", "source": "pypi"} and params["prepare"]["image_size"] == 256
    assert params["data"]["synthetic"]["n_train"] == 80


def test_train_config_applies_overrides() -> None:
    params = validate_params(copy.deepcopy(TINY))
    params["train"]["class_overrides"]["brick"] = {"epochs": 5}
    params["train"]["variant_overrides"]["skrd4ad"] = {"epochs": 3, "consistency_weight": 0.1}
    assert train_config(params, "brick", "skrd4ad", 1).epochs == 5  # class wins
    assert train_config(params, "grass", "skrd4ad", 1).epochs == 3
    assert train_config(params, "grass", "skrd4ad", 1).consistency_weight == 0.1
    assert train_config(params, "grass", "rd4ad", 1).epochs == 1
    cfg = train_config(params, "grass", "rd4ad", 7)
    assert cfg.seed == 7 and cfg.teacher_weights == "data/teacher/mobilenet_v2.pth"


# ----------------------------------------------------------------------------- engines agree

def snakemake_outputs(cwd: Path) -> set[str]:
    out = run([str(BIN / "snakemake"), "--summary"], cwd).stdout.splitlines()
    return {line.split("\t")[0] for line in out[1:] if line.strip()}


def dvc_outputs(cwd: Path) -> set[str]:
    code = ("from dvc.repo import Repo; r = Repo('.'); "
            "print('\\n'.join(str(o) for s in r.index.stages for o in s.outs))")
    return set(run([sys.executable, "-c", code], cwd).stdout.split())


#: DVC's `code` stage stamps (Snakemake reads the same digests as rule params and writes no file).
DVC_ONLY = {"data/code"}


def test_engines_declare_the_same_outputs() -> None:
    sm, dv = snakemake_outputs(REPO), dvc_outputs(REPO) - DVC_ONLY
    assert sm == dv, f"only Snakemake: {sorted(sm - dv)[:10]}; only DVC: {sorted(dv - sm)[:10]}"
    assert DVC_ONLY <= dvc_outputs(REPO)
    assert set(paths.aggregate_outputs("synthetic")) <= sm
    assert "results/synthetic/checkpoints/skrd4ad/seed111/gravel.pt" in sm


def test_a_tagged_overlay_adds_jobs_and_tables_beside_the_default_ones(tmp_path: Path) -> None:
    """workflow/config/rdpp.yaml: the default run's jobs stay the same jobs, its tables keep their
    names, and the overlay's tables and figures get ``report.tag`` in theirs: in both engines."""
    overlay = REPO / "workflow/config/rdpp.yaml"
    params = merged_params(REPO / "params.yaml", [overlay])
    repo = make_copy(tmp_path, params)
    sm, dv = snakemake_outputs(repo), dvc_outputs(repo) - DVC_ONLY
    assert sm == dv, f"only Snakemake: {sorted(sm - dv)[:10]}; only DVC: {sorted(dv - sm)[:10]}"
    default = snakemake_outputs(REPO)
    tables = {o for o in default if o.startswith(("results/tables/", "results/figures/", "results/synthetic/plots"))}
    assert default - tables < sm  # every default job is a job of the overlay's run, with more besides
    assert "results/tables/synthetic-rdpp.json" in sm and "results/synthetic/plots-rdpp" in sm
    assert not tables & sm  # the overlay overwrites none of the default's tables, figures or plots


def test_snakemake_lint_and_dry_run_are_clean() -> None:
    """Whatever the working tree has already run (README command 1 before command 2): the plan of
    a forced dry run holds every job, so it does not depend on the tree's state."""
    lint = run([str(BIN / "snakemake"), "--lint"], REPO)
    assert "Congratulations" in lint.stdout + lint.stderr
    dry = run([str(BIN / "snakemake"), "-n", "--forceall", "--quiet", "rules"], REPO)
    counts = {r[0]: r[1] for r in (line.split() for line in dry.stdout.splitlines()) if len(r) == 2}
    assert counts.get("train") == "18" and counts.get("evaluate") == "18", dry.stdout


def test_snakemake_rejects_bad_params_before_any_job(tmp_path: Path) -> None:
    bad = default_params()
    bad["train"]["epochz"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--configfile", str(tmp_path / "bad.yaml")],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "epochz" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_snakemake_end_to_end_rerun_and_single_class_change(tmp_path: Path) -> None:
    params = copy.deepcopy(TINY)
    params["train"]["seeds"] = [111, 222]  # several seeds: mean ± sd and the bootstrap interval
    repo = make_copy(tmp_path, params)
    snakemake = str(BIN / "snakemake")
    run([snakemake, "--cores", "2"], repo)
    check_results(repo)
    table = (repo / "results/tables/synthetic.md").read_text()
    assert " ± " in table and "too few pairs for an interval (4 < 6)" in table  # 2 classes x 2 seeds
    summary = json.loads((repo / "results/tables/synthetic.json").read_text())
    stats = summary["mean_diff_stats"]["skrd4ad-rd4ad"]["pixel_auroc"]
    assert stats["n_pairs"] == 4 and "ci95_low" not in stats
    again = run([snakemake, "-n"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr
    run([snakemake, "--report", "report.html"], repo)
    html = (repo / "report.html").read_text(errors="replace")
    assert "synthetic_variants.png" in html and "synthetic.md" in html
    params["train"]["class_overrides"]["grass"] = {"epochs": 2}
    write_params(repo, params)
    plan = run([snakemake, "-n", "--quiet", "rules"], repo).stdout
    rows = [line.split() for line in plan.splitlines()]
    counts = {r[0]: r[1] for r in rows if len(r) == 2 and r[1].isdigit() and r[0] in ("train", "evaluate")}
    assert counts == {"train": "4", "evaluate": "4"}, plan  # grass x 2 variants x 2 seeds only
    assert "prepare" not in plan and "download" not in plan


@pytest.mark.slow
def test_dvc_end_to_end_remote_round_trip_and_single_class_change(tmp_path: Path) -> None:
    repo = make_copy(tmp_path, copy.deepcopy(TINY))
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], repo)
    check_results(repo)
    assert dvc_pending(repo) == {}
    dry = run([dvc, "repro", "--dry"], repo)
    assert ran_stages(dry.stdout) == []
    metrics = run([dvc, "metrics", "show"], repo).stdout
    assert "skrd4ad-rd4ad.pixel_auroc" in metrics and "provenance" not in metrics
    # one figure per class and kind, both variants on it; no per-job curve files
    plots = json.loads(run([dvc, "plots", "show", "--json"], repo).stdout)["data"]
    assert sorted(plots) == sorted(f"results/synthetic/plots/{kind}/{cls}.csv"
                                   for kind in paths.PLOT_KINDS for cls in ("brick", "grass")), sorted(plots)
    fields = {row["field"] for row in plots["results/synthetic/plots/roc_image/brick.csv"][0]["content"]["data"]["values"]}
    assert fields == {"rd4ad", "skrd4ad"}

    # share through a DVC remote (a local directory here; S3/SSH work the same) and restore
    # everything in a fresh clone without re-running anything
    store = tmp_path / "dvc-store"
    run([dvc, "remote", "add", "-d", "store", str(store)], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "default run"], repo)
    run([dvc, "push"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "results/synthetic/checkpoints/skrd4ad/seed111/grass.pt").exists()
    run([dvc, "pull"], clone)
    for rel in ("data/prepared/synthetic/brick/train.npy", "data/teacher/mobilenet_v2.pth",
                "results/synthetic/checkpoints/skrd4ad/seed111/grass.pt",
                "results/synthetic/eval/rd4ad/seed111/brick/metrics.json", "results/tables/synthetic.md"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert dvc_pending(clone) == {}
    assert ran_stages(run([dvc, "repro"], clone).stdout) == []  # nothing is re-trained

    params = copy.deepcopy(TINY)
    params["train"]["class_overrides"]["grass"] = {"epochs": 2}
    write_params(repo, params)
    changed = dvc_pending(repo)
    # validate_params re-checks every params change; its output is constant, so nothing re-runs through it
    assert sorted(changed) == ["train@grass-rd4ad-111", "train@grass-skrd4ad-111", "validate_params"], changed
    run(["git", "checkout", "params.yaml"], repo)

    # an experiment with one param changed, compared with the committed run
    exp = run([dvc, "exp", "run", "-S", "train.epochs=2", "--name", "two-epochs"], repo)
    assert "Running stage 'train@brick-rd4ad-111'" in exp.stdout
    shown = run([dvc, "exp", "show", "--csv"], repo).stdout
    assert "two-epochs" in shown and "train.epochs" in shown
    # every metric column of `dvc exp show` is a metric of a metrics file: no provenance
    exps = json.loads(run([dvc, "exp", "show", "--json"], repo).stdout)
    metric_keys = set()
    for entry in exps:
        for exp in [entry, *(e for r in entry.get("experiments") or [] for e in r.get("revs", []))]:
            for file, content in ((exp.get("data") or {}).get("metrics") or {}).items():
                metric_keys |= {(file, k) for k in (content.get("data") or {})}
    assert metric_keys and not [k for k in metric_keys if "provenance" in k[1]], sorted(metric_keys)[:5]
    assert {f for f, _ in metric_keys} == {"results/tables/synthetic.json"}  # one small file: exp show stays narrow
    diff = json.loads(run([dvc, "metrics", "diff", "--json", "HEAD", "two-epochs"], repo).stdout)
    changed = {k for per_file in diff.values() for k in per_file}
    assert {"mean.rd4ad.pixel_auroc", "mean_diff.skrd4ad-rd4ad.pixel_auroc"} <= changed, changed
    compared = run([sys.executable, "-m", "skrd4ad", "compare", "HEAD", "two-epochs", "--json"], repo).stdout
    rows = json.loads(compared)["rows"]
    assert {r["metric"] for r in rows} >= {"pixel_auroc", "aupro"} and all(r["n_pairs"] == 2 for r in rows)


@pytest.mark.slow
def test_folder_datasets_side_by_side_and_dvc_adopts_snakemake_outputs(tmp_path: Path) -> None:
    """Two folder datasets with their own names coexist; after Snakemake, `dvc commit -f` makes
    DVC adopt the outputs (status clean); editing a source image re-runs download in both engines."""
    from skrd4ad.data.sources.synthetic.generate import generate

    sources = {}
    for name, seed in (("parts_a", 1), ("parts_b", 2)):
        sources[name] = generate(tmp_path / name, ["brick"], seed=seed, image_size=64, n_train=6, n_test_good=2,
                                 n_test_bad=3)
    params = copy.deepcopy(TINY)
    params["data"].update(dataset="folder", folder=str(sources["parts_a"]), name="parts_a", classes=["brick"])
    params["model"]["variants"] = ["rd4ad"]
    params["train"].update(class_overrides={"brick": {}}, variant_overrides={"rd4ad": {}})
    repo = make_copy(tmp_path, params)
    snakemake, dvc = str(BIN / "snakemake"), str(BIN / "dvc")
    run([snakemake, "--cores", "2"], repo)
    params["data"].update(folder=str(sources["parts_b"]), name="parts_b")
    write_params(repo, params)
    run([snakemake, "--cores", "2"], repo)
    for name in ("parts_a", "parts_b"):  # side by side, neither overwritten
        assert (repo / f"results/tables/{name}.md").is_file()
        assert (repo / f"results/{name}/eval/rd4ad/seed111/brick/metrics.json").is_file()
        assert (repo / f"data/raw/{name}/brick/train/good").is_dir()
    assert not (repo / "results/tables/folder.md").exists()

    assert dvc_pending(repo) != {}  # DVC has not seen these outputs yet
    run([dvc, "repro", "--single-item", "code"], repo)  # the documented adoption: the stamps (no job runs),
    run([dvc, "commit", "-f"], repo)  # then the record of every stage
    assert dvc_pending(repo) == {}
    assert ran_stages(run([dvc, "repro", "--dry"], repo).stdout) == []

    image = next((sources["parts_b"] / "brick/train/good").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")  # an edited source file
    status = json.loads(run([dvc, "status", "--json"], repo).stdout)
    assert "download" in status, status
    plan = run([snakemake, "-n", "--quiet", "rules"], repo).stdout
    assert "download" in plan and "train" in plan, plan


def test_folder_dataset_named_like_a_benchmark_is_copied_not_downloaded(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A local folder called `visa` is a folder: the download stage copies it, never fetches VisA."""
    import importlib.util

    from skrd4ad.data import sources
    from skrd4ad.data.sources.synthetic.generate import generate

    generate(tmp_path / "visa", ["brick"], image_size=32, n_train=2, n_test_good=1, n_test_bad=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "fetch_dataset", lambda *a, **k: pytest.fail("fetched a benchmark"))
    spec = importlib.util.spec_from_file_location("download_stage", REPO / "workflow/scripts/download.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    params = validate_params({"data": {"dataset": "folder", "folder": "visa", "name": "visa_local",
                                                "classes": ["brick"]}})
    stage.run(params, tmp_path / "data/raw/visa_local")
    assert (tmp_path / "data/raw/visa_local/brick/train/good").is_dir()
    assert not [p for p in (tmp_path / "data/raw").iterdir() if p.name.startswith(".")]  # no temporary left



def test_params_that_mean_the_same_leave_the_file_alone(tmp_path: Path) -> None:
    """`skrd4ad params` with an overlay that changes nothing (empty, or a value equal to the
    current one) leaves the committed params.yaml (every key written) byte for byte; one that
    changes a value rewrites it, and so does a file that lacks a default (DVC reads only what is
    in the file)."""
    from skrd4ad.cli import main

    base = tmp_path / "params.yaml"
    base.write_bytes((REPO / "params.yaml").read_bytes())
    empty, same, other = tmp_path / "empty.yaml", tmp_path / "same.yaml", tmp_path / "other.yaml"
    empty.write_text("")
    same.write_text("train:\n  epochs: 30\n")
    other.write_text("train:\n  epochs: 31\n")
    for overlay in (empty, same):
        assert main(["params", "--base", str(base), str(overlay)]) == 0
        assert base.read_bytes() == (REPO / "params.yaml").read_bytes(), overlay.name
    assert main(["params", "--base", str(base), str(other)]) == 0
    assert yaml.safe_load(base.read_text())["train"]["epochs"] == 31
    lacking = yaml.safe_load((REPO / "params.yaml").read_text())
    del lacking["data"]["mirror"]
    base.write_text(yaml.safe_dump(lacking))
    assert main(["params", "--base", str(base), str(empty)]) == 0
    assert yaml.safe_load(base.read_text())["data"]["mirror"] is None
