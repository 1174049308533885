"""The synthetic source's own settings (params ``data.synthetic``), apart from the generator so
that listing the sources imports neither numpy nor the generator."""

from __future__ import annotations

from typing import Any

#: The generator's settings (params ``data.synthetic``): what :func:`.generate.generate` takes.
SETTINGS: dict[str, Any] = {
    "seed": {"type": "integer", "minimum": 0, "default": 0},
    "image_size": {"type": "integer", "minimum": 32, "default": 256},
    "n_train": {"type": "integer", "minimum": 1, "default": 80},
    "n_test_good": {"type": "integer", "minimum": 1, "default": 20},
    "n_test_bad": {"type": "integer", "minimum": 1, "default": 40},
}
