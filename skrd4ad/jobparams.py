"""What one pipeline job is given: its typed config from params (overrides applied) and the
params it re-runs on, the same for both engines (dvc.yaml's ``params:``, the Snakemake rules'
``params:``; tests/test_engine_sync.py checks both)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import EvalConfig, TrainConfig, from_dict
from .models import variants
from .paths import teacher_path

#: The params the aggregate stage reads, dotted: dvc.yaml's aggregate ``params:`` and the Snakemake
#: rule's ``params:`` (common.smk ``aggregate_params``); tests/test_engine_sync.py checks both.
AGGREGATE_PARAM_KEYS = ("data.classes", "model.variants", "train.seeds", "report")


def train_config(params: Mapping[str, Any], cls: str, variant: str, seed: int) -> TrainConfig:
    """The :class:`TrainConfig` of one (class, variant, seed) job, overrides applied
    (variant overrides first, then class overrides)."""
    train = dict(params["train"])
    overrides = {**train.pop("variant_overrides").get(variant, {}),
                 **train.pop("class_overrides").get(cls, {})}
    train.pop("seeds")
    own = variants.settings_schema(variant)
    train.update({k: v for k, v in overrides.items() if k not in own})
    teacher = params["teacher"]
    return from_dict(TrainConfig, {**train, "arch": teacher["arch"], "variant": variant, "seed": int(seed),
                                   "teacher_weights": str(teacher_path(teacher["arch"])),
                                   "settings": {k: v for k, v in overrides.items() if k in own}}, "train")


def train_param_keys(cls: str, variant: str) -> list[str]:
    """The params a (class, variant) training job depends on, dotted: what dvc.yaml's train stage
    declares and what Snakemake's train rule reruns on (tests/test_engine_sync.py checks both).
    Settings that do not change the weights (``TrainConfig.model_identity`` leaves them out:
    the schema's ``x-changes-model: false`` keys: device, checkpoint_every, memory_format, compile,
    teacher_cache) are not among them."""
    from_train = [k for k in TrainConfig().model_identity()
                  if k not in ("arch", "variant", "seed", "teacher_weights", "settings")]
    return ["teacher.arch", "teacher.source", *(f"train.{k}" for k in from_train),
            f"train.class_overrides.{cls}", f"train.variant_overrides.{variant}"]


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """The :class:`EvalConfig` from the ``evaluate`` section."""
    return from_dict(EvalConfig, params["evaluate"], "evaluate")
