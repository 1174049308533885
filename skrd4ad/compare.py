"""Compare two experiments metric by metric: ``skrd4ad compare A B``.

A and B are each a results directory, a git revision or a ``dvc exp`` name (resolved in that
order).  Jobs ``<name>/eval/<variant>/seed<seed>/<class>/metrics.json`` present on both sides are
paired, and per (name, variant, metric) the mean of B − A gets a paired bootstrap interval
(:func:`skrd4ad.stats.paired_difference`).  Non-numeric values in metrics.json (the old
``provenance`` block) are ignored.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import pipeline
from .stats import PairedDifference, paired_difference

JobKey = tuple[str, str, str, int]  # (name, variant, class, seed)
Jobs = dict[JobKey, dict[str, float]]  # job -> {metric: value}

#: A job's metrics file, relative to ``results/`` (from the one path table, pipeline.PATHS).
_JOB = re.compile(pipeline.path_regex("eval").removeprefix("results/") + r"/metrics\.json")
_FIRST = ("image_auroc", "pixel_auroc", "aupro", "aupro_seed", "image_f1_max", "pixel_f1_max")
FORMS = "an existing results directory, a git revision or a `dvc exp` name"


class CompareError(ValueError):
    """A source cannot be resolved or the two sides have nothing in common."""


@dataclass(frozen=True)
class Source:
    """One side of the comparison: what the argument resolved to, and its jobs."""

    arg: str
    description: str  # e.g. "HEAD~1 (git 1a2b3c4d5e)"
    jobs: Jobs


@dataclass(frozen=True)
class Row:
    """One (name, variant, metric): means of A and B over the shared pairs and B − A."""

    name: str
    variant: str
    metric: str
    mean_a: float
    mean_b: float
    diff: PairedDifference

    @property
    def fraction(self) -> bool:
        """True when the metric is a fraction in [0, 1] (printed in percentage points)."""
        return "threshold" not in self.metric and all(0.0 <= v <= 1.0 for v in (self.mean_a, self.mean_b))


@dataclass
class CompareResult:
    a: str  # description of A
    b: str  # description of B
    level: float
    n_shared_jobs: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading sources

def _numeric(text: str, where: str) -> dict[str, float]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompareError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{where}: expected a JSON object")
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _add_job(jobs: Jobs, rel: str, text: str, where: str) -> None:
    m = _JOB.fullmatch(rel)
    if m:
        jobs[(m["name"], m["variant"], m["cls"], int(m["seed"]))] = _numeric(text, where)


def _read_dir(root: Path) -> Jobs:
    """``root`` is ``results/`` (``<name>/eval/...`` inside) or ``results/<name>`` (``eval/...``)."""
    jobs: Jobs = {}
    below = pipeline.path_glob("eval").removeprefix("results/") + "/metrics.json"  # */eval/*/seed*/*/metrics.json
    if (root / below.split("/")[1]).is_dir():  # results/<name>: the jobs one level down
        for f in sorted(root.glob(below.split("/", 1)[1])):
            _add_job(jobs, f"{root.resolve().name}/{f.relative_to(root).as_posix()}", f.read_text(), str(f))
    else:
        for f in sorted(root.glob(below)):
            _add_job(jobs, f.relative_to(root).as_posix(), f.read_text(), str(f))
    return jobs


def _git(repo: str | Path, *args: str) -> str | None:
    """stdout of ``git -C repo args...``, None when git fails or is not installed."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def _read_git(repo: str | Path, sha: str) -> Jobs:
    jobs: Jobs = {}
    listing = _git(repo, "ls-tree", "-r", "--name-only", "--full-tree", sha, "--", "results") or ""
    for path in listing.splitlines():
        rel = path.removeprefix("results/")
        if _JOB.fullmatch(rel):
            text = _git(repo, "show", f"{sha}:{path}")
            if text is None:
                raise CompareError(f"git show {sha[:10]}:{path} failed")
            _add_job(jobs, rel, text, f"{sha[:10]}:{path}")
    return jobs


