"""Comparison table, several seeds, contrasts between any variants, refused metrics files, figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skrd4ad import paths
from skrd4ad.params import validate_params
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
    return validate_params({"data": {"classes": CLASSES}, "model": {"variants": VARIANTS},
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
    for name in paths.FIGURE_NAMES:
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
    one_class = validate_params({"data": {"classes": ["brick"]}, "model": {"variants": VARIANTS},
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
    tagged = validate_params({"data": {"classes": ["brick"]}, "model": {"variants": VARIANTS},
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
    for name in paths.FIGURE_NAMES:
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


DOC_VARIANTS = {"RD4AD": "rd4ad", "SK-RD4AD": "skrd4ad", "RD++": "rdpp"}
DOC_LABELS = {name: label for label, name in DOC_VARIANTS.items()}
DOC_METRICS = {"Image AUROC": "image_auroc", "Pixel AUROC": "pixel_auroc", "AUPRO": "aupro", "AUPRO (seed)": "aupro_seed"}


def _doc_contrast(label: str) -> str:
    """``"SK-RD4AD − RD4AD"`` (or ``"Δ SK-RD4AD − RD4AD"``) -> ``"skrd4ad-rd4ad"``; a variant label -> its name."""
    parts = label.removeprefix("Δ ").split(" − ")
    return "-".join(DOC_VARIANTS[p] for p in parts)


def _doc_tables(text: str) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(caption, table name, header cells, body rows) of every table of docs/results.md that directly
    follows a caption line ``**<metric or contrast>**, from `results/tables/<name>.md`:``."""
    import re

    tables, caption, lines, i = [], None, text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([cell.strip() for cell in lines[i].strip().strip("|").split("|")])
                i += 1
            if caption:
                tables.append((*caption, block[0], block[2:]))
            caption = None
            continue
        match = re.fullmatch(r"\*\*(.+?)\*\*, from `results/tables/([\w.-]+)\.md`:", line)
        if match:
            caption = match.groups()
        elif line.strip():
            caption = None
        i += 1
    return tables


@pytest.mark.parametrize("name", ["synthetic", "synthetic-rdpp"])
def test_results_page_quotes_the_committed_tables(name: str) -> None:
    """docs/results.md re-arranges a committed run's table (one table per metric, variants as rows,
    classes as columns; one table per contrast): every (variant, class or mean, metric) of the
    committed ``results/tables/<name>.csv`` and every contrast statistic of its ``.json`` is shown,
    as the committed ``<name>.md`` rounds it, so a re-made run whose numbers moved cannot leave the
    page behind.  The reference is built from the CSV/JSON here, not by the aggregate code."""
    import csv

    repo = Path(__file__).resolve().parents[1]
    tables = repo / "results/tables"
    committed = {(r["class"], r["variant"], r["metric"]): r
                 for r in csv.DictReader((tables / f"{name}.csv").read_text().splitlines())}
    stats = json.loads((tables / f"{name}.json").read_text())["mean_diff_stats"]
    md = (tables / f"{name}.md").read_text()
    n_classes = len({cls for cls, _, _ in committed} - {"Mean"})
    assert len(committed) >= 16 and stats, f"results/tables/{name}.* hold no run"

    from decimal import ROUND_HALF_UP, Decimal

    def pct(x: float | str, signed: bool = False) -> str:  # the documented rule: 9 decimals, halves up
        d = Decimal(f"{100 * float(x):.9f}").quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        return f"{d:+.2f}" if signed else f"{d:.2f}"

    def cell(r: dict[str, str]) -> str:
        text = pct(r["mean"])
        return f"{text} ± {pct(r['std'])}" if int(r["n"]) > 1 else text

    expected = {key: cell(r) for key, r in committed.items()}
    expected_contrasts = {}
    for pair, per_metric in stats.items():
        b, a = pair.split("-")
        for metric, s in per_metric.items():
            diff = float(committed[("Mean", pair, metric)]["mean"])
            verdict = ("no detectable difference" if s["p_holm"] >= 0.05 else
                       f"{DOC_LABELS[b]} {'higher' if diff > 0 else 'lower'} than {DOC_LABELS[a]}")
            expected_contrasts[(pair, metric)] = [
                pct(diff, True), f"[{pct(s['ci95_low'], True)}, {pct(s['ci95_high'], True)}]", str(s["n_pairs"]),
                f"{s['n_b_better']} / {s['n_b_worse']}", f"{s['classes_b_better']} of {n_classes}",
                f"{s['p_holm']:.2g}", verdict]
    # the rounding above is the committed table's own
    assert all(f"| {text} |" in md for text in expected.values()), f"results/tables/{name}.md rounds otherwise"
    assert all(f"| {row[0]} | {row[1]} |" in md for row in expected_contrasts.values())

    shown, shown_contrasts = {}, {}
    for caption, table, header, rows in _doc_tables((repo / "docs/results.md").read_text()):
        if table != name:
            continue
        if header[0] == "Variant":
            for row in rows:
                for cls, text in zip(header[1:], row[1:], strict=True):
                    shown[(cls, _doc_contrast(row[0]), DOC_METRICS[caption])] = text
        else:
            assert header[0] == "Metric", f"docs/results.md: a table of {name} that is neither kind: {header}"
            for row in rows:
                shown_contrasts[(_doc_contrast(caption), DOC_METRICS[row[0]])] = row[1:]
    missing = sorted(set(expected) - set(shown)) + sorted(set(expected_contrasts) - set(shown_contrasts))
    assert not missing, f"docs/results.md does not show these numbers of results/tables/{name}.*: {missing}"
    wrong = {key: (text, expected.get(key)) for key, text in shown.items() if text != expected.get(key)}
    wrong |= {key: (row, expected_contrasts.get(key)) for key, row in shown_contrasts.items()
              if row != expected_contrasts.get(key)}
    assert not wrong, f"docs/results.md differs from results/tables/{name}.* (shown, committed): {wrong}"
