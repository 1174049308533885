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
from skrd4ad.models.build import build_model
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
    """What docs/models.md states: on CPU (float32) the cache changes no bit of the weights; RD++ keeps its
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
    monkeypatch.setattr(teacher_cache, "host_memory_available", lambda: (8 * 2**30, "host memory available"))
    monkeypatch.delenv(teacher_cache.JOB_THREADS_ENV, raising=False)
    budget, how = teacher_cache.memory_budget(torch.device("cpu"))
    assert budget == int(8 * 2**30 * teacher_cache.MEMORY_FRACTION) and "host memory available" in how
    assert how == "50% of 8590.0 MB host memory available" or teacher_cache.MEMORY_FRACTION != 0.5, how


GB = 10**9


def fake_host(root: Path, cgroup: str, files: dict[str, str], mem_available: int = 32 * GB) -> Path:
    """A fake ``/`` under ``root``: ``proc/meminfo`` (MemAvailable in kB), ``proc/self/cgroup`` and
    the cgroup files ``files`` (paths relative to ``sys/fs/cgroup``)."""
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text(f"MemTotal:       99999999 kB\nMemFree:  1 kB\n"
                                           f"MemAvailable:   {mem_available // 1024} kB\n")
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    for rel, text in files.items():
        path = root / "sys" / "fs" / "cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SLURM_V2 = "system.slice/slurmstepd.scope/job_7"


@pytest.mark.parametrize(("files", "expected"), [
    # Slurm's job cgroup holds the limit, its step says max: 10 GB - 4 GB used + 1 GB inactive page cache
    ({f"{SLURM_V2}/memory.max": f"{10 * GB}\n", f"{SLURM_V2}/memory.current": f"{4 * GB}\n",
      f"{SLURM_V2}/memory.stat": f"anon {3 * GB}\nfile {GB}\ninactive_file {GB}\nactive_file 0\n",
      f"{SLURM_V2}/step_0/memory.max": "max\n", f"{SLURM_V2}/step_0/memory.current": f"{3 * GB}\n"}, 7 * GB),
    # a tighter limit deeper down wins; no memory.stat: nothing reclaimable counted
    ({f"{SLURM_V2}/memory.max": f"{10 * GB}\n", f"{SLURM_V2}/memory.current": f"{4 * GB}\n",
      f"{SLURM_V2}/step_0/memory.max": f"{5 * GB}\n", f"{SLURM_V2}/step_0/memory.current": f"{3 * GB}\n"}, 2 * GB),
    # over the limit (page cache not yet reclaimed): no room, not a negative one
    ({f"{SLURM_V2}/step_0/memory.max": f"{GB}\n", f"{SLURM_V2}/step_0/memory.current": f"{2 * GB}\n"}, 0),
    # the memory controller is there and limits nothing
    ({f"{SLURM_V2}/memory.max": "max\n", f"{SLURM_V2}/memory.current": f"{4 * GB}\n",
      f"{SLURM_V2}/step_0/memory.max": "max\n", f"{SLURM_V2}/step_0/memory.current": f"{3 * GB}\n"}, None),
])
def test_cgroup_v2_room_is_the_tightest_limit_of_the_chain(tmp_path: Path, files: dict[str, str],
                                                           expected: int | None) -> None:
    root = fake_host(tmp_path, f"0::/{SLURM_V2}/step_0\n", files)
    assert teacher_cache.cgroup_memory_room(root) == expected


def test_cgroup_v1_memory_controller_is_the_fallback(tmp_path: Path) -> None:
    """A hybrid host (as Slurm's cgroup v1 plugin sees it): the unified hierarchy has no memory
    files; the v1 memory controller's job folder has the limit, its parent is "unlimited" (2**63 - 4096)."""
    cgroup = "12:pids:/\n4:memory:/slurm/uid_1/job_9\n2:cpu,cpuacct:/slurm/uid_1/job_9\n0::/\n"
    files = {"unified/cgroup.procs": "", "memory/memory.limit_in_bytes": "9223372036854771712\n",
             "memory/memory.usage_in_bytes": f"{20 * GB}\n",
             "memory/slurm/uid_1/memory.limit_in_bytes": "9223372036854771712\n",
             "memory/slurm/uid_1/memory.usage_in_bytes": f"{9 * GB}\n",
             "memory/slurm/uid_1/job_9/memory.limit_in_bytes": f"{6 * GB}\n",
             "memory/slurm/uid_1/job_9/memory.usage_in_bytes": f"{3 * GB}\n",
             "memory/slurm/uid_1/job_9/memory.stat": f"cache {GB}\ninactive_file {GB}\n"
                                                    f"total_inactive_file {GB // 2}\n"}
    root = fake_host(tmp_path, cgroup, files)
    assert teacher_cache.cgroup_memory_room(root) == 3 * GB + GB // 2
    assert teacher_cache.host_memory_available(root) == (3 * GB + GB // 2, "host memory available (cgroup limit)")
    (root / "sys/fs/cgroup/memory/slurm/uid_1/job_9/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert teacher_cache.cgroup_memory_room(root) is None
    assert teacher_cache.host_memory_available(root) == (32 * GB // 1024 * 1024, "host memory available")


def test_a_container_sees_its_own_cgroup_as_the_root(tmp_path: Path) -> None:
    """Under a cgroup namespace /proc/self/cgroup may name a path the mount does not show: the
    mount's own files are the container's."""
    root = fake_host(tmp_path, "0::/../../kubepods/pod1/abc\n",
                     {"memory.max": f"{2 * GB}\n", "memory.current": f"{GB // 2}\n",
                      # what the path would reach if followed: outside the cgroup mount, not read
                      "../../kubepods/pod1/abc/memory.max": "1\n", "../../kubepods/pod1/abc/memory.current": "0\n"})
    assert (root / "sys/kubepods/pod1/abc/memory.max").is_file()
    assert teacher_cache.cgroup_memory_room(root) == GB + GB // 2


@pytest.mark.parametrize("cgroup", ["", "0::/\n", "garbage\n"])
def test_no_cgroup_limit_means_memavailable(tmp_path: Path, cgroup: str) -> None:
    root = fake_host(tmp_path, cgroup, {}, mem_available=5 * GB)
    assert teacher_cache.cgroup_memory_room(root) is None
    assert teacher_cache.host_memory_available(root) == (5 * GB // 1024 * 1024, "host memory available")
    assert teacher_cache.cgroup_memory_room(tmp_path / "nothing") is None


def test_a_cgroup_limit_above_memavailable_changes_nothing(tmp_path: Path) -> None:
    root = fake_host(tmp_path, "0::/job\n", {"job/memory.max": f"{64 * GB}\n", "job/memory.current": "0\n"},
                     mem_available=5 * GB)
    assert teacher_cache.cgroup_memory_room(root) == 64 * GB
    assert teacher_cache.host_memory_available(root) == (5 * GB // 1024 * 1024, "host memory available")


def test_host_budget_under_a_cgroup_is_shared_by_the_jobs_that_fit_the_cpus(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_host(tmp_path, "0::/job\n", {"job/memory.max": f"{24 * GB}\n", "job/memory.current": f"{4 * GB}\n"})
    monkeypatch.setattr(teacher_cache, "ROOT", root)
    monkeypatch.setattr(teacher_cache, "_usable_cpus", lambda: 9)
    cpu = torch.device("cpu")
    monkeypatch.delenv(teacher_cache.JOB_THREADS_ENV, raising=False)  # the CLI, DVC: one job
    assert teacher_cache.memory_budget(cpu) == (10 * GB, "50% of 20000.0 MB host memory available (cgroup limit)")
    monkeypatch.setenv(teacher_cache.JOB_THREADS_ENV, "4")  # Snakemake's threads: 4 on 9 CPUs: 2 at once
    assert teacher_cache.memory_budget(cpu) == (
        5 * GB, "50% of 20000.0 MB host memory available (cgroup limit), shared by 2 concurrent jobs "
                "(9 usable CPUs / 4 threads per job)")
    monkeypatch.setenv(teacher_cache.JOB_THREADS_ENV, "16")  # more threads than CPUs: still one job
    assert teacher_cache.memory_budget(cpu)[0] == 10 * GB
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(teacher_cache.JOB_THREADS_ENV, bad)
        with pytest.raises(ValueError, match=teacher_cache.JOB_THREADS_ENV):
            teacher_cache.memory_budget(cpu)


def test_gpu_budget_is_shared_by_the_jobs_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * GB, 80 * GB))
    monkeypatch.setenv(teacher_cache.JOB_THREADS_ENV, "1")  # host threads do not matter on a GPU
    gpu = torch.device("cuda:0")
    monkeypatch.delenv("SKRD4AD_JOBS_PER_GPU", raising=False)
    assert teacher_cache.memory_budget(gpu) == (4 * GB, "50% of 8000.0 MB free on cuda:0")
    monkeypatch.setenv("SKRD4AD_JOBS_PER_GPU", "4")
    assert teacher_cache.memory_budget(gpu) == (
        GB, "50% of 8000.0 MB free on cuda:0, shared by 4 concurrent jobs (SKRD4AD_JOBS_PER_GPU=4)")


OOM_ERRORS = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 1000000000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
]


def _small_model_and_images(prepared_brick: Path):
    torch.manual_seed(0)
    model = build_model("resnet18", "rd4ad", teacher_weights=None)
    fold_batchnorm(model.teacher)
    return model, PreparedClass(prepared_brick).train_images


def _no_memory(error: BaseException):
    def allocate(shapes, dtypes, device):
        raise error
    return allocate


@pytest.mark.parametrize("error", OOM_ERRORS, ids=["cuda", "cpu-allocator", "MemoryError"])
def test_auto_falls_back_to_disk_then_off_when_memory_runs_out(prepared_brick: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture,
                                                               error: BaseException) -> None:
    model, images = _small_model_and_images(prepared_brick)
    with teacher_cache.open_cache("off", model, images, batch_size=4, amp="none", device=torch.device("cpu"),
                                  memory_format=torch.contiguous_format, out_path=tmp_path / "m.pt") as none:
        assert none is None
    reference = [model.teacher(to_model_input(batch_from(images, np.arange(len(images))), torch.device("cpu")))]
    monkeypatch.setattr(teacher_cache, "memory_budget", lambda device: (10**15, "test budget"))
    monkeypatch.setattr(teacher_cache, "_memory_tensors", _no_memory(error))
    kwargs = dict(batch_size=4, amp="none", device=torch.device("cpu"), memory_format=torch.contiguous_format,
                  out_path=tmp_path / "m.pt")
    with caplog.at_level(logging.INFO, logger="skrd4ad.teacher_cache"):
        with teacher_cache.open_cache("auto", model, images, **kwargs) as cache:
            assert cache is not None and len(staging_folders(tmp_path)) == 1  # on disk after all
            for got, want in zip(cache.gather(np.arange(len(images))), reference[0], strict=True):
                torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-5)
    assert staging_folders(tmp_path) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("teacher cache: disk after all for 6 train images: ")
    assert "\n" not in warnings[0] and teacher_cache.out_of_memory_text(error) in warnings[0]
    caplog.clear()
    monkeypatch.setattr(teacher_cache, "disk_budget", lambda folder: 0)
    with caplog.at_level(logging.INFO, logger="skrd4ad.teacher_cache"):
        with teacher_cache.open_cache("auto", model, images, **kwargs) as cache:
            assert cache is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("teacher cache: off after all for 6 train images: ")


@pytest.mark.parametrize("error", OOM_ERRORS, ids=["cuda", "cpu-allocator", "MemoryError"])
def test_explicit_memory_that_does_not_fit_raises_one_line(prepared_brick: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           error: BaseException) -> None:
    model, images = _small_model_and_images(prepared_brick)
    monkeypatch.setattr(teacher_cache, "_memory_tensors", _no_memory(error))
    with pytest.raises(MemoryError, match=r"^train\.teacher_cache is memory, but .* set train\.teacher_cache to "
                                          r"auto \(falls back to disk\), disk or off$") as info:
        with teacher_cache.open_cache("memory", model, images, batch_size=4, amp="none", device=torch.device("cpu"),
                                      memory_format=torch.contiguous_format, out_path=tmp_path / "m.pt"):
            pass
    assert "\n" not in str(info.value) and teacher_cache.out_of_memory_text(error) in str(info.value)
    assert staging_folders(tmp_path) == []


def test_other_errors_while_filling_the_cache_are_not_taken_for_out_of_memory(prepared_brick: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model, images = _small_model_and_images(prepared_brick)
    monkeypatch.setattr(teacher_cache, "memory_budget", lambda device: (10**15, "test budget"))
    monkeypatch.setattr(teacher_cache, "_memory_tensors", _no_memory(RuntimeError("shape '[6, 64]' is invalid")))
    with pytest.raises(RuntimeError, match="is invalid"):
        with teacher_cache.open_cache("auto", model, images, batch_size=4, amp="none", device=torch.device("cpu"),
                                      memory_format=torch.contiguous_format, out_path=tmp_path / "m.pt"):
            pass
    assert teacher_cache.out_of_memory_text(ValueError("out of memory")) is None


def test_training_with_auto_survives_a_memory_cache_that_runs_out(prepared_brick: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    train(tiny_config(epochs=1, teacher_cache="off"), prepared_brick, tmp_path / "off.pt", progress=False)
    monkeypatch.setattr(teacher_cache, "memory_budget", lambda device: (10**15, "test budget"))
    monkeypatch.setattr(teacher_cache, "_memory_tensors", _no_memory(OOM_ERRORS[0]))
    train(tiny_config(epochs=1), prepared_brick, tmp_path / "auto.pt", progress=False)
    assert staging_folders(tmp_path) == []
    assert not differing(student_weights(tmp_path / "off.pt"), student_weights(tmp_path / "auto.pt"))


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
