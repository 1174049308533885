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
                (d / "metrics.json").write_text(json.dumps(metrics))
                (d / "figures").mkdir()
                fpr = [0.0, 0.5, 0.5, 1.0]  # a vertical step at 0.5: the mean takes its upper point
                tpr = [0.0, 0.4, 0.6, 1.0] if variant == "rd4ad" else [0.0, 0.6, 0.8, 1.0]
                pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(d / "roc_image.csv", index=False)
                pd.DataFrame({"fpr": [0.0, 1.0], "pro": [0.0, 0.2 * seed]}).to_csv(d / "pro.csv", index=False)
                log = results / "train" / variant / f"seed{seed}" / f"{cls}.tsv"
                log.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"epoch": [1, 2], "loss": [2.0, 1.5 + 0.1 * seed]}).to_csv(log, sep="\t", index=False)
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
    # 2 classes x 3 seeds = 6 pairs, all favouring SK-RD4AD by exactly 2 points
    assert "| Pixel AUROC | +2.00 | [+2.00, +2.00] | 6 | 6 / 0 | SK-RD4AD higher than RD4AD" in md
    summary_json = json.loads((tmp_path / "tables/synthetic.json").read_text())
    assert summary_json["skrd4ad"]["pixel_auroc"] == pytest.approx(0.89)
    assert summary_json["skrd4ad-rd4ad_ci95_low"]["aupro"] == pytest.approx(0.02)
    assert summary_json["n_pairs"]["aupro"] == 6 and summary_json["pairs_skrd4ad_better"]["aupro"] == 6
    assert all(isinstance(v, (int, float)) for group in summary_json.values() for v in group.values())
    tex = (tmp_path / "tables/synthetic.tex").read_text()
    assert tex.startswith(r"\begin{tabular}") and r"$\pm$" in tex
    for name in pipeline.FIGURE_NAMES:
        assert (tmp_path / "figures" / f"synthetic_{name}.png").stat().st_size > 1000

    roc = pd.read_csv(results / "plots/roc_image/brick.csv")
    assert list(roc.columns) == ["fpr", "rd4ad", "skrd4ad"] and len(roc) == 201
    at_half = roc[roc["fpr"] == 0.5].iloc[0]
    assert at_half["rd4ad"] == pytest.approx(0.6) and at_half["skrd4ad"] == pytest.approx(0.8)
    pro = pd.read_csv(results / "plots/pro/grass.csv")
    assert pro["rd4ad"].iloc[-1] == pytest.approx(0.4)  # mean of 0.2, 0.4, 0.6 over the seeds
    loss = pd.read_csv(results / "plots/loss/brick.csv")
    assert list(loss["epoch"]) == [1, 2] and loss["skrd4ad"].tolist() == pytest.approx([2.0, 1.7])


def test_too_few_pairs_give_no_interval(tmp_path: Path) -> None:
    """1 class x 3 seeds = 3 pairs: the table says so instead of printing [min, max]."""
    results = fake_results(tmp_path, value_fn)
    one_class = pipeline.validate_params({"data": {"classes": ["brick"]}, "model": {"variants": VARIANTS},
                                          "train": {"seeds": SEEDS}})
    aggregate(one_class, results, tmp_path / "tables", tmp_path / "figures")
    md = (tmp_path / "tables/synthetic.md").read_text()
    assert "| Pixel AUROC | +2.00 | – | 3 | 3 / 0 | too few pairs for an interval (3 < 6) |" in md
    summary_json = json.loads((tmp_path / "tables/synthetic.json").read_text())
    assert "skrd4ad-rd4ad_ci95_low" not in summary_json and summary_json["n_pairs"]["pixel_auroc"] == 3


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
    assert ci["n_pairs"] == 8 and ci["n_better"] == int((diffs > 0).sum())
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
        path.write_text(json.dumps({"image_auroc": m["image_auroc"]}))
        (path.parent / "pro.csv").write_text("fpr,pro\n")  # no masks: header-only curve
    summary = aggregate(params(), results, tmp_path / "tables", tmp_path / "figures")
    assert set(summary["metric"]) == {"image_auroc"}
    assert "Pixel AUROC" not in (tmp_path / "tables/synthetic.md").read_text()
