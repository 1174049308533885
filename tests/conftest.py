"""Shared test setup: keep every test (and the subprocesses it starts) out of the user's caches."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``SKRD4AD_CACHE`` in a temporary folder: ``fetch-teacher`` fills it and checkpoints look
    their teacher up there, never in ``~/.cache``.  Set in ``os.environ`` so pipeline
    subprocesses see it too."""
    old = os.environ.get("SKRD4AD_CACHE")
    os.environ["SKRD4AD_CACHE"] = str(tmp_path_factory.mktemp("skrd4ad-cache"))
    yield
    if old is None:
        os.environ.pop("SKRD4AD_CACHE", None)
    else:
        os.environ["SKRD4AD_CACHE"] = old
