"""The embedded synthetic dataset (the default): generated offline from scikit-image textures,
with masks (:mod:`skrd4ad.data.sources.synthetic.generate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skrd4ad.data.sources.base import Source
from skrd4ad.data.sources.synthetic.settings import SETTINGS


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
