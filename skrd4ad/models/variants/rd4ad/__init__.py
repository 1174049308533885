"""RD4AD (Deng & Li, CVPR 2022): the decoder reconstructs the teacher's maps from the bottleneck
embedding alone.  The base class's defaults are this method; it only names it."""

from __future__ import annotations

from skrd4ad.models.variants.base import Variant


class RD4AD(Variant):
    name = "rd4ad"
    label = "RD4AD"
    description = "reverse distillation baseline: OCBE bottleneck + decoder, cosine distillation loss"


VARIANT = RD4AD()
