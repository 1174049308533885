"""The comparison table and figures over all (class, variant, seed) evaluations of a dataset.

Reads ``<results>/eval/<variant>/seed<seed>/<class>/{metrics.json,roc_image.csv,pro.csv}`` and the
training logs ``<results>/train/<variant>/seed<seed>/<class>.tsv`` (``<results>`` = ``results/<name>``);
writes ``<tables>/<name>.{md,csv,tex,json}``, ``<figures>/<name>_{variants,loss,gallery,seeds}.png``
and the comparison plot data ``<results>/plots/<kind>/<class>.csv``.  With several seeds the table
shows mean ± standard deviation over seeds; the SK-RD4AD minus RD4AD difference is given with the
number of (class, seed) pairs, how many favour each variant and, from six pairs on, a paired
bootstrap 95% confidence interval.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import StagingDir, atomic_path, replace_dir, write_json_atomic, write_text_atomic  # noqa: E402
from .pipeline import PLOT_KINDS, under_results  # noqa: E402
from .stats import MIN_PAIRS, paired_difference  # noqa: E402

log = logging.getLogger(__name__)

#: Table columns: metric key -> label.
METRICS = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO",
           "aupro_seed": "AUPRO (seed)"}
VARIANT_LABELS = {"rd4ad": "RD4AD", "skrd4ad": "SK-RD4AD"}
BASELINE, OURS = "rd4ad", "skrd4ad"


def collect(results: Path, classes: list[str], variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """Long table: one row per (class, variant, seed, metric) with its value."""
    rows = []
    for variant in variants:
        for seed in seeds:
            for cls in classes:
                path = under_results("eval", results, variant=variant, seed=seed, cls=cls) / "metrics.json"
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing; run the evaluate step for "
                                            f"{cls}/{variant}/seed {seed} first")
                metrics = json.loads(path.read_text())
                for key in METRICS:
                    if key in metrics:
                        rows.append({"class": cls, "variant": variant, "seed": seed, "metric": key,
                                     "value": float(metrics[key])})
    return pd.DataFrame(rows, columns=["class", "variant", "seed", "metric", "value"])


def summarise(long: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (class, variant, metric), a ``Mean`` class
    (mean over classes per seed, then over seeds), and the ``skrd4ad-rd4ad`` difference."""
    per_seed_mean = (long.groupby(["variant", "seed", "metric"], as_index=False)["value"].mean()
                     .assign(**{"class": "Mean"}))
    both = pd.concat([long, per_seed_mean], ignore_index=True)
    variants = list(dict.fromkeys(long["variant"]))
    if BASELINE in variants and OURS in variants:
        wide = both.pivot_table(index=["class", "seed", "metric"], columns="variant", values="value")
        diff = (wide[OURS] - wide[BASELINE]).dropna().rename("value").reset_index()
        both = pd.concat([both, diff.assign(variant=f"{OURS}-{BASELINE}")], ignore_index=True)
    summary = (both.groupby(["class", "variant", "metric"], sort=False)["value"]
               .agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, n="count")
               .reset_index())
    order = {c: i for i, c in enumerate([*classes, "Mean"])}
    return summary.sort_values(["class", "variant", "metric"], key=lambda s: s.map(order) if s.name == "class"
                               else s, kind="stable").reset_index(drop=True)


