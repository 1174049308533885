"""VisA (Zou et al., ECCV 2022): 12 classes with masks, converted to MVTec layout with the archive's
own ``split_csv/1cls.csv``."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from skrd4ad.data.layout import GOOD, DatasetError
from skrd4ad.io import StagingDir

from skrd4ad.data.sources.base import Location, Source, binarise_mask_file

VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ["object", "split", "label", "image", "mask"]


class VisA(Source):
    name = "visa"
    label = "VisA"
    description = "VisA, downloaded, verified and converted with its split_csv/1cls.csv"
    locations = (Location("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"),)
    sha256 = "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
    archive_name = "VisA_20220922.tar"
    licence = "CC BY 4.0 (Amazon)"
    classes = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
               "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
    has_masks = True

    def convert(self, extracted: Path, work: Path) -> Path:
        return convert_visa(_find_visa_root(extracted), work / "converted", move=True)


def _find_visa_root(folder: Path) -> Path:
    """The folder of the extracted VisA archive that holds ``split_csv/1cls.csv``."""
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / VISA_SPLIT_CSV).is_file():
            return candidate
    raise DatasetError(f"{VISA_SPLIT_CSV} not found in {folder}; is the archive the VisA release?")


def convert_visa(src_root: str | Path, dest: str | Path, *, move: bool = False) -> Path:
    """Convert an extracted VisA release at ``src_root`` to MVTec layout in the new folder ``dest``.

    Reads ``src_root/split_csv/1cls.csv`` (columns object,split,label,image,mask): ``normal`` ->
    ``<object>/<split>/good/<name>``, ``anomaly`` -> ``<object>/test/bad/<name>`` with its mask
    binarised (non-zero -> 255) as ``<object>/ground_truth/bad/<stem>_mask.png``. Images are copied
    (or moved when ``move``, for a throw-away extraction). Writes into a temporary sibling
    (:class:`~skrd4ad.io.StagingDir`, kind ``convert``) renamed onto ``dest`` when complete.
    Raises :class:`DatasetError` naming the csv line on bad rows.
    """
    src_root, dest = Path(src_root), Path(dest)
    split_csv = src_root / VISA_SPLIT_CSV
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it to convert {src_root} again")
    if not split_csv.is_file():
        raise DatasetError(f"{split_csv} not found; pass the folder of the extracted VisA archive")
    with StagingDir(dest.parent, dest.name, "convert") as stage:
        tmp = stage.path
        with open(split_csv, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if header != _VISA_COLUMNS:
                raise DatasetError(f"{split_csv}: header {header} is not {_VISA_COLUMNS}; is this VisA's 1cls.csv?")
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                obj, split, label, image, mask = (v.strip() for v in row)
                where = f"{split_csv} line {line_no}"
                if split not in ("train", "test") or label not in ("normal", "anomaly"):
                    raise DatasetError(f"{where}: split {split!r} / label {label!r} not train|test / normal|anomaly")
                if split == "train" and label == "anomaly":
                    raise DatasetError(f"{where}: anomalous image {image} in the train split; one-class needs normals")
                defect = GOOD if label == "normal" else "bad"
                src_image = src_root / image
                if not src_image.is_file():
                    raise DatasetError(f"{where}: image {src_image} does not exist; is the extraction complete?")
                dst_image = tmp / obj / split / defect / src_image.name
                if dst_image.exists():
                    raise DatasetError(f"{where}: two rows write {dst_image.relative_to(tmp)}; fix the csv")
                dst_image.parent.mkdir(parents=True, exist_ok=True)
                if move:
                    os.replace(src_image, dst_image)
                else:
                    shutil.copyfile(src_image, dst_image)
                if label == "anomaly":
                    if not mask:
                        raise DatasetError(f"{where}: anomalous image {image} has no mask path")
                    dst_mask = tmp / obj / "ground_truth" / defect / f"{src_image.stem}_mask.png"
                    binarise_mask_file(src_root / mask, dst_mask, rule="nonzero")
        stage.seal()
        os.replace(tmp, dest)
    return dest


SOURCE = VisA()
