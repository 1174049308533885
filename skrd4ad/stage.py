"""How a stage script runs, the same under both engines: arguments and validated params (DVC
calls ``python workflow/scripts/<stage>.py``), logging to Snakemake's ``log:`` file or stderr,
the one-line error and the exit status, dying with the engine that started it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import format_error
from .lifeline import LOG_FORMAT, STAGE_LOGGER, TERMINATED, Terminated, attempt_log, die_with_parent, log_completed
from .params import load_params

__all__ = ["DEBUG_ENV", "STAGE_LOGGER", "parse_script_args", "setup_logging", "run_script", "out_stage", "count_files"]


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


def setup_logging(log_file: str | Path | None = None, *, debug: bool = False) -> None:
    """Log INFO lines to ``log_file`` (Snakemake's ``log:``) or stderr (DVC).

    With a log file, ERROR lines also go to stderr (the console) and the traceback of a failed
    stage goes into the file (DEBUG of :data:`STAGE_LOGGER`); on stderr alone the traceback is
    logged only with ``debug`` or ``SKRD4AD_DEBUG=1``.  Python warnings are logged too.  The file
    is appended to after a stopped or failed attempt of the job, below a separator line naming the
    new attempt, and starts afresh after a completed one (:func:`skrd4ad.lifeline.attempt_log`)."""
    debug = debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers[0].setLevel(logging.ERROR)
        handlers.insert(0, logging.FileHandler(attempt_log(log_file), mode="a"))
    formatter = logging.Formatter(LOG_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    logging.getLogger(STAGE_LOGGER).setLevel(logging.DEBUG if log_file or debug else logging.INFO)
    logging.captureWarnings(True)


def run_script(stage: str, body: Callable[[], object], log_file: str | Path | None = None) -> None:
    """Run a stage script's ``body`` the same way under both engines.

    Logging goes to ``log_file`` (Snakemake's ``log:``) or stderr (DVC), see :func:`setup_logging`.
    On success the last line is ``<stage> done in <time>``; on an error the traceback is logged at
    DEBUG (into the log file; on stderr only with ``--debug`` / ``SKRD4AD_DEBUG=1``), then the one
    line ``ERROR skrd4ad.stage.<stage>: <message>`` (also on the console), and the process exits
    with status 1 (130 when interrupted, 143 on SIGTERM). Under an engine the job dies with it
    (:func:`skrd4ad.lifeline.die_with_parent`).  Usage errors keep argparse's exit status 2.  The
    log file of a failed or stopped run is kept for the next attempt (:func:`setup_logging`)."""
    setup_logging(log_file)
    log = logging.getLogger(f"{STAGE_LOGGER}.{stage}")
    t0 = time.perf_counter()
    try:
        die_with_parent()  # a killed Snakemake/DVC takes its jobs along (no orphans)
        body()
    except SystemExit:
        raise
    except Terminated:
        log.error("%s", TERMINATED)
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        log.error("interrupted")
        raise SystemExit(130) from None
    except Exception as exc:
        log.debug("traceback of the error below:", exc_info=True)
        log.error("%s", format_error(exc))
        raise SystemExit(1) from None
    log.info("%s done in %.1f s", stage, time.perf_counter() - t0)
    if log_file:
        log_completed(log_file)


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


def count_files(folder: Path) -> int:
    """Number of files below ``folder`` (0 when it does not exist), for the stages' start lines."""
    return sum(1 for f in Path(folder).rglob("*") if f.is_file()) if Path(folder).is_dir() else 0
