"""The base class of a model variant: everything that differs between RD4AD, SK-RD4AD and later
methods, in one object the engine calls.  Importing this module does not import torch (the
registry's names, labels and settings schemas are read on every Snakemake parse); methods import
it when they run.

A variant subclass sets the class attributes and overrides what differs from the defaults:

- ``build_student(teacher, spec, settings) -> nn.Module``: every trained layer (its state dict is
  what training changes and what the checkpoint stores);
- ``forward(model, x) -> (teacher_feats, student_feats)``: inference (evaluate, predict, export);
  the anomaly map compares the two lists, fine to coarse;
- ``training_forward(model, x)`` -> whatever ``loss`` needs (default: ``forward``);
- ``loss(outputs, config) -> {"loss": total, <term>: scalar, ...}``: the named terms are the
  training-log columns, in ``log_columns(config)`` order;
- ``param_groups(student, config) -> [{"params": [...], "lr": ...}, ...]``: one Adam over them;
- ``accumulate``: the optimiser steps every N batches on the summed gradients.

Randomness in ``training_forward`` (e.g. noise added to the image) must come from the global torch
RNG: training seeds it with the job seed and the resume state saves it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..rd4ad import ArchSpec, ReverseDistillation
    from ..teacher import Teacher

#: The loss terms of the distillation loss (:func:`skrd4ad.models.loss.distillation_loss`), in
#: the order of the training-log columns.
DISTILLATION_TERMS: tuple[str, ...] = ("loss", "loss_layer1", "loss_layer2", "loss_layer3", "consistency")


class Variant:
    """One model variant (see the module docstring).  Instances are stateless and shared."""

    #: Registry key: the ``model.variants`` entry, the folder name of its results.
    name: ClassVar[str] = ""
    #: Display label in tables and figures, e.g. ``"SK-RD4AD"``.
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: JSON-schema properties of the variant's own settings (``train.variant_overrides.<name>``):
    #: ``{key: {"type": ..., "default": ..., "minimum": ..., "description": ..., "x-changes-model": ...}}``.
    settings: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Optimiser steps every ``accumulate`` batches, on the gradients summed over them.
    accumulate: ClassVar[int] = 1

    def __repr__(self) -> str:
        return f"<variant {self.name}>"

    def settings_defaults(self) -> dict[str, Any]:
        """``{key: default}`` of every setting that has a default."""
        return {k: v["default"] for k, v in self.settings.items() if "default" in v}

    # --- the network -------------------------------------------------------------------------

    def build_student(self, teacher: Teacher, spec: ArchSpec, settings: dict[str, Any]) -> nn.Module:
        """The trained part: RD4AD's OCBE bottleneck + decoder (``student.bottleneck``,
        ``student.decoder``; initialised from the global torch RNG in that order), from
        :meth:`ArchSpec.student <skrd4ad.models.rd4ad.ArchSpec.student>`."""
        return spec.student(teacher)

    def forward(self, model: ReverseDistillation, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Images ``(B, 3, H, W)`` -> ``(teacher maps, student maps)``, fine to coarse; the
        teacher runs without gradients.  Default: the plain RD4AD path."""
        import torch

        with torch.no_grad():
            t = model.teacher(x)
        s = model.student.decoder(model.student.bottleneck(t))
        return t, s

    # --- training ----------------------------------------------------------------------------

    def training_forward(self, model: ReverseDistillation, x: Tensor) -> Any:
        """What :meth:`loss` reads, for a training batch ``(B, 3, H, W)`` (run under autocast)."""
        return self.forward(model, x)

    def loss(self, outputs: Any, config: Any) -> dict[str, Tensor]:
        """``{"loss": total (back-propagated), <term>: scalar, ...}`` (float32 scalars).
        Default: :func:`~skrd4ad.models.loss.distillation_loss` of ``config.loss`` and
        ``config.consistency_weight`` on ``(teacher_feats, student_feats)``."""
        from ..loss import distillation_loss

        t_feats, s_feats = outputs
        out = distillation_loss(t_feats, s_feats, config.loss, config.consistency_weight)
        layers = out.per_layer
        return {"loss": out.total, "loss_layer1": layers[0], "loss_layer2": layers[1], "loss_layer3": layers[2],
                "consistency": out.consistency}

    def log_columns(self, config: Any) -> tuple[str, ...]:
        """Names of the terms :meth:`loss` returns, in order (``"loss"`` first): the training-log
        columns after ``epoch``."""
        return DISTILLATION_TERMS

    def param_groups(self, student: nn.Module, config: Any) -> list[dict[str, Any]]:
        """Adam parameter groups; a group without ``"lr"`` uses ``config.lr``.  Default: one group."""
        return [{"params": list(student.parameters())}]