def _exp_ref(repo: str | Path, name: str) -> str | None:
    """The ``refs/exps/<xx>/<yyyy>/<name>`` ref of a dvc experiment, None when there is none."""
    refs = (_git(repo, "for-each-ref", "--format=%(refname)", "refs/exps") or "").split()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if len(found) > 1:
        raise CompareError(f"dvc exp name {name!r} is ambiguous: {', '.join(found)}")
    return found[0] if found else None


def resolve(arg: str, repo: str | Path = ".") -> Source:
    """Existing path (as given, then relative to ``repo``), else git revision, else dvc exp name."""
    for path in (Path(arg), Path(repo) / arg):
        if path.is_dir():
            return Source(arg, f"{arg} (directory {path.resolve()})", _read_dir(path))
    if not arg.startswith("-"):
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{arg}^{{commit}}")
        if sha:
            sha = sha.strip()
            return Source(arg, f"{arg} (git {sha[:10]})", _read_git(repo, sha))
        ref = _exp_ref(repo, arg)
        if ref:
            sha = (_git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}") or "").strip()
            if not sha:
                raise CompareError(f"dvc exp ref {ref} does not point to a commit")
            return Source(arg, f"{arg} (dvc exp {ref}, git {sha[:10]})", _read_git(repo, sha))
    raise CompareError(f"{arg!r} is not {FORMS} (git repository: {Path(repo).resolve()})")


# ---------------------------------------------------------------- comparing

def _selected(value: str, patterns: Sequence[str] | None) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _describe(jobs: Iterable[JobKey]) -> str:
    """E.g. ``synthetic/rd4ad: 3 classes, seeds 111, 222; ...`` (or "no jobs")."""
    groups: dict[tuple[str, str], tuple[set[str], set[int]]] = {}
    for name, variant, cls, seed in jobs:
        classes, seeds = groups.setdefault((name, variant), (set(), set()))
        classes.add(cls)
        seeds.add(seed)
    if not groups:
        return "no jobs"
    return "; ".join(f"{n}/{v}: {len(c)} class(es), seed(s) {', '.join(map(str, sorted(s)))}"
                     for (n, v), (c, s) in sorted(groups.items()))


def _metric_order(metric: str) -> tuple[int, str]:
    return (_FIRST.index(metric) if metric in _FIRST else len(_FIRST), metric)


def compare(a: str, b: str, *, repo: str | Path = ".", names: Sequence[str] | None = None,
            variants: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
            level: float = 0.95, seed: int = 0) -> CompareResult:
    """B − A on every metric of the jobs both sides share; ``names``/``variants``/``metrics`` are
    glob patterns (None: all).  Raises :class:`CompareError` when there is nothing to compare."""
    src_a, src_b = resolve(a, repo), resolve(b, repo)
    jobs_a, jobs_b = ({k: v for k, v in s.jobs.items() if _selected(k[0], names) and _selected(k[1], variants)}
                      for s in (src_a, src_b))
    shared = sorted(jobs_a.keys() & jobs_b.keys())
    if not shared:
        raise CompareError(f"no job in both sides: A = {src_a.description} has {_describe(jobs_a)}; "
                           f"B = {src_b.description} has {_describe(jobs_b)}")
    result = CompareResult(src_a.description, src_b.description, level, len(shared))
    for label, only in (("A", jobs_a.keys() - jobs_b.keys()), ("B", jobs_b.keys() - jobs_a.keys())):
        if only:
            n, v, c, s = min(only)
            result.notes.append(f"{len(only)} job(s) only in {label}, not compared (e.g. {n}/{v}/seed{s}/{c})")

    for name, variant in sorted({k[:2] for k in shared}):
        keys = [k for k in shared if k[:2] == (name, variant)]
        all_metrics = {m for k in keys for m in (*jobs_a[k], *jobs_b[k]) if _selected(m, metrics)}
        for metric in sorted(all_metrics, key=_metric_order):
            pairs = [(jobs_a[k][metric], jobs_b[k][metric]) for k in keys
                     if metric in jobs_a[k] and metric in jobs_b[k]]
            where = f"{name}/{variant} {metric}"
            finite = [(x, y) for x, y in pairs if np.isfinite(x) and np.isfinite(y)]
            if len(finite) < len(pairs):
                result.notes.append(f"{where}: {len(pairs) - len(finite)} pair(s) with NaN/inf dropped")
            one_sided = sum((metric in jobs_a[k]) != (metric in jobs_b[k]) for k in keys)
            if one_sided:
                result.notes.append(f"{where}: on one side only in {one_sided} of {len(keys)} shared job(s)")
            if not finite:
                continue
            xa, xb = np.array(finite).T
            result.rows.append(Row(name, variant, metric, float(xa.mean()), float(xb.mean()),
                                   paired_difference(xa, xb, level=level, seed=seed)))
    if not result.rows:
        raise CompareError(f"no metric to compare in the {len(shared)} shared job(s)"
                           + (f" matching --metric {', '.join(metrics)}" if metrics else ""))
    return result


