"""Stage `download`: put a dataset in MVTec layout under data/raw/<name>.

synthetic: generated offline from scikit-image textures; mvtec/visa: downloaded (resumable,
checksum-verified) and extracted; folder: the user's MVTec-layout folder copied in, so DVC
versions exactly what was used.  Called by Snakemake (``script:``) and DVC (command line).
"""

import argparse
import os
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

        fetched = fetch_dataset(dataset, out.parent)  # data/raw/<dataset>, shared by every name
        if fetched.resolve() != out.resolve():  # another name for the same data: hard links, no copy
            _copy_tree(fetched, out, link=True)
    else:
        from skrd4ad.data.sources import dataset_root

        _copy_tree(dataset_root(data["folder"], out.parent), out)


def _copy_tree(src: Path, out: Path, link: bool = False) -> None:
    """Copy (or hard-link) ``src`` to ``out`` through a temporary sibling, replacing ``out``."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system
            shutil.copy2(a, b)

    tmp = out.with_name(f".{out.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link_or_copy if link else shutil.copy2)
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
