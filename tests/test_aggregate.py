"""Comparison table, several seeds, paired bootstrap interval, figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skrd4ad import pipeline
from skrd4ad.aggregate import aggregate, paired_bootstrap

CLASSES = ["brick", "grass"]
VARIANTS = ["rd4ad", "skrd4ad"]
SEEDS = [1, 2, 3]


def fake_results(root: Path, value) -> Path:
    """metrics.json and train logs for every job; ``value(cls, variant, seed, metric)``."""
    results = root / "results" / "synthetic"
    for variant in VARIANTS:
        for seed in SEEDS:
            for cls in CLASSES:
                d = results / "eval" / variant / f"seed{seed}" / cls
                d.mkdir(parents=True)
                metrics = {m: value(cls, variant, seed, m) for m in ("image_auroc", "pixel_auroc", "aupro", "aupro_seed")}
                (d / "metrics.json").write_text(json.dumps({**metrics, "provenance": {}}))
                (d / "figures").mkdir()
                log = results / "train" / variant / f"seed{seed}" / f"{cls}.tsv"
                log.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"epoch": [1, 2], "loss": [2.0, 1.5]}).to_csv(log, sep="\t", index=False)
    return results


def params() -> dict:
    return pipeline.validate_params({"data": {"classes": CLASSES}, "model": {"variants": VARIANTS},
                                     "train": {"seeds": SEEDS}})


def value_fn(cls: str, variant: str, seed: int, metric: str) -> float:
    base = {"brick": 0.90, "grass": 0.80}[cls] + 0.01 * seed
    return base + (0.02 if variant == "skrd4ad" else 0.0) + (0.001 if metric == "aupro" else 0.0)


def test_table_means_stds_and_difference(tmp_path: Path) -> None:
    results = fake_results(tmp_path, value_fn)
    summary = aggregate(params(), results, tmp_path / "tables", tmp_path / "figures")
    row = summary[(summary["class"] == "brick") & (summary["variant"] == "rd4ad") & (summary["metric"] == "pixel_auroc")]
    vals = [0.91, 0.92, 0.93]
    assert row["mean"].item() == pytest.approx(np.mean(vals))
    assert row["std"].item() == pytest.approx(np.std(vals, ddof=1))
    mean_row = summary[(summary["class"] == "Mean") & (summary["variant"] == "rd4ad") & (summary["metric"] == "pixel_auroc")]
    assert mean_row["mean"].item() == pytest.approx(np.mean([0.91, 0.92, 0.93, 0.81, 0.82, 0.83]))
    diff = summary[(summary["class"] == "Mean") & (summary["variant"] == "skrd4ad-rd4ad") & (summary["metric"] == "aupro")]
    assert diff["mean"].item() == pytest.approx(0.02) and diff["std"].item() == pytest.approx(0.0, abs=1e-12)

    md = (tmp_path / "tables/synthetic.md").read_text()
    assert "| brick | 92.00 ± 1.00 |" in md and "**Mean**" in md
    assert "95% paired bootstrap" in md and "| Pixel AUROC | +2.00 | [+2.00, +2.00] | 6 |" in md
    summary_json = json.loads((tmp_path / "tables/synthetic.json").read_text())
    assert summary_json["skrd4ad"]["pixel_auroc"] == pytest.approx(0.89)
    assert summary_json["diff_ci95"]["aupro"]["pairs"] == 6
    tex = (tmp_path / "tables/synthetic.tex").read_text()
    assert tex.startswith(r"\begin{tabular}") and r"$\pm$" in tex
    for name in pipeline.FIGURE_NAMES:
        assert (tmp_path / "figures" / f"synthetic_{name}.png").stat().st_size > 1000


def test_paired_bootstrap_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    rows = []
    diffs = rng.normal(0.01, 0.02, size=8)
    for i, d in enumerate(diffs):
        base = rng.uniform(0.8, 0.9)
        rows += [{"class": f"c{i % 4}", "seed": i // 4, "variant": "rd4ad", "metric": "pixel_auroc", "value": base},
                 {"class": f"c{i % 4}", "seed": i // 4, "variant": "skrd4ad", "metric": "pixel_auroc", "value": base + d}]
    ci = paired_bootstrap(pd.DataFrame(rows), n_boot=20000, seed=0).iloc[0]
    assert ci["mean_diff"] == pytest.approx(diffs.mean())
    assert ci["n_pairs"] == 8
    # the percentile interval of the bootstrap mean is close to mean ± 1.96 * sd / sqrt(n)
    half = 1.96 * diffs.std(ddof=0) / np.sqrt(len(diffs))
    assert ci["ci_low"] == pytest.approx(diffs.mean() - half, abs=0.25 * half)
    assert ci["ci_high"] == pytest.approx(diffs.mean() + half, abs=0.25 * half)


def test_missing_metrics_file_is_named(tmp_path: Path) -> None:
    results = fake_results(tmp_path, value_fn)
    (results / "eval/skrd4ad/seed2/grass/metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="seed2/grass/metrics.json"):
        aggregate(params(), results, tmp_path / "tables", tmp_path / "figures")


def test_image_level_only_results(tmp_path: Path) -> None:
    def image_only(cls, variant, seed, metric):
        return value_fn(cls, variant, seed, metric)

    results = fake_results(tmp_path, image_only)
    for path in results.rglob("metrics.json"):
        m = json.loads(path.read_text())
        path.write_text(json.dumps({"image_auroc": m["image_auroc"], "provenance": {}}))
    summary = aggregate(params(), results, tmp_path / "tables", tmp_path / "figures")
    assert set(summary["metric"]) == {"image_auroc"}
    assert "Pixel AUROC" not in (tmp_path / "tables/synthetic.md").read_text()
