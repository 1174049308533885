"""Stage `download`: put a dataset in MVTec layout under data/raw/<name>.

What that means is the dataset source's (``skrd4ad/data/sources/<data.dataset>.py``): generated
(synthetic), downloaded resumably, verified and converted (mvtec, visa, vad, ...; the archive is
shared by every data.name; from data.mirror when set), or the user's MVTec-layout folder copied
in, so DVC versions exactly what was used.  Called by Snakemake (``script:``) and DVC (command line).
"""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("download", globals())  # first: a SIGTERM during the imports below ends with one line

import logging
from pathlib import Path
from typing import Any

from skrd4ad.stage import count_files, out_stage
from skrd4ad.data import sources

log = logging.getLogger("skrd4ad.stage.download")


def run(params: dict[str, Any], out: Path) -> None:
    data = params["data"]
    out = Path(out)
    source = sources.get(data["dataset"])
    mirror = data.get("mirror")
    if mirror and not source.downloadable:
        raise ValueError(f"data.mirror is set, but dataset {source.name} is not downloaded; set data.mirror to null")
    where = f" from {data['folder']}" if source.user_folder else f" from {', '.join(mirror['urls'])}" if mirror else ""
    log.info("fetching dataset %s (%s%s) into %s", data["name"], source.name, where, out)
    source.materialise(data, out)
    counts = {cls.name: (count_files(cls / "train"), count_files(cls / "test"))
              for cls in sorted(out.iterdir()) if cls.is_dir() and not cls.name.startswith(".")}
    log.info("%s holds %d classes (train / test files): %s", out, len(counts),
             ", ".join(f"{c} {a}/{b}" for c, (a, b) in counts.items()) or "none")


out_stage("download", run, globals())
