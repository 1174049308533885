"""The comparison table and figures over all (class, variant, seed) evaluations of a dataset.

Reads ``<results>/eval/<variant>/seed<seed>/<class>/{metrics.json,roc_image.csv,pro.csv}`` and the
training logs ``<results>/train/<variant>/seed<seed>/<class>.tsv`` (``<results>`` = ``results/<name>``);
writes ``<tables>/<name>.{md,csv,tex,json}``, ``<figures>/<name>_{variants,loss,gallery,seeds}.png``
and the comparison plot data ``<results>/plots/<kind>/<class>.csv``.  With several seeds the table
shows mean ± standard deviation over seeds.  Each contrast of ``report`` (``b - a``,
:func:`skrd4ad.contrasts`) gets a difference block: the number of (class, seed) pairs, how
many favour each side, how many classes favour ``b`` and, from six pairs on, a 95% bootstrap
interval that resamples seeds within each class, with verdicts Holm-adjusted over the metrics of
that contrast (:func:`skrd4ad.stats.stratified_difference`, :func:`skrd4ad.stats.with_holm`).
A job whose metrics.json is damaged, lacks a metric other jobs have, or holds a non-finite value
is refused, naming the file and the key.
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
from .contrasts import contrasts  # noqa: E402
from .paths import PLOT_KINDS, report_tag, under_results  # noqa: E402
from .stats import JUDGED_METRICS, MIN_PAIRS, points, stratified_difference, with_holm  # noqa: E402

log = logging.getLogger(__name__)

#: Table columns: metric key -> label.
METRICS = JUDGED_METRICS  # the columns of the table, and each contrast's Holm family
LEVEL = 0.95  # confidence level of the contrast intervals

Contrast = tuple[str, str]  # (a, b): b - a


class MetricsError(ValueError):
    """A job's metrics.json is damaged, incomplete or holds a non-finite value."""


def _label(variant: str) -> str:
    """Display name of a variant: the registry's label, or the name itself for a variant that is not
    installed here (results of a plug-in read on another machine still make a table)."""
    from .models.variants import label, names

    return label(variant) if variant in names() else variant


def contrast_key(pair: Contrast) -> str:
    """``"b-a"``: the contrast's name in the CSV, the JSON and dvc metrics."""
    a, b = pair
    return f"{b}-{a}"


