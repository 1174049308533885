"""Stage `validate_params`: check params.yaml before any other stage runs.

DVC removes a stage's outputs before running its command, so a bad value found by the train
script would cost the checkpoint and loss log first.  This stage is DVC's first (every other
stage depends on its output): an invalid params.yaml stops ``dvc repro`` here, before anything
is removed, with one line naming the key (``invalid params: train.epochs: ...``, the message
Snakemake gives while parsing).
Its output is constant, so a valid change re-runs only the stages that read the changed keys.
Snakemake validates while parsing the Snakefile; its job only writes the same file.
"""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("validate_params", globals())  # first: a SIGTERM during the imports below ends with one line

import logging
from pathlib import Path

from skrd4ad.stage import STAGE_LOGGER, out_stage

log = logging.getLogger(f"{STAGE_LOGGER}.validate_params")


def write_ok(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("ok\n")
    log.info("params are valid: wrote %s", out)


# a bad params.yaml raises ParamsError while the arguments are read: one line, no traceback
out_stage("validate_params", lambda params, out: write_ok(out), globals())
