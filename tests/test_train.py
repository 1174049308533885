"""Training: seeded determinism, resume after a real kill, checkpoints, loss log, config errors."""

from __future__ import annotations

import math
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch

from skrd4ad.config import ConfigError, EvalConfig, TrainConfig, from_dict
from skrd4ad.models.build import build_model
from skrd4ad.checkpoint import load_checkpoint
from skrd4ad.device import resolve_device
from skrd4ad.train import STATE_FORMAT, default_state_path, train


def tiny_config(**kw) -> TrainConfig:
    base = dict(arch="mobilenet_v2", variant="skrd4ad", teacher_weights=None, epochs=3, batch_size=4,
                checkpoint_every=1, seed=7, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def student_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["student"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def test_same_seed_same_weights_bitwise(prepared_brick: Path, tmp_path: Path) -> None:
    train(tiny_config(), prepared_brick, tmp_path / "a.pt", progress=False)
    train(tiny_config(), prepared_brick, tmp_path / "b.pt", progress=False)
    train(tiny_config(seed=8), prepared_brick, tmp_path / "c.pt", progress=False)
    a, b, c = (student_weights(tmp_path / f"{n}.pt") for n in "abc")
    assert_bitwise_equal(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_checkpoint_contents_and_loading(prepared_brick: Path, tmp_path: Path) -> None:
    result = train(tiny_config(), prepared_brick, tmp_path / "m.pt", progress=False)
    assert result.epochs_run == 3 and result.resumed_from == 0
    ckpt = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["variant"] == "skrd4ad" and ckpt["config"]["lr"] == 0.005
    assert ckpt["teacher"] == {"arch": "mobilenet_v2", "weights": None, "weights_id": "random"}
    # provenance records the installed distribution's version (importlib.metadata), which is
    # torch.__version__ with or without its local "+cu..." part depending on how the wheel was built
    assert ckpt["versions"]["torch"] == metadata.version("torch")
    assert ckpt["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert ckpt["versions"]["python"] == platform.python_version()
    assert ckpt["image_size"] == 64 and ckpt["epochs"] == 3
    # resume state is removed once the final model is written
    assert not default_state_path(tmp_path / "m.pt").exists()
    model, _ = load_checkpoint(tmp_path / "m.pt")
    assert not model.training and model.variant == "skrd4ad"
    for k, v in model.student_state_dict().items():
        assert torch.equal(v, ckpt["student"][k])
    # the random teacher is stored as drawn, in torchvision layout (BatchNorm not folded)
    torch.manual_seed(tiny_config().seed)
    drawn = build_model("mobilenet_v2", "skrd4ad", teacher_weights=None).teacher.state_dict()
    assert set(ckpt["teacher_state"]) == set(drawn) and any(k.endswith("running_var") for k in drawn)
    for k, v in drawn.items():
        assert torch.equal(v, ckpt["teacher_state"][k]), k


def test_loss_log_has_one_row_per_epoch(prepared_brick: Path, tmp_path: Path) -> None:
    train(tiny_config(epochs=4, consistency_weight=0.1), prepared_brick, tmp_path / "m.pt",
          log_path=tmp_path / "loss.tsv", progress=False)
    log = pd.read_csv(tmp_path / "loss.tsv", sep="\t")
    assert list(log.columns) == ["epoch", "loss", "loss_layer1", "loss_layer2", "loss_layer3", "consistency"]
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    layer_sum = log[["loss_layer1", "loss_layer2", "loss_layer3"]].sum(axis=1)
    assert ((log["loss"] - (layer_sum + 0.1 * log["consistency"])).abs() < 1e-4).all()
    assert (log["consistency"] > 0).all()


def test_split_run_equals_full_run(prepared_brick: Path, tmp_path: Path) -> None:
    train(tiny_config(epochs=4), prepared_brick, tmp_path / "full.pt", progress=False)
    first = train(tiny_config(epochs=4), prepared_brick, tmp_path / "split.pt", progress=False, max_epochs_this_run=2)
    assert not (tmp_path / "split.pt").exists() and first.epochs_run == 2
    state = torch.load(default_state_path(tmp_path / "split.pt"), weights_only=True)
    assert state["format"] == STATE_FORMAT and state["epoch"] == 2
    second = train(tiny_config(epochs=4), prepared_brick, tmp_path / "split.pt", progress=False)
    assert second.resumed_from == 2 and second.epochs_run == 2
    assert_bitwise_equal(student_weights(tmp_path / "full.pt"), student_weights(tmp_path / "split.pt"))
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert log["epoch"].tolist() == [1, 2, 3, 4]


def test_state_of_other_config_is_not_resumed(prepared_brick: Path, tmp_path: Path) -> None:
    train(tiny_config(epochs=4), prepared_brick, tmp_path / "m.pt", progress=False, max_epochs_this_run=2)
    result = train(tiny_config(epochs=4, lr=0.001), prepared_brick, tmp_path / "m.pt", progress=False)
    assert result.resumed_from == 0 and result.epochs_run == 4


def test_state_of_another_train_split_is_not_resumed(tmp_path: Path) -> None:
    """Same source, same config, another validation split (so other training images): start again."""
    from skrd4ad.data.prepare import prepare_class
    from skrd4ad.data.sources.synthetic.generate import generate

    generate(tmp_path / "raw", ["brick"], seed=0, image_size=96, n_train=6, n_test_good=2, n_test_bad=3)
    prepared = prepare_class(tmp_path / "raw", "brick", tmp_path / "prep", image_size=64, progress=False)
    train(tiny_config(epochs=4), prepared, tmp_path / "m.pt", progress=False, max_epochs_this_run=2)
    prepared = prepare_class(tmp_path / "raw", "brick", tmp_path / "prep", image_size=64, progress=False,
                             val_fraction=0.3)
    result = train(tiny_config(epochs=4), prepared, tmp_path / "m.pt", progress=False)
    assert result.resumed_from == 0 and result.epochs_run == 4


def _cli_train(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "skrd4ad", "train", "--data", str(data), "--out", str(out),
            "--arch", "mobilenet_v2", "--variant", "rd4ad", "--teacher-weights", "none",
            "--epochs", str(epochs), "--batch-size", "2", "--checkpoint-every", "1", "--seed", "3",
            "--device", "cpu"]


def test_resume_after_kill_gives_identical_weights(prepared_brick: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    epochs = 25
    subprocess.run(_cli_train(prepared_brick, tmp_path / "ref.pt", epochs), check=True, env=env,
                   capture_output=True, timeout=300)
    killed = tmp_path / "killed.pt"
    state = default_state_path(killed)
    proc = subprocess.Popen(_cli_train(prepared_brick, killed, epochs), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed; raise the epoch count"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not killed.exists()
    done_before = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= done_before < epochs
    out = subprocess.run(_cli_train(prepared_brick, killed, epochs), check=True, env=env, capture_output=True,
                         text=True, timeout=300)
    assert f"resumed from {done_before}" in out.stdout
    assert_bitwise_equal(student_weights(tmp_path / "ref.pt"), student_weights(killed))


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="train: unknown key"):
        from_dict(TrainConfig, {"epoch": 3}, "train")
    with pytest.raises(ConfigError, match="train.variant"):
        TrainConfig(variant="res3")
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ConfigError, match="train.betas"):
        TrainConfig(betas=(0.5, 1.5))
    with pytest.raises(ConfigError, match="evaluate.combine"):
        EvalConfig(combine="max")
    assert from_dict(TrainConfig, {"betas": [0.9, 0.99]}, "train").betas == (0.9, 0.99)


def test_device_errors(prepared_brick: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
            train(tiny_config(amp="fp16"), prepared_brick, tmp_path / "m.pt", progress=False)
    assert resolve_device("cpu").type == "cpu"


def test_bf16_autocast_trains_on_cpu(prepared_brick: Path, tmp_path: Path) -> None:
    low = train(tiny_config(epochs=1, amp="bf16"), prepared_brick, tmp_path / "bf16.pt", progress=False)
    full = train(tiny_config(epochs=1), prepared_brick, tmp_path / "fp32.pt", progress=False)
    # a finite cosine loss (3 layers, each in [0, 2]) close to the float32 run's, but not the same
    # number (so autocast really ran in bfloat16)
    assert math.isfinite(low.final_loss) and 0 < low.final_loss < 6
    assert low.final_loss == pytest.approx(full.final_loss, rel=0.02)
    assert low.final_loss != full.final_loss


def test_missing_prepared_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="prepare"):
        train(tiny_config(), tmp_path / "nope", tmp_path / "m.pt", progress=False)


def test_memory_format_auto_follows_the_measured_rule() -> None:
    from skrd4ad.device import compile_for, memory_format_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format_for("auto", cpu, "mobilenet_v2", "none") == torch.channels_last
    assert memory_format_for("auto", cpu, "resnet18", "none") == torch.channels_last
    assert memory_format_for("auto", cpu, "wide_resnet50_2", "none") == torch.contiguous_format
    assert memory_format_for("auto", cpu, "wide_resnet50_2", "bf16") == torch.channels_last  # AMX kernels
    assert memory_format_for("auto", cuda, "wide_resnet50_2", "none") == torch.channels_last
    assert memory_format_for("contiguous", cuda, "mobilenet_v2", "none") == torch.contiguous_format
    assert memory_format_for("channels_last", cpu, "resnet50", "none") == torch.channels_last
    with pytest.raises(ValueError, match="memory_format 'nhwc'"):
        memory_format_for("nhwc", cpu, "resnet18", "none")
    assert (compile_for("auto", cuda), compile_for(True, cpu), compile_for(False, cuda)) == (False, True, False)
    with pytest.raises(ConfigError, match="train.memory_format: 'nhwc' is not one of"):
        TrainConfig(memory_format="nhwc")


def test_bf16_on_a_cpu_without_native_kernels_is_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    from skrd4ad import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "amp: bf16 on a CPU without native bf16" in dev.slow_bf16_warning(cpu, "bf16")
    assert dev.slow_bf16_warning(cpu, "none") is None
    assert dev.slow_bf16_warning(torch.device("cuda"), "bf16") is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert dev.slow_bf16_warning(cpu, "bf16") is None


def test_layout_does_not_change_the_resume_identity(prepared_brick: Path, tmp_path: Path) -> None:
    """A run interrupted in one layout resumes in the other (how a job runs, not what it trains)."""
    train(tiny_config(epochs=2, memory_format="contiguous"), prepared_brick, tmp_path / "m.pt", progress=False,
          max_epochs_this_run=1)
    second = train(tiny_config(epochs=2, memory_format="channels_last"), prepared_brick, tmp_path / "m.pt",
                   progress=False)
    assert second.resumed_from == 1 and second.epochs_run == 1
