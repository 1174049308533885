"""Stage `prepare`: one class validated, resized once and cached as uint8 arrays + manifest."""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("prepare", globals())  # first: a SIGTERM during the imports below ends with one line

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from skrd4ad.stage import count_files, parse_script_args, run_script

log = logging.getLogger("skrd4ad.stage.prepare")


def run(params: dict[str, Any], raw: Path, cls: str, out: Path) -> None:
    from skrd4ad.data.prepare import prepare_class

    size = params["prepare"]["image_size"]
    log.info("preparing %s from %s: %d train / %d test files, %d px, %d threads", cls, Path(raw) / cls,
             count_files(Path(raw) / cls / "train"), count_files(Path(raw) / cls / "test"), size,
             os.cpu_count() or 1)
    prepare_class(raw, cls, out, image_size=size, image_level_only=params["data"]["image_level_only"],
                  allow_empty_masks=params["prepare"]["allow_empty_masks"],
                  val_fraction=params["prepare"]["val_fraction"], progress=False)
    meta = json.loads((Path(out) / "meta.json").read_text())
    log.info("prepared %s into %s: %d train, %d validation and %d test images (%d skipped), %s", cls, out,
             meta["n_train"], meta.get("n_val", 0), meta["n_test"], meta["n_skipped"], "image level only" if meta["image_level_only"] else "with masks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--class", dest="cls", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args, params = parse_script_args(parser, argv)
    run(params, args.raw, args.cls, args.out)


if "snakemake" in globals():
    sm = snakemake  # noqa: F821
    run_script("prepare", lambda: run(sm.config, Path(sm.input.raw), sm.wildcards.cls, Path(sm.output[0])),
                        sm.log[0])
elif __name__ == "__main__":
    run_script("prepare", main)
