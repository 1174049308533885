"""Stage `download`: put a dataset in MVTec layout under data/raw/<dataset>.

synthetic: generated offline from scikit-image textures; mvtec/visa: downloaded (resumable,
checksum-verified) and extracted; folder: the user's MVTec-layout folder copied in, so DVC
versions exactly what was used.  Called by Snakemake (``script:``) and DVC (command line).
"""

import argparse
import shutil
from pathlib import Path
from typing import Any

from skrd4ad import pipeline


def run(params: dict[str, Any], out: Path) -> None:
    data = params["data"]
    dataset = data["dataset"]
    out = Path(out)
    if dataset == "synthetic":
        from skrd4ad.data.synthetic import generate

        generate(out, **data["synthetic"])
    elif dataset in ("mvtec", "visa"):
        from skrd4ad.data.sources import fetch_dataset

        fetched = fetch_dataset(dataset, out.parent)
        if fetched.resolve() != out.resolve():
            raise RuntimeError(f"fetched {dataset} into {fetched}, expected {out}")
    else:
        from skrd4ad.data.sources import dataset_root

        src = dataset_root(data["folder"], out.parent)
        tmp = out.with_name(f".{out.name}.copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args, params = pipeline.parse_script_args(parser, argv)
    run(params, args.out)


if "snakemake" in globals():
    pipeline.setup_logging(snakemake.log[0])  # noqa: F821
    run(snakemake.config, Path(snakemake.output[0]))  # noqa: F821
elif __name__ == "__main__":
    main()
