"""MVTec AD (Bergmann et al., CVPR 2019): 15 classes, pixel masks; the archive is in MVTec layout."""

from __future__ import annotations

from skrd4ad.data.sources.base import Location, Source


class MVTec(Source):
    name = "mvtec"
    label = "MVTec AD"
    description = "MVTec AD, downloaded and verified"
    locations = (Location("https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/"
                          "420938113-1629960298/mvtec_anomaly_detection.tar.xz"),)
    sha256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    archive_name = "mvtec_anomaly_detection.tar.xz"
    licence = "CC BY-NC-SA 4.0 (MVTec Software GmbH; non-commercial use)"
    classes = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
               "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
    has_masks = True


SOURCE = MVTec()
