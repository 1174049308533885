"""Glue shared by the Snakemake rules and the DVC stages: one params validator, one mapping
from params to typed configs, one set of output paths.

Both engines call the same ``workflow/scripts/*.py`` with the same paths; those scripts call
this module, so the two engines cannot drift apart in what they compute.
"""

from __future__ import annotations

import argparse
import copy
import errno
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .config import SCHEMA_PATH, EvalConfig, TrainConfig, from_dict
from .data import sources
from .models import variants

#: ``data.folder`` of the sources that are not the user's folder: a constant file every stage already depends on
#: (DVC's download depends on ``${data.folder}``; their code is tracked by the ``code`` stage's stamp instead).
NO_DATA_FOLDER = "data/params.ok"


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key and the problem."""


def _fill_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Insert schema ``default`` values for absent object properties, recursively."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def validate_params(params: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``params`` in place against the JSON schema, fill defaults, check cross-key rules;
    returns ``params``.  Raises :class:`ParamsError` naming the offending key."""
    import jsonschema  # pipeline extra; imported here so the core package does not need it

    # the variants' names and settings, the sources' names
    schema = sources.inject_schema(variants.inject_schema(yaml.safe_load(Path(schema_path).read_text())))
    _fill_defaults(params, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {where}: {err.message}")
        raise ParamsError("invalid params:\n" + "\n".join(lines))
    data, train = params["data"], params["train"]
    kind = data["dataset"]
    data.setdefault("name", kind)
    if data["folder"].startswith("~"):
        raise ParamsError(f"data.folder: {data['folder']!r}: DVC does not expand '~'; write the full path")
    if sources.get(kind).user_folder:
        if data["folder"] == NO_DATA_FOLDER:
            raise ParamsError(f"data.folder: dataset {kind!r} needs data.folder set to an MVTec-layout directory")
        if data["name"] in sources.names():
            raise ParamsError(f"data.name: give your folder dataset a name of its own (e.g. "
                              f"{Path(data['folder']).name!r}); {data['name']!r} would mix its outputs "
                              "with those of other datasets")
    elif data["name"] in sources.names() and data["name"] != kind:
        raise ParamsError(f"data.name: {data['name']!r} names the {data['name']} dataset's outputs, but "
                          f"data.dataset is {kind!r}; set data.name (e.g. {kind!r})")
    elif data["folder"] != NO_DATA_FOLDER:
        readers = [n for n in sources.names() if sources.get(n).user_folder]
        raise ParamsError(f"data.folder is only read for dataset {' / '.join(map(repr, readers))} (data.dataset is {kind!r}); "
                          f"set it to {NO_DATA_FOLDER} or null")
    source = sources.get(kind)
    unknown = [c for c in data["classes"] if source.downloadable and source.classes and c not in source.classes]
    if unknown:
        raise ParamsError(f"data.classes: {unknown[0]!r} is not a class of {kind} ({', '.join(source.classes)})")
    missing = [c for c in data["classes"] if c not in train["class_overrides"]]
    if train["class_overrides"] and missing:
        raise ParamsError(f"train.class_overrides: add an entry for every class in data.classes "
                          f"(use {{}} for none); missing: {', '.join(missing)}")
    missing_v = [v for v in params["model"]["variants"] if v not in train["variant_overrides"]]
    if train["variant_overrides"] and missing_v:
        raise ParamsError(f"train.variant_overrides: add an entry for every variant in model.variants "
                          f"(use {{}} for none); missing: {', '.join(missing_v)}")
    contrasts(params)  # raises naming report.baseline / report.contrasts
    return params


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path`` (``None`` when empty); a syntax error raises :class:`ParamsError`
    naming the file and line: ``<file>, line N, column C: <problem>; fix the YAML syntax there``."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        what = f"{context}, {problem}" if context else problem
        raise ParamsError(f"{path}{where}: invalid YAML ({what}); fix the syntax there") from None


#: The params the aggregate stage reads, dotted: dvc.yaml's aggregate ``params:`` and the Snakemake
#: rule's ``params:`` (common.smk ``aggregate_params``); tests/test_engine_sync.py checks both.
AGGREGATE_PARAM_KEYS = ("data.classes", "model.variants", "train.seeds", "report")


def contrasts(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The comparisons of the report as ``(a, b)`` pairs, each meaning ``b - a``: ``report.contrasts``
    as given, or when it is null/empty every other variant of ``model.variants`` against
    ``report.baseline`` (none with a single variant).  Raises :class:`ParamsError` naming the key."""
    variants = list(params["model"]["variants"])
    report = params.get("report") or {}
    given = report.get("contrasts") or []
    if not given:
        baseline = report.get("baseline")
        others = [v for v in variants if v != baseline]
        if len(variants) > 1 and baseline not in variants:
            raise ParamsError(f"report.baseline: {baseline!r} is not in model.variants {variants}; set "
                              "report.baseline to one of them or list report.contrasts")
        return [(baseline, v) for v in others] if baseline in variants else []
    pairs: list[tuple[str, str]] = []
    for i, pair in enumerate(given):
        a, b = pair
        bad = [v for v in (a, b) if v not in variants]
        if bad:
            raise ParamsError(f"report.contrasts[{i}]: {bad[0]!r} is not in model.variants {variants}; "
                              "add it there or drop the pair")
        if a == b or (a, b) in pairs:
            raise ParamsError(f"report.contrasts[{i}]: [{a}, {b}] is "
                              f"{'a variant against itself' if a == b else 'listed twice'}; drop it")
        pairs.append((a, b))
    return pairs


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate a params file (see :func:`validate_params`)."""
    return validate_params(_read_mapping(path, "params file not found (run from the repository root)"))


def _read_mapping(path: str | Path, not_found: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; :class:`ParamsError` naming the file if it is missing (``not_found``),
    not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: {not_found}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def merge_params(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on a copy of ``base``, as Snakemake merges ``--configfile`` files: mappings
    merge key by key, every other value (lists included) replaces the old one."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merged_params(base: str | Path, overlays: Sequence[str | Path]) -> dict[str, Any]:
    """``overlays`` (in order) merged onto the params file ``base`` and validated (nothing written);
    every error names the file (and line) or the key."""
    params = _read_mapping(base, "params file not found (run from the repository root)")
    for overlay in overlays:
        params = merge_params(params, _read_mapping(overlay, "overlay file not found"))
    validate_params(params)
    return params


def write_params(base: str | Path, overlays: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge ``overlays`` (in order) onto the params file ``base``, validate, and write the result
    with every default filled in (DVC tracks a key only when it is in the file) to ``out``."""
    from .io import write_text_atomic

    params = merged_params(base, overlays)
    header = f"# written by `skrd4ad params`: {Path(base).name} + {' + '.join(str(o) for o in overlays)}\n"
    write_text_atomic(out, header + yaml.safe_dump(params, sort_keys=False, default_flow_style=None, width=110))
    return params


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


def lookup(params: Mapping[str, Any], dotted: str) -> Any:
    """``params["a"]["b"]`` for ``"a.b"``; None where a key is absent."""
    value: Any = params
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """The :class:`EvalConfig` from the ``evaluate`` section."""
    return from_dict(EvalConfig, params["evaluate"], "evaluate")


# ----------------------------------------------------------------------------- paths
# Every output path, once.  The Snakemake rules use these templates as their patterns (the
# placeholders are wildcards); dvc.yaml spells them with ${...} and tests/test_pipeline.py checks
# that both engines declare exactly the same outputs.

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


def count_files(folder: Path) -> int:
    """Number of files below ``folder`` (0 when it does not exist), for the stages' start lines."""
    return sum(1 for f in Path(folder).rglob("*") if f.is_file()) if Path(folder).is_dir() else 0


def parse_script_args(parser: argparse.ArgumentParser,
                      argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Command-line side of a stage script (how DVC calls it): add ``--params`` and ``--debug``,
    parse, log to stderr, and return the arguments with the validated params."""
    parser.add_argument("--params", default="params.yaml", help="params file (validated against the schema)")
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, log the traceback too (or set {DEBUG_ENV}=1)")
    args = parser.parse_args(argv)
    setup_logging(debug=args.debug)
    return args, load_params(args.params)


#: Environment variable that makes stage scripts log the traceback of an error on stderr too.
DEBUG_ENV = "SKRD4AD_DEBUG"
#: Parent logger of the stage scripts' own lines (``skrd4ad.stage.<stage>``).
STAGE_LOGGER = "skrd4ad.stage"


def setup_logging(log_file: str | Path | None = None, *, debug: bool = False) -> None:
    """Log INFO lines to ``log_file`` (Snakemake's ``log:``) or stderr (DVC).

    With a log file, ERROR lines also go to stderr (the console) and the traceback of a failed
    stage goes into the file (DEBUG of :data:`STAGE_LOGGER`); on stderr alone the traceback is
    logged only with ``debug`` or ``SKRD4AD_DEBUG=1``.  Python warnings are logged too."""
    debug = debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers[0].setLevel(logging.ERROR)
        handlers.insert(0, logging.FileHandler(log_file, mode="w"))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    logging.getLogger(STAGE_LOGGER).setLevel(logging.DEBUG if log_file or debug else logging.INFO)
    logging.captureWarnings(True)


#: Exceptions whose message is written for the user (it names the file or key and the fix):
#: shown as it is; any other exception is shown with its type name (probably a bug).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, ArithmeticError, EOFError)


def format_error(exc: BaseException) -> str:
    """One line describing ``exc`` for the user (no traceback), shared by the CLI and the stage
    scripts: its message with line breaks folded into ``; ``, hints for a full disk or memory,
    and the exception type for unexpected errors."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and str(exc).startswith(
            ("no space left on device while writing", "disk quota exceeded while writing")):  # io.DiskFullError
        return f"{exc}: free some disk space (or write the outputs elsewhere) and run again"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on device{where}: free some disk space (or write the outputs elsewhere) and run again"
    if isinstance(exc, MemoryError):
        return "out of memory: lower batch_size (or image_size), or close other programs"
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        first = str(exc).strip().split(". ")[0]
        return f"{first}: lower batch_size, use amp bf16, or free the GPU"
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"KeyError: missing key {exc.args[0]!r}"
    else:
        text = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, USER_ERRORS):
            text = f"{type(exc).__name__}: {text}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "invalid params:\n  a: ...\n  b: ..."
        lines = [f"{lines[0]} {lines[1]}", *lines[2:]]
    return "; ".join(lines)


def run_script(stage: str, body: Callable[[], object], log_file: str | Path | None = None) -> None:
    """Run a stage script's ``body`` the same way under both engines.

    Logging goes to ``log_file`` (Snakemake's ``log:``) or stderr (DVC), see :func:`setup_logging`.
    On success the last line is ``<stage> done in <time>``; on an error the traceback is logged at
    DEBUG (into the log file; on stderr only with ``--debug`` / ``SKRD4AD_DEBUG=1``), then the one
    line ``ERROR skrd4ad.stage.<stage>: <message>`` (also on the console), and the process exits
    with status 1 (130 when interrupted, 143 on SIGTERM). Under an engine the job dies with it
    (:func:`skrd4ad.lifeline.die_with_parent`).  Usage errors keep argparse's exit status 2."""
    from .lifeline import Terminated, die_with_parent

    setup_logging(log_file)
    log = logging.getLogger(f"{STAGE_LOGGER}.{stage}")
    t0 = time.perf_counter()
    try:
        die_with_parent()  # a killed Snakemake/DVC takes its jobs along (no orphans)
        body()
    except SystemExit:
        raise
    except Terminated:
        log.error("terminated (SIGTERM): stopped; outputs are either complete or absent, training resumes "
                  "at the next run")
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        log.error("interrupted")
        raise SystemExit(130) from None
    except Exception as exc:
        log.debug("traceback of the error below:", exc_info=True)
        log.error("%s", format_error(exc))
        raise SystemExit(1) from None
    log.info("%s done in %.1f s", stage, time.perf_counter() - t0)


def out_stage(stage: str, run: Callable[[dict[str, Any], Path], None], script_globals: dict[str, Any]) -> None:
    """Entry point of a stage script whose only argument is its output: under Snakemake (``snakemake``
    in the script's globals) ``run(config, output[0])``; run as ``python script.py --out X`` (DVC)
    ``run(params, X)``; imported, nothing."""
    if "snakemake" in script_globals:
        sm = script_globals["snakemake"]
        run_script(stage, lambda: run(sm.config, Path(sm.output[0])), sm.log[0])
    elif script_globals.get("__name__") == "__main__":
        def main() -> None:
            parser = argparse.ArgumentParser(description=script_globals.get("__doc__"))
            parser.add_argument("--out", type=Path, required=True)
            args, params = parse_script_args(parser)
            run(params, args.out)

        run_script(stage, main)
