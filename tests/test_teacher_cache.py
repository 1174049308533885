"""The per-job teacher cache (``train.teacher_cache``): cached maps equal the teacher's on-the-fly
maps per sample, cached training is reproducible, resumes exactly and (measured here, CPU) equals
uncached training bitwise; the disk cache is removed on success and after a kill; ``auto`` picks
memory, disk or off by the budgets."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skrd4ad import teacher_cache
from skrd4ad.data.prepared import PreparedClass, batch_from, iterate_batches, to_model_input
from skrd4ad.io import HOST_TAG
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.rd4ad import build_model
from skrd4ad.models.variants.base import Variant
from skrd4ad.train import default_state_path, train
from test_train import student_weights, tiny_config  # the same tiny SK-RD4AD job

KIND = teacher_cache.STAGING_KIND


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def staging_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob(f".*.{KIND}"))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_cached_maps_equal_the_teachers_per_sample(prepared_brick: Path, arch: str) -> None:
    """Maps built in batches of 1, 4 and 6 (file order) and gathered for shuffled batches equal the
    teacher run on each image alone and on the shuffled batch, to float rounding."""
    torch.manual_seed(0)
    model = build_model(arch, "rd4ad", teacher_weights=None)
    fold_batchnorm(model.teacher)
    images = PreparedClass(prepared_brick).train_images
    device = torch.device("cpu")
    alone = [model.teacher(to_model_input(batch_from(images, np.array([i])), device)) for i in range(len(images))]
    for build_batch in (1, 4, 6):
        with teacher_cache.open_cache("memory", model, images, batch_size=build_batch, amp="none", device=device,
                                      memory_format=torch.contiguous_format, out_path=Path("unused.pt")) as cache:
            assert cache is not None and len(cache.features) == 3
            for idx in iterate_batches(len(images), 4, shuffle=True, generator=torch.Generator().manual_seed(1)):
                got = cache.gather(idx)
                with torch.no_grad():
                    batch = model.teacher(to_model_input(batch_from(images, idx), device))
                for k, g in enumerate(got):
                    assert g.dtype == torch.float32 and g.shape == batch[k].shape
                    torch.testing.assert_close(g, batch[k], rtol=1e-4, atol=1e-5)
                    for row, i in enumerate(idx):
                        torch.testing.assert_close(g[row], alone[i][k][0].detach(), rtol=1e-4, atol=1e-5)


def test_cached_maps_follow_the_autocast_dtype(prepared_brick: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", "rd4ad", teacher_weights=None)
    images = PreparedClass(prepared_brick).train_images
    with teacher_cache.open_cache("memory", model, images, batch_size=4, amp="bf16", device=torch.device("cpu"),
                                  memory_format=torch.channels_last, out_path=Path("unused.pt")) as cache:
        got = cache.gather(np.array([0, 2]))
    assert all(g.dtype == torch.bfloat16 for g in got)
    assert all(g.is_contiguous(memory_format=torch.channels_last) for g in got)


@pytest.mark.parametrize("variant", ["rd4ad", pytest.param("skrd4ad", marks=pytest.mark.slow),
                                     pytest.param("rdpp", marks=pytest.mark.slow)])
def test_cached_training_is_bitwise_the_uncached_on_cpu(prepared_brick: Path, tmp_path: Path, variant: str) -> None:
    """What the README states: on CPU (float32) the cache changes no bit of the weights; RD++ keeps its
    noise stream.  Batch 4 of 6 images: the last batch of an epoch is smaller."""
    for mode in ("off", "memory", "disk"):
        train(tiny_config(variant=variant, epochs=2, teacher_cache=mode), prepared_brick, tmp_path / f"{mode}.pt",
              progress=False)
    off = student_weights(tmp_path / "off.pt")
    assert not differing(off, student_weights(tmp_path / "memory.pt"))
    assert not differing(off, student_weights(tmp_path / "disk.pt"))


def test_cached_training_reproduces_and_resumes_exactly(prepared_brick: Path, tmp_path: Path) -> None:
    train(tiny_config(epochs=4, teacher_cache="memory"), prepared_brick, tmp_path / "a.pt", progress=False)
    train(tiny_config(epochs=4, teacher_cache="memory"), prepared_brick, tmp_path / "b.pt", progress=False)
    first = train(tiny_config(epochs=4, teacher_cache="memory"), prepared_brick, tmp_path / "split.pt",
                  progress=False, max_epochs_this_run=2)
    assert first.epochs_run == 2 and not (tmp_path / "split.pt").exists()
    second = train(tiny_config(epochs=4, teacher_cache="memory"), prepared_brick, tmp_path / "split.pt",
                   progress=False)
    assert second.resumed_from == 2
    a = student_weights(tmp_path / "a.pt")
    assert not differing(a, student_weights(tmp_path / "b.pt"))
    assert not differing(a, student_weights(tmp_path / "split.pt"))
    # the cache is not part of the model: a state made without it resumes with it
    train(tiny_config(epochs=4, teacher_cache="off"), prepared_brick, tmp_path / "mixed.pt", progress=False,
          max_epochs_this_run=1)
    assert train(tiny_config(epochs=4), prepared_brick, tmp_path / "mixed.pt", progress=False).resumed_from == 1
    assert not differing(a, student_weights(tmp_path / "mixed.pt"))


def test_disk_cache_lives_beside_the_output_and_is_removed(prepared_brick: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[Path]] = []
    gather = teacher_cache.TeacherCache.gather

    def spy(self, indices):
        seen.append([p for folder in staging_folders(tmp_path / "out") for p in folder.iterdir()])
        return gather(self, indices)

    monkeypatch.setattr(teacher_cache.TeacherCache, "gather", spy)
    train(tiny_config(epochs=1, teacher_cache="disk"), prepared_brick, tmp_path / "out" / "m.pt", progress=False)
    names = sorted(p.name for p in seen[0])
    assert [n for n in names if n.startswith("stage")] == ["stage1.bin", "stage2.bin", "stage3.bin"]
    assert staging_folders(tmp_path / "out") == []


def test_a_stale_cache_of_a_dead_run_is_removed_by_the_next_run(prepared_brick: Path, tmp_path: Path) -> None:
    """Left by a process that no longer exists (no lock file held): removed even when the next run
    does not use the disk."""
    out = tmp_path / "m.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f".m.pt.{HOST_TAG}-p{int(dead.stdout)}.abcdefgh.{KIND}"
    stale.mkdir()
    (stale / "stage1.bin").write_bytes(b"\0" * 4096)
    other = tmp_path / f".other.pt.{HOST_TAG}-p{int(dead.stdout)}.abcdefgh.{KIND}"  # another output's: kept
    other.mkdir()
    train(tiny_config(epochs=1, teacher_cache="off"), prepared_brick, out, progress=False)
    assert not stale.exists() and other.exists()


def _cli_train(data: Path, out: Path, epochs: int, cache: str) -> list[str]:
    return [sys.executable, "-m", "skrd4ad", "train", "--data", str(data), "--out", str(out),
            "--arch", "mobilenet_v2", "--variant", "rd4ad", "--teacher-weights", "none",
            "--epochs", str(epochs), "--batch-size", "2", "--checkpoint-every", "1", "--seed", "3",
            "--device", "cpu", "--teacher-cache", cache]


@pytest.mark.slow
def test_killed_disk_run_resumes_to_identical_weights_and_its_cache_is_cleaned(prepared_brick: Path,
                                                                               tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    epochs = 25
    subprocess.run(_cli_train(prepared_brick, tmp_path / "ref.pt", epochs, "off"), check=True, env=env,
                   capture_output=True, timeout=300)
    killed = tmp_path / "killed.pt"
    state = default_state_path(killed)
    proc = subprocess.Popen(_cli_train(prepared_brick, killed, epochs, "disk"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed; raise the epoch count"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = staging_folders(tmp_path)
    assert len(left) == 1 and (left[0] / "stage1.bin").is_file()
    out = subprocess.run(_cli_train(prepared_brick, killed, epochs, "disk"), check=True, env=env,
                         capture_output=True, text=True, timeout=300)
    assert "resumed from" in out.stdout
    assert "removed stale staging folder" in out.stderr
    assert staging_folders(tmp_path) == []
    assert not differing(student_weights(tmp_path / "ref.pt"), student_weights(killed))


def test_auto_chooses_by_the_budgets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(teacher_cache, "memory_budget", lambda device: (1000, "test budget"))
    monkeypatch.setattr(teacher_cache, "disk_budget", lambda folder: 5000)
    assert teacher_cache.choose("auto", 1000, cpu, tmp_path).mode == "memory"
    over = teacher_cache.choose("auto", 1001, cpu, tmp_path)
    assert over.mode == "disk" and "exceed the memory budget" in over.reason
    assert teacher_cache.choose("auto", 5001, cpu, tmp_path).mode == "off"
    assert teacher_cache.choose("auto", 10, cpu, tmp_path / "missing").mode == "memory"
    assert teacher_cache.choose("auto", 1001, cpu, tmp_path / "missing").mode == "off"  # no folder to write
    for mode in ("memory", "disk", "off"):  # explicit settings are not second-guessed
        assert teacher_cache.choose(mode, 10**15, cpu, tmp_path).mode == mode


@pytest.mark.parametrize(("memory", "disk", "expected"), [(10**12, 0, "memory"), (0, 10**12, "disk"), (0, 0, "off")])
def test_auto_in_training_logs_its_choice(prepared_brick: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture, memory: int, disk: int,
                                          expected: str) -> None:
    monkeypatch.setattr(teacher_cache, "memory_budget", lambda device: (memory, "test budget"))
    monkeypatch.setattr(teacher_cache, "disk_budget", lambda folder: disk)
    with caplog.at_level(logging.INFO, logger="skrd4ad.teacher_cache"):
        train(tiny_config(epochs=1), prepared_brick, tmp_path / "m.pt", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "skrd4ad.teacher_cache"]
    assert len(lines) == 1 and lines[0].startswith(f"teacher cache: {expected} for 6 train images (")
    assert " MB" in lines[0]
    assert staging_folders(tmp_path) == []


def test_memory_budget_is_a_share_of_what_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teacher_cache, "_host_available", lambda: 8 * 2**30)
    budget, how = teacher_cache.memory_budget(torch.device("cpu"))
    assert budget == int(8 * 2**30 * teacher_cache.MEMORY_FRACTION) and "host memory available" in how
    assert how == "50% of 8590.0 MB host memory available" or teacher_cache.MEMORY_FRACTION != 0.5, how


def test_unquoted_off_in_yaml_means_off() -> None:
    import yaml

    value = yaml.safe_load("teacher_cache: off")["teacher_cache"]
    assert value is False and tiny_config(teacher_cache=value).teacher_cache is False
    with pytest.raises(ValueError, match="train.teacher_cache"):
        tiny_config(teacher_cache="sometimes")


def test_which_variants_take_cached_maps() -> None:
    from skrd4ad.models import variants

    assert all(variants.get(name).uses_teacher_cache() for name in ("rd4ad", "skrd4ad", "rdpp"))
    assert variants.get("rdpp").needs_image_with_cache and not variants.get("skrd4ad").needs_image_with_cache

    class ForwardOnly(Variant):  # changes inference without saying how the student runs: no cache
        def forward(self, model, x):
            return super().forward(model, x)

    class OldSignature(Variant):
        def training_forward(self, model, x):
            return self.forward(model, x)

    class StudentSide(ForwardOnly):
        def student_forward(self, model, t):
            return super().student_forward(model, t)

    assert not ForwardOnly().uses_teacher_cache() and not OldSignature().uses_teacher_cache()
    assert StudentSide().uses_teacher_cache()
