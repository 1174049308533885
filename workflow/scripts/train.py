"""Stage `train`: one (class, variant, seed) model; resumes after an interruption.

Logs its start line (images, epochs, device, threads), one line per epoch (loss, ETA) and any
error as one ``ERROR`` line: into Snakemake's log file, or on stderr under DVC."""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("train", globals())  # first: a SIGTERM during the imports below ends with one line

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

from skrd4ad.jobparams import train_config
from skrd4ad.stage import parse_script_args, run_script


def run(params: dict[str, Any], data: Path, cls: str, variant: str, seed: int, model: Path, log: Path,
        threads: int | None = None) -> None:
    import torch

    from skrd4ad.train import train

    from skrd4ad.gpu_slots import gpu_slot
    from skrd4ad.teacher_cache import JOB_THREADS_ENV

    if threads:
        torch.set_num_threads(threads)
        os.environ[JOB_THREADS_ENV] = str(threads)  # jobs that may run beside it share the teacher cache's budget
    config = train_config(params, cls, variant, seed)
    # one GPU per concurrent job (Snakemake's --resources gpu=N does not pick devices)
    with gpu_slot() if config.device != "cpu" else contextlib.nullcontext():
        train(config, data, model, log_path=log, progress=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="prepared class directory")
    parser.add_argument("--class", dest="cls", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args, params = parse_script_args(parser, argv)
    run(params, args.data, args.cls, args.variant, args.seed, args.model, args.log)


if "snakemake" in globals():
    sm = snakemake  # noqa: F821
    run_script("train", lambda: run(
        sm.config, Path(sm.input.data), sm.wildcards.cls, sm.wildcards.variant, int(sm.wildcards.seed),
        Path(sm.output.model), Path(sm.output.log), threads=sm.threads), sm.log[0])
elif __name__ == "__main__":
    run_script("train", main)
