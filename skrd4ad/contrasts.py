"""The comparisons a report makes: ``report.contrasts`` as given, or every variant against
``report.baseline``; read by the params check, the aggregate stage and ``skrd4ad compare``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ParamsError


def contrasts(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The comparisons of the report as ``(a, b)`` pairs, each meaning ``b - a``: ``report.contrasts``
    as given, or when it is null/empty every other variant of ``model.variants`` against
    ``report.baseline`` (none with a single variant).  Raises :class:`ParamsError` naming the key."""
    variants = list(params["model"]["variants"])
    report = params.get("report") or {}
    given = report.get("contrasts") or []
    if not given:
        baseline = report.get("baseline")
        others = [v for v in variants if v != baseline]
        if len(variants) > 1 and baseline not in variants:
            raise ParamsError(f"report.baseline: {baseline!r} is not in model.variants {variants}; set "
                              "report.baseline to one of them or list report.contrasts")
        return [(baseline, v) for v in others] if baseline in variants else []
    pairs: list[tuple[str, str]] = []
    for i, pair in enumerate(given):
        a, b = pair
        bad = [v for v in (a, b) if v not in variants]
        if bad:
            raise ParamsError(f"report.contrasts[{i}]: {bad[0]!r} is not in model.variants {variants}; "
                              "add it there or drop the pair")
        if a == b or (a, b) in pairs:
            raise ParamsError(f"report.contrasts[{i}]: [{a}, {b}] is "
                              f"{'a variant against itself' if a == b else 'listed twice'}; drop it")
        pairs.append((a, b))
    return pairs