def _read_metrics(path: Path, job: str) -> dict[str, float]:
    """The table's metrics of one job; refuses a damaged file or a non-finite value, naming both."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the evaluate step for {job} first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{path}: not valid JSON ({exc}; truncated?); re-run evaluate for {job}") from None
    if not isinstance(data, dict):
        raise MetricsError(f"{path}: expected a JSON object of metrics; re-run evaluate for {job}")
    out = {}
    for key in METRICS:
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise MetricsError(f"{path}: {key} = {value!r} is not a finite number; re-run evaluate for {job}")
        out[key] = float(value)
    return out


def collect(results: Path, classes: list[str], variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """Long table: one row per (class, variant, seed, metric) with its value.

    A metric is either in every job or in none (then :func:`undefined_metrics` names it in the
    table's notes); a job lacking a metric that other jobs have is refused, naming its file."""
    jobs = {}
    for variant in variants:
        for seed in seeds:
            for cls in classes:
                path = under_results("eval", results, variant=variant, seed=seed, cls=cls) / "metrics.json"
                jobs[(cls, variant, seed, path)] = _read_metrics(path, f"{cls}/{variant}/seed {seed}")
    present = [k for k in METRICS if any(k in m for m in jobs.values())]
    rows = []
    for (cls, variant, seed, path), metrics in jobs.items():
        for key in present:
            if key not in metrics:
                raise MetricsError(f"{path}: no {key!r}, which other jobs have; re-run evaluate for "
                                   f"{cls}/{variant}/seed {seed}")
            rows.append({"class": cls, "variant": variant, "seed": seed, "metric": key, "value": metrics[key]})
    return pd.DataFrame(rows, columns=["class", "variant", "seed", "metric", "value"])


def undefined_metrics(long: pd.DataFrame) -> list[str]:
    """Table metrics no job has (e.g. pixel metrics of an image-level-only dataset)."""
    return [k for k in METRICS if k not in set(long["metric"])]


def summarise(long: pd.DataFrame, classes: list[str], pairs: list[Contrast]) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (class, variant, metric), a ``Mean`` class
    (mean over classes per seed, then over seeds), and per contrast ``(a, b)`` the difference
    ``b - a`` as the variant ``"b-a"`` (:func:`contrast_key`)."""
    per_seed_mean = (long.groupby(["variant", "seed", "metric"], as_index=False)["value"].mean()
                     .assign(**{"class": "Mean"}))
    both = pd.concat([long, per_seed_mean], ignore_index=True)
    if pairs:
        wide = both.pivot_table(index=["class", "seed", "metric"], columns="variant", values="value")
        diffs = [(wide[b] - wide[a]).dropna().rename("value").reset_index().assign(variant=contrast_key((a, b)))
                 for a, b in pairs]
        both = pd.concat([both, *diffs], ignore_index=True)
    summary = (both.groupby(["class", "variant", "metric"], sort=False)["value"]
               .agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, n="count")
               .reset_index())
    order = {c: i for i, c in enumerate([*classes, "Mean"])}
    return summary.sort_values(["class", "variant", "metric"], key=lambda s: s.map(order) if s.name == "class"
                               else s, kind="stable").reset_index(drop=True)


def contrast_table(long: pd.DataFrame, pairs: list[Contrast], *, n_boot: int = 10000, seed: int = 0,
                   level: float = LEVEL) -> pd.DataFrame:
    """Per contrast ``(a, b)`` and metric, ``b - a`` over the (class, seed) pairs both variants have:
    mean (over classes of the per-class means), bootstrap interval resampling seeds within each
    class (from :data:`~skrd4ad.stats.MIN_PAIRS` pairs on, never with one seed per class; NaN
    otherwise), sign counts over pairs and classes, Holm-adjusted p over the contrast's metrics,
    verdict.

    Returns columns a, b, metric, mean_diff, ci_low, ci_high, n_pairs, n_better, n_worse,
    n_classes, classes_better, p_holm, verdict (one row per contrast and metric).
    """
    columns = ["a", "b", "metric", "mean_diff", "ci_low", "ci_high", "n_pairs", "n_better", "n_worse",
               "n_classes", "classes_better", "p_holm", "verdict"]
    wide = long.pivot_table(index=["metric", "class", "seed"], columns="variant", values="value")
    rows = []
    for a, b in pairs:
        metrics, diffs = [], []
        for metric in [k for k in METRICS if k in wide.index.get_level_values("metric")]:
            both = wide.loc[metric][[a, b]].dropna()
            if both.empty:
                continue
            metrics.append(metric)
            diffs.append(stratified_difference(both[a].to_numpy(), both[b].to_numpy(),
                                               both.index.get_level_values("class"), level=level,
                                               n_resamples=n_boot, seed=seed))
        for metric, d in zip(metrics, with_holm(diffs)):
            rows.append({"a": a, "b": b, "metric": metric, "mean_diff": d.mean,
                         "ci_low": np.nan if d.ci_low is None else d.ci_low,
                         "ci_high": np.nan if d.ci_high is None else d.ci_high,
                         "n_pairs": d.n_pairs, "n_better": d.n_positive, "n_worse": d.n_negative,
                         "n_classes": d.n_classes, "classes_better": d.classes_positive,
                         "p_holm": np.nan if d.p_holm is None else d.p_holm,
                         "verdict": d.verdict(_label(a), _label(b))})
    return pd.DataFrame(rows, columns=columns)


def ci_markdown(ci: pd.DataFrame, level: float = LEVEL) -> str:
    """One difference block per contrast: sign counts always, the interval and Holm p only from
    :data:`~skrd4ad.stats.MIN_PAIRS` pairs on and more than one seed per class (percentage points)."""
    pct = f"{100 * level:g}%"
    lines: list[str] = []
    for (a, b), block in ci.groupby(["a", "b"], sort=False):
        la, lb = _label(a), _label(b)
        lines += ["", f"{lb} − {la} over (class, seed) pairs, percentage points: mean over classes of the "
                  f"per-class mean difference; {pct} bootstrap interval resampling seeds within each class, "
                  f"from {MIN_PAIRS} pairs on; verdicts Holm-adjusted over the {len(block)} metrics of this "
                  "contrast (`skrd4ad compare` does the same):", "",
                  f"| Metric | Difference | {pct} CI | Pairs | {lb} better / worse | Classes favouring {lb} "
                  "| Holm p | Verdict |", "|---|---|---|---|---|---|---|---|"]
        for row in block.itertuples():
            interval = ("–" if np.isnan(row.ci_low) else
                        f"[{points(row.ci_low, signed=True)}, {points(row.ci_high, signed=True)}]")
            holm = "–" if np.isnan(row.p_holm) else f"{row.p_holm:.2g}"
            lines.append(f"| {METRICS[row.metric]} | {points(row.mean_diff, signed=True)} | {interval} | {row.n_pairs} | "
                         f"{row.n_better} / {row.n_worse} | {row.classes_better} of {row.n_classes} | {holm} | "
                         f"{row.verdict} |")
    return "\n".join(lines) + "\n" if lines else ""


def notes_markdown(long: pd.DataFrame) -> str:
    """The table's notes: metrics no job computed (never a column dropped for one variant)."""
    missing = undefined_metrics(long)
    if not missing:
        return ""
    return (f"\nNot computed by any job (image-level-only dataset: no masks): "
            f"{', '.join(METRICS[k] for k in missing)}.\n")


def summary_json(summary: pd.DataFrame, ci: pd.DataFrame) -> dict[str, Any]:
    """The DVC metric of the aggregate stage, numbers only.  ``dvc metrics show``/``diff`` flatten
    the keys with dots and sort them, so the top-level names are chosen to sort in reading order:
    ``mean.<variant>.<metric>`` (means over classes and seeds), then ``mean_diff.<b-a>.<metric>``
    (each contrast's difference), then ``mean_diff_stats.<b-a>.<metric>.{ci95_low, ci95_high,
    n_pairs, n_b_better, n_b_worse, classes_b_better, p_holm}`` (interval and p only where there
    is one)."""
    out: dict[str, Any] = {"mean": {}, "mean_diff": {}, "mean_diff_stats": {}}
    means = summary[summary["class"] == "Mean"]
    variants = set(summary["variant"]) - {contrast_key((a, b)) for a, b in zip(ci["a"], ci["b"])}
    for variant, grp in means[means["variant"].isin(variants)].groupby("variant", sort=False):
        out["mean"][variant] = {row.metric: round(float(row.mean), 6) for row in grp.itertuples()}
    for row in ci.itertuples():
        key = contrast_key((row.a, row.b))
        out["mean_diff"].setdefault(key, {})[row.metric] = round(float(row.mean_diff), 6)
        stats: dict[str, float | int] = {}
        if not np.isnan(row.ci_low):
            stats |= {"ci95_low": round(float(row.ci_low), 6), "ci95_high": round(float(row.ci_high), 6)}
        stats |= {"n_pairs": int(row.n_pairs), "n_b_better": int(row.n_better), "n_b_worse": int(row.n_worse),
                  "classes_b_better": int(row.classes_better)}
        if not np.isnan(row.p_holm):
            stats["p_holm"] = round(float(row.p_holm), 6)
        out["mean_diff_stats"].setdefault(key, {})[row.metric] = stats
    return {k: v for k, v in out.items() if v}


def write_plot_data(results: Path, classes: list[str], variants: list[str], seeds: list[int], out: Path) -> None:
    """The comparison plots of ``dvc plots`` (dvc.yaml's top-level ``plots:``): per class one CSV
    per kind (:data:`~skrd4ad.paths.PLOT_KINDS`) with the x column and one column per variant,
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
    text = points(mean)
    return f"{text} ± {points(std)}" if with_std and n > 1 else text


def table_frame(summary: pd.DataFrame, classes: list[str], variants: list[str],
                pairs: list[Contrast]) -> pd.DataFrame:
    """Display table: rows = classes + Mean, columns = (variant, metric) in percent for every
    variant, then (contrast, metric) for every contrast ``(a, b)`` as ``Δ b − a``."""
    with_std = bool((summary["n"] > 1).any())
    columns = [(v, _label(v)) for v in variants] + [(contrast_key(p), f"Δ {_label(p[1])} − {_label(p[0])}")
                                                    for p in pairs]
    out = pd.DataFrame(index=[*classes, "Mean"])
    for variant, label in columns:
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
                   label=_label(variant))
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
                ax.plot(frame["epoch"], frame["loss"], label=f"{_label(variant)} s{seed}")
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
            label = _label(variant)
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
            ax.set_title(f"{cls} — {_label(variant)}", fontsize=9)
    _save_figure(fig, path)


def aggregate(params: dict[str, Any], results: str | Path, tables: str | Path, figures: str | Path) -> pd.DataFrame:
    """Build every table and figure for ``params``' dataset from ``results`` (``results/<name>``).
    Returns the summary (class, variant, metric, mean, std, n)."""
    results, tables, figures = Path(results), Path(tables), Path(figures)
    dataset = params["data"]["name"] + report_tag(params)  # the tables' and figures' base name
    classes = list(params["data"]["classes"])
    variants = list(params["model"]["variants"])
    seeds = [int(s) for s in params["train"]["seeds"]]
    pairs = contrasts(params)
    long = collect(results, classes, variants, seeds)
    summary = summarise(long, classes, pairs)
    frame = table_frame(summary, classes, variants, pairs)
    ci = contrast_table(long, pairs)
    write_text_atomic(tables / f"{dataset}.md", to_markdown(frame) + notes_markdown(long) + ci_markdown(ci))
    write_text_atomic(tables / f"{dataset}.tex", to_latex(frame))
    write_text_atomic(tables / f"{dataset}.csv", summary.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(tables / f"{dataset}.json", summary_json(summary, ci))
    plots = under_results("plots", results, tag=report_tag(params))
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
