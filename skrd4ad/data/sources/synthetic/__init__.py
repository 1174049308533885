"""The embedded synthetic dataset (the default): generated offline from scikit-image textures,
with masks (:mod:`skrd4ad.data.sources.synthetic.generate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skrd4ad.data.sources.base import Source


#: The generator's settings (params ``data.synthetic``): what :func:`.generate.generate` takes.
SETTINGS: dict[str, Any] = {
    "seed": {"type": "integer", "minimum": 0, "default": 0},
    "image_size": {"type": "integer", "minimum": 32, "default": 256},
    "n_train": {"type": "integer", "minimum": 1, "default": 80},
    "n_test_good": {"type": "integer", "minimum": 1, "default": 20},
    "n_test_bad": {"type": "integer", "minimum": 1, "default": 40},
}


class Synthetic(Source):
    name = "synthetic"
    label = "Synthetic textures"
    description = "embedded, generated offline (data.synthetic settings)"
    has_masks = True
    settings = SETTINGS

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        from skrd4ad.data.sources.synthetic.generate import DEFAULT_CLASSES

        return tuple(DEFAULT_CLASSES)

    def materialise(self, data: dict[str, Any], out: Path) -> None:
        from skrd4ad.data.sources.synthetic.generate import generate

        generate(out, **data["synthetic"])


SOURCE = Synthetic()
