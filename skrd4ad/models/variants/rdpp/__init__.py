"""RD++ (Tien et al., "Revisiting Reverse Distillation for Anomaly Detection", CVPR 2023): a
projection net per teacher stage between the teacher and the bottleneck (used at inference too),
trained with pseudo-anomalies and a projection loss beside the distillation loss.

- student: ``projection`` (:class:`~skrd4ad.models.variants.rdpp.projection.Projection`), then RD4AD's
  ``bottleneck`` and ``decoder``; inference ``decoder(bottleneck(projection(teacher(x))))``, and the
  anomaly map compares the teacher's maps with the decoder's;
- training: the teacher sees the clean batch and a copy with simplex noise in one rectangle per
  image (:func:`~skrd4ad.models.variants.rdpp.pseudo_anomaly.add_pseudo_anomalies`); loss
  ``L_RD + 0.2 * L_proj`` (:mod:`skrd4ad.models.variants.rdpp.loss`), logged as ``loss, loss_rd, ssot,
  recon, contrast``;
- optimiser: Adam betas (0.5, 0.999) from ``train.betas``, ``projection_lr`` (1e-3) for the
  projection and ``train.lr`` (5e-3 in the paper) for bottleneck and decoder; one step every 2
  batches on their summed gradients.

The noise and the SSOT permutation come from a generator seeded off the global torch RNG once per
batch, so a run is bitwise reproducible and resumes exactly (training saves that RNG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from skrd4ad.models.variants.base import Variant

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from skrd4ad.models.rd4ad import ReverseDistillation
    from skrd4ad.models.student import ArchSpec
    from skrd4ad.models.teacher import Teacher


class RDPP(Variant):
    name = "rdpp"
    label = "RD++"
    description = "RD4AD with per-stage projection layers trained on pseudo-anomalies (Tien et al., CVPR 2023)"
    settings = {
        "projection_lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.001,
                          "description": "Adam learning rate of the projection layers (train.lr: bottleneck and decoder)"},
        "projection_weight": {"type": "number", "minimum": 0, "default": 0.2,
                              "description": "weight of the projection loss beside the distillation loss"},
    }
    accumulate = 2
    needs_image_with_cache = True  # the noisy copy is made from the image each step

    def build_student(self, teacher: Teacher, spec: ArchSpec, settings: dict[str, Any]) -> nn.Module:
        """RD4AD's student (bottleneck first, then decoder, from the global RNG) plus ``projection``."""
        from skrd4ad.models.variants.rdpp.projection import Projection

        student = spec.student(teacher)
        student.projection = Projection(teacher.channels)
        return student

    def student_forward(self, model: ReverseDistillation, t: list[Tensor]) -> list[Tensor]:
        student = model.student
        return student.decoder(student.bottleneck(student.projection(t)))

    def training_forward(self, model: ReverseDistillation, x: Tensor | None,
                         teacher_feats: list[Tensor] | None = None) -> dict[str, Any]:
        """The teacher sees the noisy copy, and the clean batch unless ``teacher_feats`` (cached)."""
        import torch

        from skrd4ad.data.prepared import IMAGENET_MEAN, IMAGENET_STD
        from skrd4ad.models.variants.rdpp.pseudo_anomaly import add_pseudo_anomalies

        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))  # from the saved global RNG
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        noisy = add_pseudo_anomalies(x.float() * std + mean, gen, normalize=True).to(x.dtype)
        b = x.shape[0]
        with torch.no_grad():
            if teacher_feats is None:
                both = model.teacher(torch.cat([x, noisy]))
                t_clean, t_noisy = [f[:b] for f in both], [f[b:] for f in both]
            else:
                t_clean, t_noisy = teacher_feats, model.teacher(noisy)
        student = model.student
        p_clean, p_noisy = student.projection(t_clean), student.projection(t_noisy)
        s = student.decoder(student.bottleneck(p_clean))
        return {"teacher": t_clean, "student": s, "noisy": t_noisy, "projected_noisy": p_noisy,
                "projected_clean": p_clean, "perm": torch.randperm(b, generator=gen)}

    def loss(self, outputs: dict[str, Any], config: Any) -> dict[str, Tensor]:
        from skrd4ad.models.loss import distillation_loss
        from skrd4ad.models.variants.rdpp.loss import projection_loss, rdpp_total

        rd = distillation_loss(outputs["teacher"], outputs["student"], config.loss, config.consistency_weight).total
        proj = projection_loss(outputs["noisy"], outputs["projected_noisy"], outputs["projected_clean"],
                               outputs["perm"])
        total = rdpp_total(rd, proj.total, config.settings["projection_weight"])
        return {"loss": total, "loss_rd": rd.detach(), "ssot": proj.ssot, "recon": proj.recon,
                "contrast": proj.contrast}

    def log_columns(self, config: Any) -> tuple[str, ...]:
        return ("loss", "loss_rd", "ssot", "recon", "contrast")

    def param_groups(self, student: nn.Module, config: Any) -> list[dict[str, Any]]:
        projection = list(student.projection.parameters())
        ids = {id(p) for p in projection}
        rest = [p for p in student.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": projection, "lr": config.settings["projection_lr"]}]


VARIANT = RDPP()
