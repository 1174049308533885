"""The typed configs (skrd4ad.config): their fields are written out from the params schema and
must match it, and building one checks every value against the schema."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skrd4ad import config
from skrd4ad.config import ConfigError, EvalConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_the_generated_fields_are_current() -> None:
    """`python -m skrd4ad.config --write` has been run since the schema last changed."""
    assert config._current_block() == config.render(), (
        "skrd4ad/config.py is not current with skrd4ad/params.schema.yaml: run `python -m skrd4ad.config --write`")


def test_fields_and_defaults_are_the_schemas() -> None:
    """Read against the YAML file itself (not through skrd4ad.schema): every train key but the grid
    keys, and every evaluate key, is a field with the schema's default (lists as tuples)."""
    raw = yaml.safe_load((REPO / "skrd4ad" / "params.schema.yaml").read_text())["properties"]
    train = {k: v["default"] for k, v in raw["train"]["properties"].items()
             if k not in ("seeds", "class_overrides", "variant_overrides")}
    ours = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert list(ours) == ["arch", "variant", "teacher_weights", "seed", *train, "settings"]
    for key, default in train.items():
        assert ours[key] == (tuple(default) if isinstance(default, list) else default), key
    assert ours["arch"] == raw["teacher"]["properties"]["arch"]["default"]
    assert ours["seed"] == raw["train"]["properties"]["seeds"]["default"][0]
    assert {f.name: f.default for f in dataclasses.fields(EvalConfig)} == {
        k: v["default"] for k, v in raw["evaluate"]["properties"].items()}


def test_write_rewrites_only_the_block(tmp_path: Path) -> None:
    """`--write` on a copy of the package whose block is stale puts the current one back and leaves
    the rest of the file as it was."""
    copy = tmp_path / "skrd4ad"
    subprocess.run(["cp", "-r", str(REPO / "skrd4ad"), str(copy)], check=True)
    module = copy / "config.py"
    original = module.read_text()
    module.write_text(original.replace("_setting('train.epochs', 200)", "_setting('train.epochs', 7)"))
    subprocess.run([sys.executable, "-m", "skrd4ad.config", "--write"], cwd=tmp_path, check=True,
                   env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert module.read_text() == original


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "train.epochs: 0 is less than the minimum of 1"),
    ({"loss": "l1"}, "train.loss: 'l1' is not one of ['cosine', 'mse', 'mse_cosine']"),
    ({"variant": "nope"}, "train.variant: 'nope' is not one of ['rd4ad', 'skrd4ad', 'rdpp']"),
])
def test_bad_values_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**kwargs)
    assert str(err.value) == message


def test_eval_config_checks_its_range() -> None:
    with pytest.raises(ConfigError, match=r"^evaluate\.fpr_limit: "):
        EvalConfig(fpr_limit=2.0)
