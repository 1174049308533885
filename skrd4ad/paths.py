"""Every output path of the pipeline, once: the Snakemake rules use these templates as their
patterns (the placeholders are wildcards), dvc.yaml spells them with ``${...}``, and
tests/test_pipeline.py checks that both engines declare exactly the same outputs.  Deploy-time
code reads them too, to find the pipeline's evaluation of a pipeline checkpoint.

>>> path("checkpoint", name="synthetic", variant="rd4ad", seed=111, cls="brick")
'results/synthetic/checkpoints/rd4ad/seed111/brick.pt'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PATHS = {
    "raw": "data/raw/{name}",
    "prepared": "data/prepared/{name}/{cls}",
    "teacher": "data/teacher/{arch}.pth",
    "checkpoint": "results/{name}/checkpoints/{variant}/seed{seed}/{cls}.pt",
    "train_log": "results/{name}/train/{variant}/seed{seed}/{cls}.tsv",
    "eval": "results/{name}/eval/{variant}/seed{seed}/{cls}",
    "results": "results/{name}",
    "plots": "results/{name}/plots{tag}",
    "table": "results/tables/{name}{tag}{suffix}",
    "figure": "results/figures/{name}{tag}_{figure}.png",
}

#: Files the evaluate stage writes into ``PATHS["eval"]`` (plus the ``figures/`` directory):
#: metrics.json holds numbers only (``dvc metrics``), provenance.json what produced them.
EVAL_FILES = ("metrics.json", "provenance.json", "thresholds.json", "scores.csv", "roc_image.csv", "roc_pixel.csv", "pro.csv")
TABLE_SUFFIXES = (".md", ".csv", ".tex", ".json")
FIGURE_NAMES = ("variants", "loss", "gallery", "seeds")
#: Comparison plots the aggregate stage writes under ``PATHS["plots"]``: one CSV per class in each
#: folder, x column then one column per variant (mean over seeds); dvc.yaml's top-level ``plots:``.
PLOT_KINDS = {"roc_image": "fpr", "pro": "fpr", "loss": "epoch"}


def path(kind: str, **fields: Any) -> str:
    """One output path, e.g. ``path("checkpoint", name="synthetic", variant="rd4ad", seed=111, cls="brick")``."""
    return PATHS[kind].format(**fields)


_FIELD_REGEX = {"seed": r"\d+", "tag": r"[^/]*"}


def path_regex(kind: str) -> str:
    """A regular expression matching every ``PATHS[kind]``, one named group per field
    (``results/{name}/eval/...`` -> ``results/(?P<name>[^/]+)/eval/...``)."""
    parts = re.split(r"\{(\w+)\}", PATHS[kind])  # text, field, text, field, ..., text
    return "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_FIELD_REGEX.get(p, '[^/]+')})"
                   for i, p in enumerate(parts))


def path_glob(kind: str) -> str:
    """``PATHS[kind]`` with every field as ``*`` (a glob pattern)."""
    return re.sub(r"\{\w+\}", "*", PATHS[kind])


def under_results(kind: str, results: str | Path, **fields: Any) -> Path:
    """A job's ``PATHS[kind]`` below a results folder ``results/<name>`` given as ``results``."""
    prefix = PATHS["results"] + "/"
    if not PATHS[kind].startswith(prefix):
        raise ValueError(f"PATHS[{kind!r}] is not below PATHS['results']")
    return Path(results) / PATHS[kind][len(prefix):].format(**fields)


def teacher_path(arch: str) -> Path:
    return Path(path("teacher", arch=arch))


def report_tag(params: Mapping[str, Any]) -> str:
    """``report.tag``: the suffix of the aggregate stage's output names ("" by default)."""
    return (params.get("report") or {}).get("tag") or ""


def aggregate_outputs(name: str, tag: str = "") -> list[str]:
    """Files and folders the aggregate stage writes: the comparison table in four formats, the
    figures and the comparison plots folder (names end in ``report.tag``)."""
    tables = [path("table", name=name, tag=tag, suffix=suffix) for suffix in TABLE_SUFFIXES]
    return (tables + [path("figure", name=name, tag=tag, figure=f) for f in FIGURE_NAMES]
            + [path("plots", name=name, tag=tag)])
