"""A variant in one file: the toy module of the README's "Adding a variant in one file", written
outside the package and registered by an entry point or SKRD4AD_VARIANTS, trains, evaluates,
predicts and exports through the CLI and runs in both engines, with no other file edited."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from code_scan import code_files, string_tokens
from pipeline_fixtures import BIN, ENV, REPO, TINY, make_copy

TOY_COLUMNS = ["epoch", "loss", "loss_layer1", "loss_layer2", "loss_layer3", "consistency", "head"]


def toy_source() -> str:
    """The first Python block of the README section (the text users copy)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Adding a variant in one file", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def plugin_dir(root: Path, *, entry_point: bool) -> Path:
    """``root/plugins`` holding ``toy_variant.py`` and, with ``entry_point``, a minimal installed
    distribution that declares it in the ``skrd4ad.variants`` group."""
    plugins = root / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "toy_variant.py").write_text(toy_source())
    if entry_point:
        dist = plugins / "toy_variant-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-variant\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[skrd4ad.variants]\ntoy = toy_variant:Toy\n")
    return plugins


def env_with(plugins: Path, *, by_env: bool) -> dict[str, str]:
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(plugins), *filter(None, [ENV.get("PYTHONPATH")])])}
    if by_env:
        env["SKRD4AD_VARIANTS"] = "toy_variant"
    else:
        env.pop("SKRD4AD_VARIANTS", None)
    return env


