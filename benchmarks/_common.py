"""Shared by the benchmark scripts: interleaved timing rounds and how their results are reported.

The rules every ``bench_*.py`` follows:

* the sides of a comparison run in the same process, **interleaved round by round** (each round
  runs every side once; the order alternates between rounds, so no side always runs first or
  right after another), after at least one untimed warm-up round;
* a ratio is computed **per round** (both times from that round) and reported as its
  **median, with min and max beside it**, next to each side's median time; never a best round;
* both sides get the same input dtype and are compared like with like (same algorithm and
  same work, or the difference is stated in the JSON's ``what``).

Imported as ``_common`` by scripts run as ``python benchmarks/bench_x.py`` (the script's folder
is on ``sys.path`` by Python's own rule); the benchmarked code is the installed ``skrd4ad``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from skrd4ad.io import write_json_atomic


def interleaved(sides: Mapping[str, Callable[[], Any]], rounds: int, *, warmup: int = 1,
                sync: Callable[[], None] | None = None,
                between: Callable[[int, str], None] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every side once per round for ``rounds`` rounds after ``warmup`` untimed rounds.

    Even rounds run the sides in the given order, odd rounds in reverse.  ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before the clock starts and before it stops;
    ``between(round, side)`` runs untimed before each timed call (e.g. to log the load).
    Returns ({side: [seconds per round]}, {side: value of its last call}).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    values: dict[str, Any] = {}
    for r in range(-warmup, rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if r >= 0 and between is not None:
                between(r, name)
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            values[name] = sides[name]()
            if sync is not None:
                sync()
            if r >= 0:
                times[name].append(time.perf_counter() - t0)
    return times, values


def side_summary(seconds: list[float]) -> dict[str, Any]:
    """Median, min and max of one side's per-round times, and every round."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "rounds_s": list(seconds)}


def ratio_summary(numerator: list[float], denominator: list[float]) -> dict[str, Any]:
    """Per-round ratios ``numerator[i] / denominator[i]``: median, min, max and every round.

    With seconds as numerator = the other side and denominator = ours, a ratio above 1 means
    ours is faster by that factor."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("ratio_summary needs two equally long, non-empty lists of rounds")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": ratios}


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "processor": platform.processor() or platform.machine(),
                            "loadavg_1_5_15_at_start": os.getloadavg()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def write_result(path: str | os.PathLike[str], result: Mapping[str, Any], summary: str | None = None) -> Any:
    """Write the benchmark's JSON (atomically; the folder is created), print ``summary -> path``
    when given, and return ``result``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dict(result, loadavg_1_5_15_at_end=os.getloadavg()))
    if summary:
        print(f"{summary} -> {path}")
    return result


def fmt_ratio(summary: Mapping[str, float]) -> str:
    """``12.3x [11.0, 14.1]`` for a ratio summary."""
    return f"{summary['median']:.3g}x [{summary['min']:.3g}, {summary['max']:.3g}]"
