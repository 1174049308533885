"""Comparison table, several seeds, contrasts between any variants, refused metrics files, figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skrd4ad import pipeline
from skrd4ad.aggregate import _label, aggregate, contrast_table

RD, SK = _label("rd4ad"), _label("skrd4ad")  # the registry's display names where it has them

CLASSES = ["brick", "grass"]
VARIANTS = ["rd4ad", "skrd4ad"]
SEEDS = [1, 2, 3]


def fake_results(root: Path, value, variants: list[str] = VARIANTS) -> Path:
    """metrics.json and train logs for every job; ``value(cls, variant, seed, metric)``."""
    results = root / "results" / "synthetic"
    for variant in variants:
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


def _flatten(d: dict, prefix: str = "") -> list[str]:
    return [k for key, v in d.items() for k in
            (_flatten(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


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
    # 2 classes x 3 seeds = 6 pairs, all favouring skrd4ad by exactly 2 points; every bootstrap
    # replicate is +2, so p = 2 / 10001 per metric and Holm over the 4 metrics gives 4 x that
    assert (f"| Pixel AUROC | +2.00 | [+2.00, +2.00] | 6 | 6 / 0 | 2 of 2 | 0.0008 | {SK} higher than {RD} "
            f"(95% CI excludes 0; Holm p = 0.0008 over 4 metrics) |") in md
    summary_json = json.loads((tmp_path / "tables/synthetic.json").read_text())
    # `dvc metrics show/diff` flatten the keys with dots and sort them (checked with DVC 3.67):
    # the sorted keys must read means, then differences, then the statistics
    flat = sorted(_flatten(summary_json))
    groups = [k.split(".")[0] for k in flat]
    assert groups == ["mean"] * 8 + ["mean_diff"] * 4 + ["mean_diff_stats"] * 28, flat
    assert summary_json["mean"]["skrd4ad"]["pixel_auroc"] == pytest.approx(0.89)
    assert summary_json["mean_diff"]["skrd4ad-rd4ad"]["aupro"] == pytest.approx(0.02)
    stats = summary_json["mean_diff_stats"]["skrd4ad-rd4ad"]["aupro"]
    assert stats["ci95_low"] == pytest.approx(0.02) and stats["n_pairs"] == 6 and stats["n_b_better"] == 6
    assert stats["classes_b_better"] == 2 and stats["p_holm"] == pytest.approx(4 * 2 / 10001, abs=1e-6)
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
    assert "| Pixel AUROC | +2.00 | – | 3 | 3 / 0 | 1 of 1 | – | too few pairs for an interval (3 < 6) |" in md
    stats = json.loads((tmp_path / "tables/synthetic.json").read_text())["mean_diff_stats"]["skrd4ad-rd4ad"]
    assert "ci95_low" not in stats["pixel_auroc"] and "p_holm" not in stats["pixel_auroc"]
    assert stats["pixel_auroc"]["n_pairs"] == 3


def test_report_tag_names_the_tables_figures_and_plots(tmp_path: Path) -> None:
    """``report.tag: -x``: every output of the stage carries it; an untagged earlier table is left as it was."""
    results = fake_results(tmp_path, value_fn)
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    tables.mkdir()
    (tables / "synthetic.md").write_text("the default run's table\n")
    tagged = pipeline.validate_params({"data": {"classes": ["brick"]}, "model": {"variants": VARIANTS},
                                       "train": {"seeds": SEEDS}, "report": {"tag": "-x"}})
    aggregate(tagged, results, tables, figures)
    assert sorted(p.name for p in tables.iterdir()) == ["synthetic-x.csv", "synthetic-x.json", "synthetic-x.md",
                                                        "synthetic-x.tex", "synthetic.md"]
    assert (tables / "synthetic.md").read_text() == "the default run's table\n"
    assert sorted(p.name for p in figures.iterdir()) == ["synthetic-x_gallery.png", "synthetic-x_loss.png",
                                                         "synthetic-x_seeds.png", "synthetic-x_variants.png"]
    assert (results / "plots-x/pro/brick.csv").is_file() and not (results / "plots").exists()


def test_contrast_table_stratifies_by_class_and_counts_classes() -> None:
    """Class c0: skrd4ad +0.10 on both seeds, c1: -0.02 on both: every within-class resample is
    constant, so the interval is exactly the mean (0.10 - 0.02) / 2 = +0.04; one class of two favours it."""
    rows = []
    for cls, d in (("c0", 0.10), ("c1", -0.02)):
        for seed in (1, 2, 3):
            rows += [{"class": cls, "seed": seed, "variant": "rd4ad", "metric": "pixel_auroc", "value": 0.8},
                     {"class": cls, "seed": seed, "variant": "skrd4ad", "metric": "pixel_auroc", "value": 0.8 + d}]
    ci = contrast_table(pd.DataFrame(rows), [("rd4ad", "skrd4ad")], n_boot=2000).iloc[0]
    assert ci["mean_diff"] == pytest.approx(0.04)
    assert ci["ci_low"] == pytest.approx(0.04) and ci["ci_high"] == pytest.approx(0.04)
    assert (ci["n_pairs"], ci["n_better"], ci["n_worse"], ci["classes_better"], ci["n_classes"]) == (6, 3, 3, 1, 2)


def test_n_variants_and_declared_contrasts(tmp_path: Path) -> None:
    """Three variants (a third one, 'wide', scores 0.05 above rd4ad): default contrasts are every
    other variant against the baseline; declared ones give exactly those blocks, b - a."""
    three = ["rd4ad", "skrd4ad", "wide"]

    def value(cls, variant, seed, metric):
        return value_fn(cls, "rd4ad", seed, metric) + {"rd4ad": 0.0, "skrd4ad": 0.02, "wide": 0.05}[variant]

    results = fake_results(tmp_path, value, three)
    base = params()
    base["model"]["variants"] = three  # after validation: 'wide' is not in the schema's enum
    aggregate(base, results, tmp_path / "t1", tmp_path / "f1")
    md = (tmp_path / "t1/synthetic.md").read_text()
    header = md.splitlines()[0]
    assert f"| {RD} Image AUROC |" in header and "| wide AUPRO |" in header
    assert f"Δ {SK} − {RD} Pixel AUROC" in header and f"Δ wide − {RD} Pixel AUROC" in header
    assert "| Pixel AUROC | +5.00 | [+5.00, +5.00] | 6 | 6 / 0 | 2 of 2 |" in md
    diffs = json.loads((tmp_path / "t1/synthetic.json").read_text())["mean_diff"]
    assert list(diffs) == ["skrd4ad-rd4ad", "wide-rd4ad"]
    assert diffs["wide-rd4ad"]["image_auroc"] == pytest.approx(0.05)

    base["report"]["contrasts"] = [["wide", "skrd4ad"]]
    aggregate(base, results, tmp_path / "t2", tmp_path / "f2")
    diffs = json.loads((tmp_path / "t2/synthetic.json").read_text())["mean_diff"]
    assert list(diffs) == ["skrd4ad-wide"] and diffs["skrd4ad-wide"]["aupro"] == pytest.approx(-0.03)
    md = (tmp_path / "t2/synthetic.md").read_text()
    assert f"wide higher than {SK}" not in md and f"{SK} lower than wide" in md
    for name in pipeline.FIGURE_NAMES:
        assert (tmp_path / "f2" / f"synthetic_{name}.png").stat().st_size > 1000


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
    md = (tmp_path / "tables/synthetic.md").read_text()
    assert "Pixel AUROC |" not in md.splitlines()[0]
    assert "Not computed by any job (image-level-only dataset: no masks): Pixel AUROC, AUPRO, AUPRO (seed)." in md


def test_a_metric_missing_from_one_job_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    results = fake_results(tmp_path, value_fn)
    path = results / "eval/skrd4ad/seed2/grass/metrics.json"
    m = json.loads(path.read_text())
    del m["aupro"]
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"seed2/grass/metrics.json: no 'aupro', which other jobs have; re-run evaluate"):
        aggregate(params(), results, tmp_path / "tables", tmp_path / "figures")
    assert not (tmp_path / "tables/synthetic.md").exists()


@pytest.mark.parametrize("bad", ["NaN", "Infinity", '"0.9"', "null"])
def test_a_non_finite_metric_is_refused(tmp_path: Path, bad: str) -> None:
    results = fake_results(tmp_path, value_fn)
    path = results / "eval/rd4ad/seed1/brick/metrics.json"
    path.write_text(path.read_text().replace('"pixel_auroc": ', f'"pixel_auroc": {bad}, "was": ', 1))
    with pytest.raises(ValueError, match=r"seed1/brick/metrics.json: pixel_auroc = .* is not a finite number"):
        aggregate(params(), results, tmp_path / "tables", tmp_path / "figures")


def test_a_truncated_metrics_file_is_named(tmp_path: Path) -> None:
    results = fake_results(tmp_path, value_fn)
    path = results / "eval/skrd4ad/seed3/brick/metrics.json"
    path.write_text(path.read_text()[:30])
    with pytest.raises(ValueError, match=r"seed3/brick/metrics.json: not valid JSON .*re-run evaluate for brick/skrd4ad/seed 3"):
        aggregate(params(), results, tmp_path / "tables", tmp_path / "figures")


@pytest.mark.parametrize("table", ["synthetic.md", "synthetic-rdpp.md"])
def test_readme_quotes_the_committed_tables(table: str) -> None:
    """Every table row of a committed run's ``results/tables/<name>.md`` appears in the README as
    written, so a re-made run whose numbers moved cannot leave the README's table behind."""
    repo = Path(__file__).resolve().parents[1]
    rows = [line for line in (repo / "results/tables" / table).read_text().splitlines() if line.startswith("|")]
    readme = set((repo / "README.md").read_text().splitlines())
    assert len(rows) > 4, f"results/tables/{table} has no table"
    missing = [row[:80] for row in rows if row not in readme]
    assert not missing, f"README.md does not quote these rows of results/tables/{table}: {missing}"
