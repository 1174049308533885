"""Stage `validate_params`: check params.yaml before any other stage runs.

DVC removes a stage's outputs before running its command, so a bad value found by the train
script would cost the checkpoint and loss log first.  This stage is DVC's first (every other
stage depends on its output): an invalid params.yaml stops ``dvc repro`` here, before anything
is removed, with one line naming the key (``invalid params: train.epochs: ...``, the message
Snakemake gives while parsing).
Its output is constant, so a valid change re-runs only the stages that read the changed keys.
Snakemake validates while parsing the Snakefile; its job only writes the same file.
"""

import argparse
import logging
from pathlib import Path

from skrd4ad import pipeline

log = logging.getLogger(f"{pipeline.STAGE_LOGGER}.validate_params")


def write_ok(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("ok\n")
    log.info("params are valid: wrote %s", out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args, _ = pipeline.parse_script_args(parser, argv)  # a bad value raises ParamsError: one line, no traceback
    write_ok(args.out)


if "snakemake" in globals():
    sm = snakemake  # noqa: F821
    pipeline.run_script("validate_params", lambda: write_ok(Path(sm.output[0])), sm.log[0])
elif __name__ == "__main__":
    pipeline.run_script("validate_params", main)
