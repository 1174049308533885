"""Stage `evaluate`: metrics.json, per-image scores, ROC/PRO curves and heatmap figures."""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("evaluate", globals())  # first: a SIGTERM during the imports below ends with one line

import argparse
import contextlib
from pathlib import Path
from typing import Any

from skrd4ad.jobparams import eval_config
from skrd4ad.stage import parse_script_args, run_script


def run(params: dict[str, Any], model: Path, data: Path, out: Path, threads: int | None = None) -> None:
    import torch

    from skrd4ad.evaluate import evaluate

    from skrd4ad.gpu_slots import gpu_slot

    if threads:
        torch.set_num_threads(threads)
    config = eval_config(params)
    with gpu_slot() if config.device != "cpu" else contextlib.nullcontext():
        evaluate(model, data, out, config, params=params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared class directory")
    parser.add_argument("--out", type=Path, required=True)
    args, params = parse_script_args(parser, argv)
    run(params, args.model, args.data, args.out)


if "snakemake" in globals():
    sm = snakemake  # noqa: F821
    run_script("evaluate", lambda: run(sm.config, Path(sm.input.model), Path(sm.input.data),
                                                Path(sm.output.figures).parent, threads=sm.threads), sm.log[0])
elif __name__ == "__main__":
    run_script("evaluate", main)
