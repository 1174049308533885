"""``benchmarks/gpu_check.py --device cpu --quick``: every section runs the code path it runs on a
GPU (or says why not), and the JSON's numbers are consistent with each other.

One subprocess run (about 30 s on 2 idle cores); the GPU numbers themselves come from running the
script on a GPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SECTIONS = ("training", "inference", "map_agreement", "concurrent_jobs", "compile")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu_check") / "nested" / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [row["section"] for row in lines] == list(SECTIONS)  # one progress line per section, in order
    return json.loads(out.read_text())


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_seconds(summary: dict[str, Any], rounds: int) -> None:
    assert len(summary["rounds_s"]) == rounds >= 1
    assert all(_positive(t) for t in summary["rounds_s"])
    assert summary["min_s"] <= summary["median_s"] <= summary["max_s"]
    assert summary["min_s"] == min(summary["rounds_s"]) and summary["max_s"] == max(summary["rounds_s"])


def _check_ratio(ratio: dict[str, Any], numerator: list[float], denominator: list[float]) -> None:
    assert ratio["rounds"] == pytest.approx([a / b for a, b in zip(numerator, denominator)])  # per round
    assert ratio["min"] <= ratio["median"] <= ratio["max"] and _positive(ratio["median"])


def _check_stop(section: dict[str, Any]) -> None:
    stop = section["stopped_early"]
    assert stop is None or "time budget" in stop
    assert 1 <= section["rounds_done"] <= section["rounds_planned"]


def test_layout_and_settings(result: dict[str, Any]) -> None:
    assert result["benchmark"] == "gpu_check" and result["errors"] == []
    assert result["device"] == {"type": "cpu"} and result["machine"]["cuda"] is None
    s = result["settings"]
    assert (s["arch"], s["size"], s["batch"], s["jobs"]) == ("resnet18", 64, 2, [1, 2])
    assert set(result["sections"]) == set(SECTIONS)
    for name, section in result["sections"].items():
        assert "error" not in section, (name, section.get("error"))
        if "skipped" in section:
            assert isinstance(section["skipped"], str) and section["skipped"], name
        else:
            assert section.get("results") or section.get("agree") is not None, name
    assert "random" in result["teacher"]
    assert 0 < result["budget"]["elapsed_s"] <= result["budget"]["budget_s"]
    assert all(name in SECTIONS for name in result["budget"]["stopped_early"])
    # CUDA-only measurements say so on the CPU instead of giving numbers
    assert "CUDA" in result["peak_memory_mib"]["skipped"] and _positive(result["peak_memory_mib"]["process_peak_rss_mib"])
    assert "torch.compile" in result["sections"]["compile"]["skipped"]


def test_training_throughput(result: dict[str, Any]) -> None:
    section = result["sections"]["training"]
    assert [r["variant"] for r in section["results"]] == ["rd4ad", "skrd4ad"]
    batch, steps = section["batch_size"], section["steps_per_round"]
    for row in section["results"]:
        _check_stop(row)
        for side in ("fp32", "bf16", "fp32_cached", "bf16_cached"):
            _check_seconds(row["step_seconds"][side], row["rounds_done"])
            assert row["images_per_s_of_median_step"][side] == pytest.approx(batch / row["step_seconds"][side]["median_s"])
            assert row["losses_finite"][side] is True
            assert "CUDA" in row["peak_memory"][side]["skipped"]
        _check_ratio(row["bf16_speedup"], row["step_seconds"]["fp32"]["rounds_s"], row["step_seconds"]["bf16"]["rounds_s"])
        for side in ("fp32", "bf16"):  # the step fed from the teacher cache
            _check_ratio(row["teacher_cache_speedup"][side], row["step_seconds"][side]["rounds_s"],
                         row["step_seconds"][f"{side}_cached"]["rounds_s"])
            assert row["teacher_cache_mb"][side] > 0
        assert row["teacher_cache_mb"]["bf16"] == pytest.approx(row["teacher_cache_mb"]["fp32"] / 2)
    assert steps >= 1


def test_inference_latency(result: dict[str, Any]) -> None:
    section = result["sections"]["inference"]
    assert [r["batch_size"] for r in section["results"]] == [1, 2, 4]  # --quick's stand-ins for 1/16/64
    sides = {f"{v}_{a}" for v in ("rd4ad", "skrd4ad") for a in ("fp32", "bf16")}
    for row in section["results"]:
        _check_stop(row)
        assert set(row["call_seconds"]) == set(row["ms_per_image_of_median"]) == set(row["peak_memory"]) == sides
        for side in sides:
            _check_seconds(row["call_seconds"][side], row["rounds_done"])
            assert row["ms_per_image_of_median"][side] == pytest.approx(
                1000 * row["call_seconds"][side]["median_s"] / row["batch_size"])
        for v in ("rd4ad", "skrd4ad"):
            _check_ratio(row["bf16_speedup"][v], row["call_seconds"][f"{v}_fp32"]["rounds_s"],
                         row["call_seconds"][f"{v}_bf16"]["rounds_s"])


def test_map_agreement_degenerates_to_cpu_vs_cpu(result: dict[str, Any]) -> None:
    section = result["sections"]["map_agreement"]
    assert section["agree"] is True and "CPU vs CPU" in section["degenerate"]
    fp32, bf16 = section["fp32"], section["bf16_info_only"]
    assert fp32["all_finite"] and bf16["all_finite"] and _positive(fp32["cpu_map_max"])
    assert fp32["map_max_rel_diff"] <= section["rtol"] and fp32["score_max_rel_diff"] <= section["rtol"]
    assert fp32["map_max_abs_diff"] == 0.0  # the same device and code: bitwise equal
    assert 0 < bf16["map_max_rel_diff"] < 0.5  # bf16 differs, but computes the same maps


def test_concurrent_jobs(result: dict[str, Any]) -> None:
    section = result["sections"]["concurrent_jobs"]
    _check_stop(section)
    assert section["same_device"] is True and len(section["job_devices"]) == 2
    assert section["threads_per_job"]["2"] <= section["threads_per_job"]["1"]
    rows = {r["jobs"]: r for r in section["results"]}
    assert set(rows) == {1, 2}
    for n, row in rows.items():
        rounds = section["rounds_done"]
        agg, per_job = row["aggregate_images_per_s"], row["per_job_images_per_s"]
        assert len(agg["rounds"]) == rounds and len(per_job["rounds"]) == rounds * n
        assert all(_positive(x) for x in agg["rounds"] + per_job["rounds"])
        for i, total in enumerate(agg["rounds"]):  # the aggregate is the sum over that window's jobs
            assert total == pytest.approx(sum(per_job["rounds"][i * n:(i + 1) * n]))
        assert all(steps >= 1 for steps in row["steps_per_job"]) and len(row["steps_per_job"]) == rounds * n
        assert 0 < row["overlap_fraction_min"] <= 1  # the n jobs of a window ran at the same time
        assert row["losses_finite"] is True and "CUDA" in row["peak_memory"]["skipped"]
    _check_ratio(rows[2]["aggregate_vs_1_job"], rows[2]["aggregate_images_per_s"]["rounds"],
                 rows[1]["aggregate_images_per_s"]["rounds"])
    assert "aggregate_vs_1_job" not in rows[1]
