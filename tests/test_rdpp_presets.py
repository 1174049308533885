"""RD++ presets: the authors' per-class epochs, and overlays that merge with the MVTec preset and
validate against the schema (the rdpp variant is registered)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from skrd4ad.params import merge_params, validate_params

PRESETS = Path(__file__).resolve().parents[1] / "workflow" / "config"

#: From the authors' main.py (github.com/tientrandinh/Revisiting-Reverse-Distillation).
AUTHORS_EPOCHS = {10: ["carpet", "leather"], 100: ["wood"], 160: ["hazelnut", "metal_nut"],
                  200: ["bottle", "pill"], 240: ["cable"], 260: ["grid", "tile"],
                  280: ["screw", "toothbrush"], 300: ["capsule", "transistor", "zipper"]}


def _load(name: str) -> dict:
    return yaml.safe_load((PRESETS / name).read_text())


def test_rdpp_paper_epochs_cover_every_mvtec_class() -> None:
    merged = merge_params(_load("rdpp-paper.yaml"), _load("mvtec.yaml"))
    epochs = {cls: o["epochs"] for cls, o in merged["train"]["class_overrides"].items()}
    assert epochs == {cls: n for n, classes in AUTHORS_EPOCHS.items() for cls in classes}
    assert sorted(epochs) == sorted(merged["data"]["classes"])
    assert merged["teacher"]["arch"] == "wide_resnet50_2" and merged["prepare"]["image_size"] == 256
    assert merged["train"]["batch_size"] == 16 and "rdpp" in merged["model"]["variants"]
    assert set(merged["model"]["variants"]) <= set(merged["train"]["variant_overrides"])
    validate_params(copy.deepcopy(merged))  # raises ParamsError naming a bad key


def test_rdpp_overlay_adds_the_variant_to_the_defaults() -> None:
    base = yaml.safe_load((PRESETS.parents[1] / "params.yaml").read_text())
    merged = merge_params(base, _load("rdpp.yaml"))
    assert merged["model"]["variants"] == [*base["model"]["variants"], "rdpp"]
    assert set(merged["model"]["variants"]) <= set(merged["train"]["variant_overrides"])
    validate_params(copy.deepcopy(merged))  # raises ParamsError naming a bad key