# ---------------------------------------------------------------- output

def summary(result: CompareResult) -> str:
    """One line: how many rows are B higher / lower / undecided / without an interval."""
    counts = {"B higher": 0, "B lower": 0, "no detectable difference": 0, "too few pairs": 0}
    for row in result.rows:
        d = row.diff
        key = ("too few pairs" if not d.has_interval else "B higher" if d.ci_low > 0
               else "B lower" if d.ci_high < 0 else "no detectable difference")
        counts[key] += 1
    parts = ", ".join(f"{k}: {v}" for k, v in counts.items())
    return (f"{len(result.rows)} metric row(s) over {result.n_shared_jobs} shared job(s); {parts} "
            f"({100 * result.level:g}% paired bootstrap CI of B − A)")


def _cells(row: Row) -> list[str]:
    d = row.diff
    if row.fraction:  # percentage points
        val, dif = (lambda v: f"{100 * v:.2f}"), (lambda v: f"{100 * v:+.2f}")
    else:
        val, dif = (lambda v: f"{v:.4g}"), (lambda v: f"{v:+.4g}")
    ci = f"[{dif(d.ci_low)}, {dif(d.ci_high)}]" if d.has_interval else "–"
    return [row.name, row.variant, row.metric, val(row.mean_a), val(row.mean_b), dif(d.mean), ci,
            str(d.n_pairs), str(d.n_positive), str(d.n_negative), d.verdict(a="A", b="B")]


def _header(level: float) -> list[str]:
    return ["name", "variant", "metric", "mean A", "mean B", "B − A", f"{100 * level:g}% CI", "pairs",
            "B>A", "B<A", "verdict"]


def _preamble(result: CompareResult) -> list[str]:
    return [f"A: {result.a}", f"B: {result.b}",
            "Fractions in percentage points (other metrics as is); pairs = shared (class, seed) jobs."]


def format_text(result: CompareResult) -> str:
    """Aligned plain-text table with the A/B descriptions, notes and the summary line."""
    table = [_header(result.level)] + [_cells(r) for r in result.rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    right = {3, 4, 5, 6, 7, 8, 9}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"note: {n}" for n in result.notes]
    return "\n".join([*_preamble(result), "", *lines, "", *notes, summary(result)]) + "\n"


def format_markdown(result: CompareResult) -> str:
    """The same table as Markdown."""
    header = _header(result.level)
    lines = [f"- {line}" for line in _preamble(result)] + [""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if 3 <= i <= 9 else "---"
                                                             for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result.rows]
    lines += [""] + [f"- note: {n}" for n in result.notes] + ([""] if result.notes else []) + [summary(result)]
    return "\n".join(lines) + "\n"


def to_json(result: CompareResult) -> dict:
    """Machine-readable form: raw values (fractions, not percent), one dict per row."""
    rows = [{"name": r.name, "variant": r.variant, "metric": r.metric, "mean_a": r.mean_a, "mean_b": r.mean_b,
             "diff": r.diff.mean, "ci_low": r.diff.ci_low, "ci_high": r.diff.ci_high, "n_pairs": r.diff.n_pairs,
             "n_positive": r.diff.n_positive, "n_negative": r.diff.n_negative, "n_zero": r.diff.n_zero,
             "verdict": r.diff.verdict(a="A", b="B")} for r in result.rows]
    return {"a": result.a, "b": result.b, "level": result.level, "n_shared_jobs": result.n_shared_jobs,
            "rows": rows, "notes": result.notes, "summary": summary(result)}
