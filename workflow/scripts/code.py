"""Stage `code` (DVC): a stamp of each variant's and the dataset source's own code, as it is now.

DVC re-runs a stage when a file it lists changes, but dvc.yaml cannot name a different path per
variant, and a plug-in may live outside the repository.  This stage runs on every ``dvc repro``
(``always_changed``; about a second) and writes ``data/code/variant-<name>.json`` for each
variant of ``model.variants`` and ``data/code/source-<name>.json`` for ``data.dataset``: the
sha256 of each file of that plug-in's own code (:mod:`skrd4ad.jobcode`).  train and evaluate
depend on their variant's stamp, download and prepare on the source's, so editing RD++'s loss
re-runs the RD++ jobs only, and a stamp written again with the same content re-runs nothing.
Snakemake reads the same digests as rule params (``common.smk``) and needs no such stage.
"""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("code", globals())  # first: a SIGTERM during the imports below ends with one line

import logging
from pathlib import Path
from typing import Any

from skrd4ad import jobcode
from skrd4ad.stage import STAGE_LOGGER, out_stage

log = logging.getLogger(f"{STAGE_LOGGER}.code")


def write_stamps(params: dict[str, Any], out: Path) -> None:
    from skrd4ad.io import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    wanted = [("variant", v) for v in params["model"]["variants"]] + [("source", params["data"]["dataset"])]
    for kind, name in wanted:
        stamp = jobcode.own_stamp(kind, name)
        write_json_atomic(out / jobcode.stamp_name(kind, name), stamp)
        log.info("%s %s: %d file(s), own code sha256 %s", kind, name, len(stamp["files"]), stamp["own_sha256"][:12])


out_stage("code", write_stamps, globals())