def run_in(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


#: The built-in variants: one package per variant in the registry's folder (rd4ad and skrd4ad first).
BUILT_IN = ("rd4ad", "skrd4ad", *sorted(p.parent.name for p in (Path(__file__).resolve().parents[1]
                                                                  / "skrd4ad/models/variants").glob("*/__init__.py")
                                        if p.parent.name not in ("rd4ad", "skrd4ad")))


def test_registry_sees_a_plug_in_both_ways(tmp_path: Path) -> None:
    code = ("from skrd4ad.models import variants as v; from skrd4ad.params import full_schema; SCHEMA = full_schema(); "
            "print(v.names(), v.label('toy'), v.settings_schema('toy')['head_weight']['default'], "
            "SCHEMA['properties']['model']['properties']['variants']['items']['enum'])")
    for by_env in (False, True):
        plugins = plugin_dir(tmp_path / str(by_env), entry_point=not by_env)
        out = run_in([sys.executable, "-c", code], tmp_path, env_with(plugins, by_env=by_env)).stdout
        expected = (*BUILT_IN, "toy")  # the plug-in after every built-in, in the schema's choices too
        assert out.strip() == f"{expected} Toy 0.01 {list(expected)}", by_env
    missing = {**ENV, "SKRD4AD_VARIANTS": "no_such_variant_module"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=missing, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "SKRD4AD_VARIANTS: cannot import variant module 'no_such_variant_module'" in proc.stderr


def test_toy_variant_trains_evaluates_predicts_and_exports(prepared_brick: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    env = env_with(plugin_dir(tmp_path, entry_point=True), by_env=False)
    cli = [sys.executable, "-m", "skrd4ad"]
    model = tmp_path / "toy.pt"
    run_in([*cli, "train", "--data", str(prepared_brick), "--out", str(model), "--arch", "mobilenet_v2",
            "--variant", "toy", "--teacher-weights", "none", "--epochs", "2", "--batch-size", "4", "--device", "cpu",
            "--settings", '{"head_weight": 0.5}'], tmp_path, env)
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert list(log.columns) == TOY_COLUMNS and log["epoch"].tolist() == [1, 2]
    assert (log["head"] > 0).all()
    layers = log[["loss_layer1", "loss_layer2", "loss_layer3"]].sum(axis=1)
    assert ((log["loss"] - (layers + 0.5 * log["head"])).abs() < 1e-5 * log["loss"]).all()  # the term is in the total
    import torch

    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    assert ckpt["variant"] == "toy" and ckpt["variant_settings"] == {"head_weight": 0.5}
    assert any(k.startswith("head.") for k in ckpt["student"])  # the extra layer is trained and saved
    run_in([*cli, "evaluate", "--checkpoint", str(model), "--data", str(prepared_brick), "--out",
            str(tmp_path / "eval"), "--device", "cpu"], tmp_path, env)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0
    test_images = prepared_brick.parent / "raw" / "brick" / "test"
    run_in([*cli, "predict", "--checkpoint", str(model), "--out", str(tmp_path / "pred"), "--device", "cpu",
            "--no-overlays", str(test_images)], tmp_path, env)
    assert len(pd.read_csv(tmp_path / "pred" / "scores.csv")) == 5
    run_in([*cli, "export", "--checkpoint", str(model), "--out", str(tmp_path / "toy.onnx")], tmp_path, env)
    assert json.loads((tmp_path / "toy.json").read_text())["variant"] == "toy"
    # without the plug-in the checkpoint names what is missing
    proc = subprocess.run([*cli, "evaluate", "--checkpoint", str(model), "--data", str(prepared_brick), "--out",
                           str(tmp_path / "eval2")], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown model variant 'toy'" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["snakemake", "dvc"])
def test_toy_variant_runs_in_both_engines(engine: str, tmp_path: Path) -> None:
    """A tiny run with the toy beside the baseline: its train log has its term, it is evaluated and
    aggregated.  Snakemake finds it through SKRD4AD_VARIANTS, DVC through the entry point."""
    by_env = engine == "snakemake"
    env = env_with(plugin_dir(tmp_path, entry_point=not by_env), by_env=by_env)
    params = copy.deepcopy(TINY)
    params["data"]["classes"] = ["brick"]
    params["model"]["variants"] = ["rd4ad", "toy"]
    params["train"].update(class_overrides={"brick": {}}, variant_overrides={"rd4ad": {}, "toy": {"head_weight": 0.1}})
    full = subprocess.run([sys.executable, "-c", "import sys, json; from skrd4ad.params import validate_params; "
                           "print(json.dumps(validate_params(json.loads(sys.argv[1]))))", json.dumps(params)],
                          env=env, capture_output=True, text=True, check=True).stdout
    repo = make_copy(tmp_path, {**TINY, "data": params["data"]})  # (this process has no toy variant)
    (repo / "params.yaml").write_text(yaml.safe_dump(json.loads(full), sort_keys=False))
    run_in(["git", "commit", "-qam", "toy params"], repo, env)
    cmd = [str(BIN / "snakemake"), "--cores", "2"] if by_env else [str(BIN / "dvc"), "repro"]
    run_in(cmd, repo, env, timeout=1200)
    log = pd.read_csv(repo / "results/synthetic/train/toy/seed111/brick.tsv", sep="\t")
    assert list(log.columns) == TOY_COLUMNS
    metrics = json.loads((repo / "results/synthetic/eval/toy/seed111/brick/metrics.json").read_text())
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    summary = pd.read_csv(repo / "results/tables/synthetic.csv")
    assert {"rd4ad", "toy"} <= set(summary["variant"])


#: Where a variant's name is spelled on purpose outside its own module, and how often: the
#: registry's built-in order, and the package's own name (which is also the variant ``skrd4ad``):
#: logger, distribution metadata, argparse prog, cache folder. One more spelling in any file (a new
#: ``variant == "skrd4ad"`` in cli.py included) fails the test below.
NAME_IS_SOMETHING_ELSE = {
    ("skrd4ad/models/variants/__init__.py", "rd4ad"): 1,  # _FIRST: built-ins listed first, in order
    ("skrd4ad/models/variants/__init__.py", "skrd4ad"): 1,  # _FIRST
    ("skrd4ad/config.py", "rd4ad"): 1,  # TrainConfig.variant's default, written from the schema's model.variants
    ("skrd4ad/user_cache.py", "skrd4ad"): 1,  # ~/.cache/skrd4ad
    ("skrd4ad/cli.py", "skrd4ad"): 3,  # logger, version("skrd4ad"), prog
    ("skrd4ad/export.py", "skrd4ad"): 1,  # package versions recorded in the export
    ("skrd4ad/provenance.py", "skrd4ad"): 3,  # package versions recorded in provenance.json
}


def test_no_variant_name_outside_its_own_module() -> None:
    """The issue's grep, as a test: no code in ``skrd4ad/`` or ``workflow/`` but a variant's own
    module spells a built-in variant's name as a plain string literal (docstrings and comments may
    mention it), except the counted places in NAME_IS_SOMETHING_ELSE. YAML (the schema's defaults)
    is not scanned: the registry's defaults live there on purpose."""
    from skrd4ad.models import variants

    strings = {str(path.relative_to(REPO)): string_tokens(path) for path in code_files()}
    assert set(BUILT_IN) <= set(variants.names())
    found = []
    for name in BUILT_IN:
        quoted = {f'"{name}"', f"'{name}'"}
        own = f"skrd4ad/models/variants/{name}/"
        # the detector sees what it looks for: each variant's own module spells its name
        assert any(s in quoted for _, s in strings[own + "__init__.py"]), f"{own} does not spell {name!r}: the scan is blind"
        for rel, found_strings in strings.items():
            hits = [f"{rel}:{line} {s}" for line, s in found_strings if s in quoted]
            if not rel.startswith(own) and len(hits) != NAME_IS_SOMETHING_ELSE.get((rel, name), 0):
                found += hits or [f"{rel}: expected {NAME_IS_SOMETHING_ELSE[(rel, name)]} x {name!r}, found none"]
    assert not found, f"variant names spelled outside their variant module (or the exemptions moved): {found}"
