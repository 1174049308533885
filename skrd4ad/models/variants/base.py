"""The base class of a model variant: everything that differs between RD4AD, SK-RD4AD and later
methods, in one object the engine calls.  Importing this module does not import torch (the
registry's names, labels and settings schemas are read on every Snakemake parse); methods import
it when they run.

A variant subclass sets the class attributes and overrides what differs from the defaults:

- ``build_student(teacher, spec, settings) -> nn.Module``: every trained layer (its state dict is
  what training changes and what the checkpoint stores);
- ``forward(model, x) -> (teacher_feats, student_feats)``: inference (evaluate, predict, export);
  the anomaly map compares the two lists, fine to coarse (default: the teacher, then
  ``student_forward(model, teacher_feats) -> student_feats``);
- ``training_forward(model, x, teacher_feats=None)`` -> whatever ``loss`` needs (default:
  ``forward``); ``teacher_feats`` are the teacher's maps of the clean ``x`` when training took them
  from the per-job teacher cache (``train.teacher_cache``, :mod:`skrd4ad.teacher_cache`), and ``x``
  is then None unless ``needs_image_with_cache``;
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

    from ..rd4ad import ReverseDistillation
    from ..student import ArchSpec
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
    #: Whether ``training_forward`` still needs the image when it gets the cached teacher maps of
    #: the clean image (RD++: the teacher also sees a noisy copy made each step); if not, training
    #: with the teacher cache does not even read the images.
    needs_image_with_cache: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<variant {self.name}>"

    def settings_defaults(self) -> dict[str, Any]:
        """``{key: default}`` of every setting that has a default."""
        return {k: v["default"] for k, v in self.settings.items() if "default" in v}

    # --- the network -------------------------------------------------------------------------

    def build_student(self, teacher: Teacher, spec: ArchSpec, settings: dict[str, Any]) -> nn.Module:
        """The trained part: RD4AD's OCBE bottleneck + decoder (``student.bottleneck``,
        ``student.decoder``; initialised from the global torch RNG in that order), from
        :meth:`ArchSpec.student <skrd4ad.models.student.ArchSpec.student>`."""
        return spec.student(teacher)

    def forward(self, model: ReverseDistillation, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Images ``(B, 3, H, W)`` -> ``(teacher maps, student maps)``, fine to coarse; the
        teacher runs without gradients, then :meth:`student_forward`."""
        import torch

        with torch.no_grad():
            t = model.teacher(x)
        return t, self.student_forward(model, t)

    def student_forward(self, model: ReverseDistillation, t: list[Tensor]) -> list[Tensor]:
        """The teacher's maps, fine to coarse -> the student's.  Default: the plain RD4AD path,
        ``decoder(bottleneck(t))``."""
        return model.student.decoder(model.student.bottleneck(t))

    # --- training ----------------------------------------------------------------------------

    def training_forward(self, model: ReverseDistillation, x: Tensor | None,
                         teacher_feats: list[Tensor] | None = None) -> Any:
        """What :meth:`loss` reads, for a training batch ``(B, 3, H, W)`` (run under autocast).
        ``teacher_feats``: the teacher's maps of the clean ``x`` from the teacher cache (``x`` is
        then None unless ``needs_image_with_cache``).  Default: :meth:`forward`, or with
        ``teacher_feats`` :meth:`student_forward` on them."""
        if teacher_feats is None:
            return self.forward(model, x)
        return teacher_feats, self.student_forward(model, teacher_feats)

    def uses_teacher_cache(self) -> bool:
        """Whether training may pass the cached clean teacher maps as ``training_forward``'s
        ``teacher_feats``: its signature takes them, and the variant does not override
        :meth:`forward` alone (the default cached path runs :meth:`student_forward`, which would
        miss what such a ``forward`` adds).  A variant whose teacher never sees the unaltered
        image (e.g. augmentation before the teacher) overrides this to return False."""
        import inspect

        cls = type(self)
        own = {name for name in ("forward", "student_forward", "training_forward")
               if getattr(cls, name) is not getattr(Variant, name)}
        takes = "teacher_feats" in inspect.signature(self.training_forward).parameters
        return takes and ("forward" not in own or bool(own & {"student_forward", "training_forward"}))

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
