"""Stage `prepare`: one class validated, resized once and cached as uint8 arrays + manifest."""

import argparse
from pathlib import Path
from typing import Any

from skrd4ad import pipeline


def run(params: dict[str, Any], raw: Path, cls: str, out: Path) -> None:
    from skrd4ad.data.prepare import prepare_class

    prepare_class(raw, cls, out, image_size=params["prepare"]["image_size"],
                  image_level_only=params["data"]["image_level_only"], progress=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--class", dest="cls", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args, params = pipeline.parse_script_args(parser, argv)
    run(params, args.raw, args.cls, args.out)


if "snakemake" in globals():
    pipeline.setup_logging(snakemake.log[0])  # noqa: F821
    run(snakemake.config, Path(snakemake.input.raw), snakemake.wildcards.cls,  # noqa: F821
        Path(snakemake.output[0]))  # noqa: F821
elif __name__ == "__main__":
    main()