def paired_bootstrap(long: pd.DataFrame, *, n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> pd.DataFrame:
    """SK-RD4AD minus RD4AD per metric over the (class, seed) pairs both variants have:
    mean difference, sign counts and, from :data:`~skrd4ad.stats.MIN_PAIRS` pairs on, the
    paired bootstrap interval (:func:`skrd4ad.stats.paired_difference`; NaN below that).

    Returns columns metric, mean_diff, ci_low, ci_high, n_pairs, n_better, n_worse, verdict
    (empty without both variants).
    """
    columns = ["metric", "mean_diff", "ci_low", "ci_high", "n_pairs", "n_better", "n_worse", "verdict"]
    if not {BASELINE, OURS} <= set(long["variant"]):
        return pd.DataFrame(columns=columns)
    wide = long.pivot_table(index=["metric", "class", "seed"], columns="variant", values="value")
    rows = []
    for metric, grp in wide.groupby(level="metric", sort=False):
        pairs = grp[[BASELINE, OURS]].dropna()
        if pairs.empty:
            continue
        d = paired_difference(pairs[BASELINE].to_numpy(), pairs[OURS].to_numpy(), level=level,
                              n_resamples=n_boot, seed=seed)
        rows.append({"metric": metric, "mean_diff": d.mean,
                     "ci_low": np.nan if d.ci_low is None else d.ci_low,
                     "ci_high": np.nan if d.ci_high is None else d.ci_high,
                     "n_pairs": d.n_pairs, "n_better": d.n_positive, "n_worse": d.n_negative,
                     "verdict": d.verdict(VARIANT_LABELS[BASELINE], VARIANT_LABELS[OURS])})
    order = {k: i for i, k in enumerate(METRICS)}
    return pd.DataFrame(rows, columns=columns).sort_values("metric", key=lambda m: m.map(order)).reset_index(drop=True)


def ci_markdown(ci: pd.DataFrame) -> str:
    """The difference-of-means table: sign counts always, the bootstrap interval only from
    :data:`~skrd4ad.stats.MIN_PAIRS` pairs on (percentage points)."""
    if ci.empty:
        return ""
    lines = ["", f"SK-RD4AD − RD4AD over (class, seed) pairs, percentage points; 95% paired bootstrap "
             f"interval from {MIN_PAIRS} pairs on (`skrd4ad compare` does the same between two experiments):",
             "", "| Metric | Difference | 95% CI | Pairs | SK-RD4AD better / worse | Verdict |",
             "|---|---|---|---|---|---|"]
    for row in ci.itertuples():
        interval = ("–" if np.isnan(row.ci_low) else f"[{100 * row.ci_low:+.2f}, {100 * row.ci_high:+.2f}]")
        lines.append(f"| {METRICS[row.metric]} | {100 * row.mean_diff:+.2f} | {interval} | {row.n_pairs} | "
                     f"{row.n_better} / {row.n_worse} | {row.verdict} |")
    return "\n".join(lines) + "\n"


def summary_json(summary: pd.DataFrame, ci: pd.DataFrame) -> dict[str, Any]:
    """The DVC metrics of the aggregate stage: per-variant means over classes and seeds, and the
    SK−RD differences with their interval and counts, so that ``dvc metrics diff`` of two
    experiments answers the comparison at the top level.  Numbers only (no interval: no key)."""
    out: dict[str, Any] = {}
    means = summary[summary["class"] == "Mean"]
    for variant, grp in means.groupby("variant", sort=False):
        out[variant] = {row.metric: round(float(row.mean), 6) for row in grp.itertuples()}
    diff = f"{OURS}-{BASELINE}"
    for row in ci.itertuples():
        if not np.isnan(row.ci_low):
            out.setdefault(f"{diff}_ci95_low", {})[row.metric] = round(float(row.ci_low), 6)
            out.setdefault(f"{diff}_ci95_high", {})[row.metric] = round(float(row.ci_high), 6)
        out.setdefault("n_pairs", {})[row.metric] = int(row.n_pairs)
        out.setdefault(f"pairs_{OURS}_better", {})[row.metric] = int(row.n_better)
    return out


def write_plot_data(results: Path, classes: list[str], variants: list[str], seeds: list[int], out: Path) -> None:
    """The comparison plots of ``dvc plots`` (dvc.yaml's top-level ``plots:``): per class one CSV
    per kind (:data:`~skrd4ad.pipeline.PLOT_KINDS`) with the x column and one column per variant,
    the mean over seeds (curves interpolated onto a common FPR grid of 201 points)."""
    grid = np.linspace(0.0, 1.0, 201)
    for cls in classes:
        for kind, x in PLOT_KINDS.items():
            columns: dict[str, Any] = {}
            for variant in variants:
                per_seed = []
                for seed in seeds:
                    if kind == "loss":
                        log = pd.read_csv(under_results("train_log", results, variant=variant, seed=seed, cls=cls), sep="\t")
                        per_seed.append(log.set_index("epoch")["loss"])
                        continue
                    curve = pd.read_csv(under_results("eval", results, variant=variant, seed=seed, cls=cls) / f"{kind}.csv")
                    if curve.empty:  # image-level-only dataset: no PRO curve
                        continue
                    y = curve.columns[1]
                    top = curve.groupby("fpr")[y].max()  # the upper point of each vertical step
                    per_seed.append(pd.Series(np.interp(grid, top.index.to_numpy(), top.to_numpy()), index=grid))
                if per_seed:
                    columns[variant] = pd.concat(per_seed, axis=1).mean(axis=1)
            if columns:
                frame = pd.DataFrame(columns).rename_axis(x).reset_index()
                write_text_atomic(out / kind / f"{cls}.csv", frame.to_csv(index=False, float_format="%.6g"))


def _fmt(mean: float, std: float, n: int, with_std: bool) -> str:
    text = f"{100 * mean:.2f}"
    return f"{text} ± {100 * std:.2f}" if with_std and n > 1 else text


def table_frame(summary: pd.DataFrame, classes: list[str], variants: list[str]) -> pd.DataFrame:
    """Display table: rows = classes + Mean, columns = (variant, metric) in percent."""
    with_std = bool((summary["n"] > 1).any())
    columns = [v for v in variants] + ([f"{OURS}-{BASELINE}"] if f"{OURS}-{BASELINE}" in set(summary["variant"]) else [])
    out = pd.DataFrame(index=[*classes, "Mean"])
    for variant in columns:
        label = VARIANT_LABELS.get(variant, "Δ SK-RD4AD − RD4AD" if variant == f"{OURS}-{BASELINE}" else variant)
        for key, name in METRICS.items():
            sel = summary[(summary["variant"] == variant) & (summary["metric"] == key)].set_index("class")
            if sel.empty:
                continue
            out[f"{label} {name}"] = [
                _fmt(sel.loc[c, "mean"], sel.loc[c, "std"], int(sel.loc[c, "n"]), with_std) if c in sel.index else "–"
                for c in out.index]
    out.index.name = "Class"
    return out


def to_markdown(frame: pd.DataFrame) -> str:
    header = ["Class", *frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for cls, row in frame.iterrows():
        name = f"**{cls}**" if cls == "Mean" else str(cls)
        lines.append("| " + " | ".join([name, *map(str, row.tolist())]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    def esc(text: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                     ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "-"), ("–", "--")):
            text = text.replace(a, b)
        return text

    cols = "l" + "r" * len(frame.columns)
    lines = [r"\begin{tabular}{" + cols + "}", r"\hline",
             " & ".join(esc(c) for c in ["Class", *frame.columns]) + r" \\", r"\hline"]
    for cls, row in frame.iterrows():
        if cls == "Mean":
            lines.append(r"\hline")
        lines.append(" & ".join(esc(str(v)) for v in [cls, *row.tolist()]) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_variants(summary: pd.DataFrame, classes: list[str], variants: list[str], path: Path) -> None:
    """Grouped bars per class, one bar per variant, for pixel AUROC and AUPRO (image AUROC when
    the dataset has no masks)."""
    keys = [k for k in ("pixel_auroc", "aupro") if k in set(summary["metric"])] or ["image_auroc"]
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6, 1.2 * len(classes) + 3) * len(keys) / 1.5, 3.8),
                             squeeze=False)
    x = np.arange(len(classes) + 1)
    width = 0.8 / max(1, len(variants))
    for ax, key in zip(axes[0], keys):
        for j, variant in enumerate(variants):
            sel = summary[(summary["variant"] == variant) & (summary["metric"] == key)].set_index("class")
            means = [sel.loc[c, "mean"] if c in sel.index else np.nan for c in [*classes, "Mean"]]
            stds = [sel.loc[c, "std"] if c in sel.index else 0.0 for c in [*classes, "Mean"]]
            ax.bar(x + (j - (len(variants) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
                   label=VARIANT_LABELS.get(variant, variant))
        lo = np.nanmin(summary[summary["metric"] == key]["mean"].to_numpy())
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.set_xticks(x, [*classes, "Mean"], rotation=30, ha="right")
        ax.set_title(METRICS[key])
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="lower left")
    _save_figure(fig, path)


def plot_losses(results: Path, classes: list[str], variants: list[str], seeds: list[int], path: Path) -> None:
    """Training loss per epoch, one panel per class, one line per (variant, seed)."""
    cols = min(4, len(classes))
    rows = int(np.ceil(len(classes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, cls in zip(axes.flat, classes):
        for variant in variants:
            for seed in seeds:
                tsv = under_results("train_log", results, variant=variant, seed=seed, cls=cls)
                if not tsv.is_file():
                    raise FileNotFoundError(f"{tsv} is missing; run the train step first")
                frame = pd.read_csv(tsv, sep="\t")
                ax.plot(frame["epoch"], frame["loss"], label=f"{VARIANT_LABELS.get(variant, variant)} s{seed}")
        ax.set_title(cls)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(classes):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    _save_figure(fig, path)


def plot_seeds(long: pd.DataFrame, summary: pd.DataFrame, classes: list[str], variants: list[str],
               path: Path) -> None:
    """Per-seed values (dots) beside the mean over seeds (bar edge) per class and variant."""
    keys = [k for k in ("pixel_auroc", "aupro") if k in set(long["metric"])] or ["image_auroc"]
    names = [*classes, "Mean"]
    per_seed_mean = long.groupby(["variant", "seed", "metric"], as_index=False)["value"].mean().assign(**{"class": "Mean"})
    points = pd.concat([long, per_seed_mean], ignore_index=True)
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6, 1.2 * len(names) + 2) * len(keys) / 1.5, 3.8),
                             squeeze=False)
    width = 0.8 / max(1, len(variants))
    for ax, key in zip(axes[0], keys):
        for j, variant in enumerate(variants):
            offset = (j - (len(variants) - 1) / 2) * width
            label = VARIANT_LABELS.get(variant, variant)
            sel = summary[(summary["variant"] == variant) & (summary["metric"] == key)].set_index("class")
            xs = [i + offset for i, c in enumerate(names) if c in sel.index]
            ax.errorbar(xs, [sel.loc[c, "mean"] for c in names if c in sel.index],
                        yerr=[sel.loc[c, "std"] for c in names if c in sel.index], fmt="_", ms=14, capsize=3,
                        color=f"C{j}", label=f"{label} mean ± sd")
            pts = points[(points["variant"] == variant) & (points["metric"] == key)]
            ax.scatter([names.index(c) + offset for c in pts["class"]], pts["value"], s=12, color=f"C{j}",
                       alpha=0.6, label=f"{label} per seed")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(METRICS[key])
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    _save_figure(fig, path)


def plot_gallery(results: Path, classes: list[str], variants: list[str], seed: int, path: Path) -> None:
    """The highest-scoring anomalous image's heatmap figure per class (rows) and variant (columns)."""
    fig, axes = plt.subplots(len(classes), len(variants), figsize=(5.5 * len(variants), 2.2 * len(classes)),
                             squeeze=False)
    for i, cls in enumerate(classes):
        for j, variant in enumerate(variants):
            ax = axes[i][j]
            ax.axis("off")
            found = sorted((under_results("eval", results, variant=variant, seed=seed, cls=cls) / "figures").glob(
                "top_anomalous_00_*.png"))
            if found:
                ax.imshow(plt.imread(found[0]))
            else:
                ax.text(0.5, 0.5, "no anomalous image", ha="center", va="center")
            ax.set_title(f"{cls} — {VARIANT_LABELS.get(variant, variant)}", fontsize=9)
    _save_figure(fig, path)


def aggregate(params: dict[str, Any], results: str | Path, tables: str | Path, figures: str | Path) -> pd.DataFrame:
    """Build every table and figure for ``params``' dataset from ``results`` (``results/<name>``).
    Returns the summary (class, variant, metric, mean, std, n)."""
    results, tables, figures = Path(results), Path(tables), Path(figures)
    dataset = params["data"]["name"]
    classes = list(params["data"]["classes"])
    variants = list(params["model"]["variants"])
    seeds = [int(s) for s in params["train"]["seeds"]]
    long = collect(results, classes, variants, seeds)
    summary = summarise(long, classes)
    frame = table_frame(summary, classes, variants)
    ci = paired_bootstrap(long)
    write_text_atomic(tables / f"{dataset}.md", to_markdown(frame) + ci_markdown(ci))
    write_text_atomic(tables / f"{dataset}.tex", to_latex(frame))
    write_text_atomic(tables / f"{dataset}.csv", summary.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(tables / f"{dataset}.json", summary_json(summary, ci))
    plots = results / "plots"
    with StagingDir(results, plots.name, "plots") as stage:  # a killed run's folder goes at the next start
        write_plot_data(results, classes, variants, seeds, stage.path)
        stage.seal()
        replace_dir(stage.path, plots)
    plot_variants(summary, classes, variants, figures / f"{dataset}_variants.png")
    plot_losses(results, classes, variants, seeds, figures / f"{dataset}_loss.png")
    plot_gallery(results, classes, variants, seeds[0], figures / f"{dataset}_gallery.png")
    plot_seeds(long, summary, classes, variants, figures / f"{dataset}_seeds.png")
    log.info("wrote %s and figures for %d classes x %d variants x %d seeds", tables / f"{dataset}.md",
             len(classes), len(variants), len(seeds))
    return summary
