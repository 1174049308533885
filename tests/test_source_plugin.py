"""A dataset in one file: a toy source module written outside the package, registered by an entry
point or SKRD4AD_SOURCES, is downloaded from a local server, prepared, offered by the CLI and run
by both engines, with no other file edited."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_fixtures import tar_of_folder
from pipeline_fixtures import BIN, ENV, TINY, make_copy
from test_download import _sha, _url, server  # noqa: F401  (the local HTTP server fixture)
from test_variant_plugin import run_in

TOY_MODULE = '''"""A toy dataset: one synthetic class in an archive served by the test."""

from skrd4ad.data.sources.base import Location, Source


class Toy(Source):
    name = "toy"
    label = "Toy set"
    description = "a toy archive from a local server"
    locations = (Location("{url}"),)
    sha256 = "{sha256}"
    archive_name = "toy.tar"
    licence = "CC0 (toy)"
    classes = ("brick",)
    has_masks = True


SOURCE = Toy()
'''


def toy_plugin(root: Path, srv, *, entry_point: bool) -> Path:  # noqa: F811
    """``root/plugins/toy_source.py`` whose archive (a tiny synthetic brick in MVTec layout, in a
    top folder) ``srv`` serves; with ``entry_point``, an installed distribution declaring it."""
    from skrd4ad.data.sources.synthetic.generate import generate

    generate(root / "made", ["brick"], seed=0, image_size=64, n_train=6, n_test_good=2, n_test_bad=3)
    archive = tar_of_folder(root / "made", prefix="toyset/")
    srv.files["/toy.tar"] = archive
    plugins = root / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "toy_source.py").write_text(TOY_MODULE.format(url=_url(srv, "/toy.tar"), sha256=_sha(archive)))
    if entry_point:
        dist = plugins / "toy_source-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-source\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[skrd4ad.sources]\ntoy = toy_source:Toy\n")
    return plugins


def env_with(plugins: Path, *, by_env: bool) -> dict[str, str]:
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(plugins), *filter(None, [ENV.get("PYTHONPATH")])])}
    env.pop("SKRD4AD_SOURCES", None)
    if by_env:
        env["SKRD4AD_SOURCES"] = "toy_source"
    return env


@pytest.mark.parametrize("by_env", [False, True])
def test_toy_source_downloads_prepares_and_is_a_choice(server, tmp_path: Path, by_env: bool) -> None:  # noqa: F811
    env = env_with(toy_plugin(tmp_path, server, entry_point=not by_env), by_env=by_env)
    cli = [sys.executable, "-m", "skrd4ad"]
    code = ("from skrd4ad.data import sources; from skrd4ad.params import full_schema; SCHEMA = full_schema(); "
            "print(sources.names()[-1], SCHEMA['properties']['data']['properties']['dataset']['enum'][-1])")
    assert run_in([sys.executable, "-c", code], tmp_path, env).stdout.split() == ["toy", "toy"]
    assert "| `toy` | Toy set | 1 | yes | - | CC0 (toy) |" in run_in([*cli, "sources"], tmp_path, env).stdout
    assert "toy" in run_in([*cli, "download", "--help"], tmp_path, env).stdout
    proc = run_in([*cli, "download", "--dataset", "toy", "--root", str(tmp_path / "raw")], tmp_path, env)
    assert "Toy set: licence CC0 (toy)" in proc.stderr
    assert {"ground_truth", "test", "train"} <= {p.name for p in (tmp_path / "raw" / "toy" / "brick").iterdir()}
    run_in([*cli, "prepare", "--root", str(tmp_path / "raw" / "toy"), "--classes", "brick", "--out",
            str(tmp_path / "prep"), "--image-size", "32"], tmp_path, env)
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert (meta["n_train"] + meta["n_val"], meta["n_test"], meta["image_level_only"]) == (6, 5, False)
    # without the plug-in the name is unknown, and says where sources come from
    proc = subprocess.run([*cli, "download", "--dataset", "toy", "--root", str(tmp_path / "x")], cwd=tmp_path,
                          env={**ENV, "SKRD4AD_SOURCES": ""}, capture_output=True, text=True)
    assert proc.returncode != 0 and "invalid choice: 'toy'" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["snakemake", "dvc"])
def test_toy_source_runs_in_both_engines(server, engine: str, tmp_path: Path) -> None:  # noqa: F811
    """A tiny run on the toy dataset: downloaded from the local server by the download stage,
    prepared, trained, evaluated and aggregated.  Snakemake finds it through SKRD4AD_SOURCES, DVC
    through the entry point."""
    by_env = engine == "snakemake"
    env = env_with(toy_plugin(tmp_path, server, entry_point=not by_env), by_env=by_env)
    params = copy.deepcopy(TINY)
    params["data"] = {"dataset": "toy", "name": "toy", "classes": ["brick"]}
    params["model"]["variants"] = ["rd4ad"]
    params["train"].update(class_overrides={"brick": {}}, variant_overrides={"rd4ad": {}})
    full = subprocess.run([sys.executable, "-c", "import sys, json; from skrd4ad.params import validate_params; "
                           "print(json.dumps(validate_params(json.loads(sys.argv[1]))))", json.dumps(params)],
                          env=env, capture_output=True, text=True, check=True).stdout
    repo = make_copy(tmp_path, TINY)  # (this process has no toy source)
    (repo / "params.yaml").write_text(yaml.safe_dump(json.loads(full), sort_keys=False))
    run_in(["git", "commit", "-qam", "toy params"], repo, env)
    cmd = [str(BIN / "snakemake"), "--cores", "2"] if by_env else [str(BIN / "dvc"), "repro"]
    run_in(cmd, repo, env, timeout=1200)
    assert (repo / "data/raw/toy/brick/train/good").is_dir()
    assert [p for p, _ in server.log] == ["/toy.tar"]  # downloaded once
    metrics = json.loads((repo / "results/toy/eval/rd4ad/seed111/brick/metrics.json").read_text())
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    assert (repo / "results/tables/toy.csv").is_file()
