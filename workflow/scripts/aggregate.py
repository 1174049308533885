"""Stage `aggregate`: the comparison table (Markdown, CSV, LaTeX) and figures over all jobs."""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("aggregate", globals())  # first: a SIGTERM during the imports below ends with one line

import argparse
from pathlib import Path
from typing import Any

from skrd4ad import paths
from skrd4ad.stage import parse_script_args, run_script


def run(params: dict[str, Any], results: Path, tables: Path, figures: Path) -> None:
    import logging

    from skrd4ad.aggregate import aggregate

    logging.getLogger("skrd4ad.stage.aggregate").info(
        "aggregating %s: %d classes x %d variants x %d seeds into %s and %s", results, len(params["data"]["classes"]),
        len(params["model"]["variants"]), len(params["train"]["seeds"]), tables, figures)
    aggregate(params, results, tables, figures)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, required=True, help="results/<name>")
    parser.add_argument("--tables", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    args, params = parse_script_args(parser, argv)
    run(params, args.results, args.tables, args.figures)


if "snakemake" in globals():
    sm = snakemake  # noqa: F821
    run_script("aggregate", lambda: run(sm.config, Path(paths.path("results", name=sm.wildcards.name)),
                                                 Path(sm.output.md).parent, Path(sm.output.variants).parent),
                        sm.log[0])
elif __name__ == "__main__":
    run_script("aggregate", main)
