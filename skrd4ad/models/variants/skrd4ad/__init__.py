"""SK-RD4AD: RD4AD whose decoder also reads the teacher's layer2/layer3 maps as skip connections
(``Decoder.forward(z, skips=(t2, t3))``: ``layer2`` reads ``relu(layer1_out + t3)``, ``layer3``
reads ``relu(layer2_out + t2)``).  Same student weights, loss and optimiser as RD4AD."""

from __future__ import annotations

from typing import TYPE_CHECKING

from skrd4ad.models.variants.base import Variant

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from skrd4ad.models.rd4ad import ReverseDistillation


class SKRD4AD(Variant):
    name = "skrd4ad"
    label = "SK-RD4AD"
    description = "RD4AD with skip connections from the teacher's layer2/layer3 into the decoder"

    def student_forward(self, model: ReverseDistillation, t: list[Tensor]) -> list[Tensor]:
        return model.student.decoder(model.student.bottleneck(t), (t[1], t[2]))  # the SK wiring


VARIANT = SKRD4AD()
