"""The variant-driven training loop equals, bit for bit, the loop it replaced for the built-in
variants: the reference below is a copy of the pre-registry model forward and ``train_step``
(teacher -> OCBE -> decoder, skips for SK-RD4AD; distillation loss; one fused Adam), built
from the unchanged parts (teacher, OCBE, Decoder), not from the variant code under test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from skrd4ad.config import TrainConfig
from skrd4ad.data.prepared import PreparedClass, batch_from, iterate_batches, to_model_input
from skrd4ad.device import memory_format_for
from skrd4ad.models import variants
from skrd4ad.models.bottleneck import OCBE
from skrd4ad.models.decoder import Decoder
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.loss import distillation_loss
from skrd4ad.models.student import ARCH_SPECS
from skrd4ad.models.teacher import build_teacher
from skrd4ad.train import train


class _OldModel(nn.Module):
    """The pre-registry ReverseDistillation: ``skip`` chose the SK wiring."""

    def __init__(self, arch: str, skip: bool) -> None:
        super().__init__()
        spec = ARCH_SPECS[arch]
        self.teacher = build_teacher(arch, None)
        self.bottleneck = OCBE(self.teacher.channels, spec.block, spec.bottleneck_blocks, spec.base_width)
        self.decoder = Decoder(self.bottleneck.out_channels, self.teacher.channels, spec.decoder_block,
                               spec.decoder_layers, spec.base_width)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.decoder(self.bottleneck(t), (t[1], t[2]) if self.skip else None)


def _old_train_step(model: _OldModel, optimizer: torch.optim.Optimizer, batch_uint8: torch.Tensor,
                    config: TrainConfig, memory_format: torch.memory_format) -> torch.Tensor:
    x = to_model_input(batch_uint8, torch.device("cpu")).contiguous(memory_format=memory_format)
    t_feats, s_feats = model(x)
    out = distillation_loss(t_feats, s_feats, config.loss, config.consistency_weight)
    optimizer.zero_grad(set_to_none=True)
    out.total.backward()
    optimizer.step()
    return torch.cat([out.total.detach().reshape(1), out.per_layer, out.consistency.reshape(1)])


def _old_train(config: TrainConfig, data_dir: Path, skip: bool) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The student weights and per-epoch mean losses of the pre-registry loop (CPU, float32)."""
    images = PreparedClass(data_dir).train_images
    n = len(images)
    fmt = memory_format_for(config.memory_format, torch.device("cpu"), config.arch, config.amp)
    torch.manual_seed(config.seed)
    model = _OldModel(config.arch, skip)
    fold_batchnorm(model.teacher)
    model = model.to("cpu", memory_format=fmt)
    optimizer = torch.optim.Adam([*model.bottleneck.parameters(), *model.decoder.parameters()], lr=config.lr,
                                 betas=config.betas, fused=True)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    losses = []
    for _ in range(config.epochs):
        sums = torch.zeros(5)
        for idx in iterate_batches(n, config.batch_size, shuffle=True, generator=gen):
            sums += _old_train_step(model, optimizer, batch_from(images, idx), config, fmt) * len(idx)
        losses.append((sums / n)[0].item())
    student = {f"bottleneck.{k}": v for k, v in model.bottleneck.state_dict().items()}
    student.update({f"decoder.{k}": v for k, v in model.decoder.state_dict().items()})
    return student, losses


@pytest.mark.parametrize("variant", ["rd4ad", "skrd4ad"])  # the two whose algorithm predates the registry
def test_training_is_bitwise_the_pre_registry_loop(variant: str, prepared_brick: Path, tmp_path: Path) -> None:
    config = TrainConfig(arch="resnet18", variant=variant, teacher_weights=None, epochs=2, batch_size=4,
                         consistency_weight=0.01, seed=3, device="cpu")
    expected, losses = _old_train(config, prepared_brick, skip=variant == "skrd4ad")
    train(config, prepared_brick, tmp_path / "m.pt", progress=False)
    got = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)["student"]
    assert got.keys() == expected.keys()
    different = [k for k in got if not torch.equal(got[k], expected[k])]
    assert not different, f"{variant}: tensors differ from the pre-registry loop: {different[:5]}"
    log = (tmp_path / "train_log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["epoch", *variants.get(variant).log_columns(config)]
    assert [float(row.split("\t")[1]) for row in log[1:]] == pytest.approx(losses, rel=1e-7)
