"""The registered RD++ variant (``skrd4ad/models/variants/rdpp/__init__.py``): its loss terms in the training
log, a split run that resumes to the same weights as an unbroken one (the noise is drawn from the
saved RNG), the projection in the checkpoint and at inference, and its two learning rates."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_train import assert_bitwise_equal, student_weights, tiny_config

from skrd4ad.checkpoint import load_checkpoint
from skrd4ad.models import variants
from skrd4ad.models.build import build_model
from skrd4ad.train import make_optimizer, train, train_step


def test_rdpp_logs_its_terms_and_resumes_bitwise(prepared_brick: Path, tmp_path: Path) -> None:
    config = tiny_config(variant="rdpp", epochs=3)
    train(config, prepared_brick, tmp_path / "full.pt", progress=False)
    first = train(config, prepared_brick, tmp_path / "split.pt", progress=False, max_epochs_this_run=1)
    assert first.epochs_run == 1 and not (tmp_path / "split.pt").exists()
    assert train(config, prepared_brick, tmp_path / "split.pt", progress=False).resumed_from == 1
    full, split = student_weights(tmp_path / "full.pt"), student_weights(tmp_path / "split.pt")
    assert_bitwise_equal(full, split)
    assert any(k.startswith("projection.") for k in full)

    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert list(log.columns) == ["epoch", "loss", "loss_rd", "ssot", "recon", "contrast"]
    proj = (log["ssot"] + 0.01 * log["recon"] + 0.1 * log["contrast"]) / 1.11
    assert ((log["loss"] - (log["loss_rd"] + 0.2 * proj)).abs() < 1e-4).all()
    assert (log["recon"] > 0).all()  # the noisy batch projects differently from the clean one

    other = train(tiny_config(variant="rdpp", epochs=3, seed=8), prepared_brick, tmp_path / "other.pt",
                  progress=False, log_path=tmp_path / "other.tsv")
    assert other.final_loss != log["loss"].iloc[-1]  # another seed: other weights and other noise

    model, _ = load_checkpoint(tmp_path / "full.pt")
    x = torch.zeros(2, 3, 64, 64)
    t, s = model(x)
    student = model.student
    expected = student.decoder(student.bottleneck(student.projection(t)))
    assert all(torch.equal(a, b) for a, b in zip(s, expected))  # the projection is on the inference path


def test_rdpp_trains_the_projection_at_its_own_rate() -> None:
    config = tiny_config(variant="rdpp", lr=0.005)
    assert config.settings["projection_lr"] == 0.001 and variants.get("rdpp").accumulate == 2
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", "rdpp", teacher_weights=None)
    groups = make_optimizer(model, config, torch.device("cpu")).param_groups
    projection = {id(p) for p in model.student.projection.parameters()}
    assert [g["lr"] for g in groups] == [0.005, 0.001]
    assert {id(p) for p in groups[1]["params"]} == projection
    assert not projection & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.student.parameters()))


@pytest.mark.parametrize("batch", [1, 2])
def test_rdpp_training_step_on_a_batch_of_one_or_two(batch: int) -> None:
    """A class of 16k + 1 training images ends each epoch on a batch of one: the step must run
    (geomloss's Sinkhorn on one point failed before the authors' fixed diameter was used)."""
    config = tiny_config(variant="rdpp")
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", "rdpp", teacher_weights=None)
    device = torch.device("cpu")
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = [p.detach().clone() for p in model.student.parameters()]
    images = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8)
    terms = train_step(model, optimizer, scaler, images, config)
    columns = dict(zip(variants.get("rdpp").log_columns(config), terms.tolist()))
    assert all(math.isfinite(v) for v in columns.values())
    assert columns["ssot"] == pytest.approx(0.0, abs=1e-6) and columns["recon"] > 0
    after = list(model.student.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the step moved the weights
