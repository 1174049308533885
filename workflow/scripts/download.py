"""Stage `download`: put a dataset in MVTec layout under data/raw/<name>.

synthetic: generated offline from scikit-image textures; mvtec/visa: downloaded (resumable,
checksum-verified) and extracted; folder: the user's MVTec-layout folder copied in, so DVC
versions exactly what was used.  Called by Snakemake (``script:``) and DVC (command line).
"""

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from skrd4ad import pipeline
from skrd4ad.io import replace_dir

log = logging.getLogger("skrd4ad.stage.download")


def run(params: dict[str, Any], out: Path) -> None:
    data = params["data"]
    out = Path(out)
    source = f" from {data['folder']}" if data["dataset"] == "folder" else ""
    log.info("fetching dataset %s (%s%s) into %s", data["name"], data["dataset"], source, out)
    _fetch(data, out)
    counts = {cls.name: (pipeline.count_files(cls / "train"), pipeline.count_files(cls / "test"))
              for cls in sorted(out.iterdir()) if cls.is_dir() and not cls.name.startswith(".")}
    log.info("%s holds %d classes (train / test files): %s", out, len(counts),
             ", ".join(f"{c} {a}/{b}" for c, (a, b) in counts.items()) or "none")


def _fetch(data: dict[str, Any], out: Path) -> None:
    dataset = data["dataset"]
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

        # a path, never a benchmark name: a local folder called "visa" must not download VisA
        _copy_tree(dataset_root(str(Path(data["folder"]).expanduser().resolve()), out.parent), out)


def _copy_tree(src: Path, out: Path, link: bool = False) -> None:
    """Copy (or hard-link) ``src`` to ``out`` through a temporary sibling, replacing ``out``."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system
            shutil.copy2(a, b)

    tmp = out.with_name(f".{out.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    try:
        shutil.copytree(src, tmp, copy_function=link_or_copy if link else shutil.copy2)
    except BaseException:  # a full disk halfway through a large folder: no partial copy left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


pipeline.out_stage("download", run, globals())
