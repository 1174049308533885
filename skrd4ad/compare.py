"""Compare metric by metric: two experiments (``skrd4ad compare A B``) or two variants of one
experiment (``skrd4ad compare A --contrast BASE,OTHER``).

A and B are each a results directory, a git revision or a ``dvc exp`` name (resolved in that
order).  Across experiments, jobs ``<name>/eval/<variant>/seed<seed>/<class>/metrics.json`` present
on both sides are paired; within one, the jobs of the two variants with the same (name, class,
seed).  Per (name, variant or contrast, metric), B − A gets the statistics of the aggregate
(:func:`skrd4ad.stats.stratified_difference`: bootstrap of seeds within each class, verdicts
Holm-adjusted over the metrics of that row group).  The metrics judged are the table's
(:data:`skrd4ad.stats.JUDGED_METRICS`), so the Holm family and the verdicts are the table's too;
numbers are printed by the table's rounding rule (:func:`skrd4ad.stats.points`).  A judged key
that is a number in some jobs and not in another is an error naming that file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import paths
from .stats import JUDGED_METRICS, PairedDifference, points, stratified_difference, with_holm

JobKey = tuple[str, str, str, int]  # (name, variant, class, seed)


@dataclass(frozen=True)
class NotNumber:
    """A metrics.json value that is not a number, and the file it is in."""

    value: object
    where: str


Jobs = dict[JobKey, dict[str, "float | NotNumber"]]  # job -> {key: value}

#: A job's metrics file, relative to ``results/`` (from the one path table, paths.PATHS).
_JOB = re.compile(paths.path_regex("eval").removeprefix("results/") + r"/metrics\.json")
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

def _numeric(text: str, where: str) -> dict[str, float | NotNumber]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompareError(f"{where}: not valid JSON ({exc}); re-run evaluate for that job") from None
    if not isinstance(data, dict):
        raise CompareError(f"{where}: expected a JSON object")
    return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else NotNumber(v, where)
            for k, v in data.items()}


def _add_job(jobs: Jobs, rel: str, text: str, where: str) -> None:
    m = _JOB.fullmatch(rel)
    if m:
        jobs[(m["name"], m["variant"], m["cls"], int(m["seed"]))] = _numeric(text, where)


def _read_dir(root: Path) -> Jobs:
    """``root`` is ``results/`` (``<name>/eval/...`` inside) or ``results/<name>`` (``eval/...``)."""
    jobs: Jobs = {}
    below = paths.path_glob("eval").removeprefix("results/") + "/metrics.json"  # */eval/*/seed*/*/metrics.json
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


def _metric_order(metric: str) -> int:
    return list(JUDGED_METRICS).index(metric)


def _number(value: float | NotNumber | None, metric: str) -> float | None:
    """The value as a number (None when absent); a non-number is an error naming file and key."""
    if isinstance(value, NotNumber):
        raise CompareError(f"{value.where}: {metric} = {value.value!r} is not a number (other jobs have a "
                           "number there); re-run evaluate for that job")
    return value


def compare(a: str, b: str, *, repo: str | Path = ".", names: Sequence[str] | None = None,
            variants: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
            level: float = 0.95, seed: int = 0) -> CompareResult:
    """B − A on every metric of the jobs both sides share; ``names``/``variants``/``metrics`` are
    glob patterns (None: all).  Raises :class:`CompareError` when there is nothing to compare."""
    src_a, src_b = resolve(a, repo), resolve(b, repo)
    jobs_a, jobs_b = ({k: v for k, v in s.jobs.items() if _selected(k[0], names) and _selected(k[1], variants)}
                      for s in (src_a, src_b))
    return _compare_jobs(src_a.description, src_b.description, jobs_a, jobs_b, metrics, level, seed)


def compare_variants(source: str, a: str, b: str, *, repo: str | Path = ".", names: Sequence[str] | None = None,
                     metrics: Sequence[str] | None = None, level: float = 0.95, seed: int = 0) -> CompareResult:
    """Variant ``b`` − variant ``a`` within one experiment ``source``, paired over (name, class,
    seed); rows carry the contrast as their variant, ``"b-a"``.  Same statistics as :func:`compare`."""
    if a == b:
        raise CompareError(f"--contrast {a},{b}: a variant against itself; name two different variants")
    src = resolve(source, repo)
    contrast = f"{b}-{a}"
    sides = []
    for variant in (a, b):
        jobs = {(n, contrast, c, s): m for (n, v, c, s), m in src.jobs.items() if v == variant and _selected(n, names)}
        if not jobs:
            found = sorted({v for n, v, _, _ in src.jobs if _selected(n, names)})
            where = f" with --name {', '.join(names)}" if names else ""
            raise CompareError(f"--contrast {a},{b}: no job of variant {variant!r} in {src.description}{where} "
                               f"(variants there{where}: {', '.join(found) or 'none'})")
        sides.append(jobs)
    return _compare_jobs(f"{src.description}, variant {a}", f"{src.description}, variant {b}", *sides,
                         metrics, level, seed)


def _compare_jobs(desc_a: str, desc_b: str, jobs_a: Jobs, jobs_b: Jobs, metrics: Sequence[str] | None,
                  level: float, seed: int) -> CompareResult:
    """The rows of B − A over the jobs both sides share (keys (name, variant, class, seed))."""
    shared = sorted(jobs_a.keys() & jobs_b.keys())
    if not shared:
        raise CompareError(f"no job in both sides: A = {desc_a} has {_describe(jobs_a)}; "
                           f"B = {desc_b} has {_describe(jobs_b)}")
    result = CompareResult(desc_a, desc_b, level, len(shared))
    for label, only in (("A", jobs_a.keys() - jobs_b.keys()), ("B", jobs_b.keys() - jobs_a.keys())):
        if only:
            n, v, c, s = min(only)
            result.notes.append(f"{len(only)} job(s) only in {label}, not compared (e.g. {n}/{v}/seed{s}/{c})")

    for name, variant in sorted({k[:2] for k in shared}):
        keys = [k for k in shared if k[:2] == (name, variant)]
        all_metrics = {m for k in keys for side in (jobs_a[k], jobs_b[k]) for m, v in side.items()
                       if m in JUDGED_METRICS and isinstance(v, float) and _selected(m, metrics)}
        group: list[Row] = []
        for metric in sorted(all_metrics, key=_metric_order):
            values = [(k[2], _number(jobs_a[k].get(metric), metric), _number(jobs_b[k].get(metric), metric))
                      for k in keys]
            pairs = [(c, x, y) for c, x, y in values if x is not None and y is not None]
            where = f"{name}/{variant} {metric}"
            finite = [(c, x, y) for c, x, y in pairs if np.isfinite(x) and np.isfinite(y)]
            if len(finite) < len(pairs):
                result.notes.append(f"{where}: {len(pairs) - len(finite)} pair(s) with NaN/inf dropped")
            one_sided = len(values) - len(pairs)
            if one_sided:
                result.notes.append(f"{where}: on one side only in {one_sided} of {len(keys)} shared job(s)")
            if not finite:
                continue
            classes = [c for c, _, _ in finite]
            xa, xb = np.array([(x, y) for _, x, y in finite]).T
            group.append(Row(name, variant, metric, float(xa.mean()), float(xb.mean()),
                             stratified_difference(xa, xb, classes, level=level, seed=seed)))
        holm = with_holm([r.diff for r in group])  # the family: this (name, variant)'s metrics
        result.rows += [dataclasses.replace(r, diff=d) for r, d in zip(group, holm)]
    if not result.rows:
        raise CompareError(f"no metric to compare in the {len(shared)} shared job(s)"
                           + (f" matching --metric {', '.join(metrics)}" if metrics else "")
                           + f"; compare judges the quality metrics {', '.join(JUDGED_METRICS)}")
    return result


# ---------------------------------------------------------------- output

def summary(result: CompareResult) -> str:
    """One line: how many rows are B higher / lower / undecided / without an interval."""
    counts = {"B higher": 0, "B lower": 0, "no detectable difference": 0, "too few pairs": 0,
              "one seed per class": 0}
    names = {1: "B higher", -1: "B lower", 0: "no detectable difference", None: "too few pairs"}
    for row in result.rows:
        counts["one seed per class" if row.diff.one_seed_per_class else names[row.diff.direction]] += 1
    parts = ", ".join(f"{k}: {v}" for k, v in counts.items())
    return (f"{len(result.rows)} metric row(s) over {result.n_shared_jobs} shared job(s); {parts} "
            f"({100 * result.level:g}% bootstrap CI of B − A resampling seeds within each class; verdicts "
            "Holm-adjusted over the metrics of each name/variant)")


def _cells(row: Row) -> list[str]:
    d = row.diff
    if row.fraction:  # percentage points
        val, dif = points, (lambda v: points(v, signed=True))
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
             "n_classes": r.diff.n_classes, "classes_positive": r.diff.classes_positive,
             "p_value": r.diff.p_value, "p_holm": r.diff.p_holm, "verdict": r.diff.verdict(a="A", b="B")} for r in result.rows]
    return {"a": result.a, "b": result.b, "level": result.level, "n_shared_jobs": result.n_shared_jobs,
            "rows": rows, "notes": result.notes, "summary": summary(result)}
