"""A folder you have: already in MVTec layout (used as is; without ``ground_truth`` it is image
level only), or two folders ``normal/`` + ``anomalous/`` turned into that layout by
:func:`import_two_folders`.  The download stage copies ``data.folder`` in, so DVC versions exactly
what was used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from skrd4ad.data.layout import GOOD, DatasetError, find_mask, list_classes, list_images
from skrd4ad.io import StagingDir, disk_full_as_error

from skrd4ad.data.sources.base import Source, binarise_mask_file, copy_tree


class Folder(Source):
    name = "folder"
    label = "Your folder"
    description = "an MVTec-layout folder you have (data.folder)"
    has_masks = None
    user_folder = True

    def materialise(self, data: dict[str, Any], out: Path) -> None:
        root = Path(data["folder"]).expanduser().resolve()  # a path, never a source name
        if not root.is_dir():
            raise DatasetError(f"data.folder: {root} is not a directory; pass a folder in MVTec layout "
                               "(<root>/<class>/train/good/...)")
        if not list_classes(root):
            raise DatasetError(f"data.folder: {root} holds no <class>/train folders; it is not in MVTec layout")
        copy_tree(root, out)


def import_two_folders(
    src: str | Path,
    out_root: str | Path,
    class_name: str,
    *,
    normal_dir: str = "normal",
    anomalous_dir: str = "anomalous",
    mask_dir: str | None = None,
    test_fraction: float = 0.2,
    defect_type: str = "bad",
    seed: int = 0,
) -> Path:
    """Copy ``src/<normal_dir>`` + ``src/<anomalous_dir>`` into MVTec layout at ``out_root/class_name``.

    Normal images are split by a seeded permutation: ``round(test_fraction * n)`` of them (at least
    one when there are two or more, never all) go to ``test/good``, the rest to ``train/good``.
    Anomalous images go to ``test/<defect_type>``. With ``mask_dir``, each anomalous image needs a
    mask ``<stem>_mask.<ext>`` or ``<stem>.<ext>`` there; it is binarised at half its maximum and
    written as ``ground_truth/<defect_type>/<stem>_mask.png``. Without ``mask_dir`` no
    ``ground_truth`` is written (image-level only). The class folder appears atomically.
    """
    src, out_root = Path(src), Path(out_root)
    dest = out_root / class_name
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it or choose another class name")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"test_fraction={test_fraction} must be in [0, 1): some normals must stay for training")
    if defect_type == GOOD:
        raise DatasetError(f"defect_type {GOOD!r} is reserved for normal images; choose another name")
    normals = list_images(src / normal_dir)
    anomalies = list_images(src / anomalous_dir)
    if not normals:
        raise DatasetError(f"no normal images in {src / normal_dir}")
    n = len(normals)
    n_test = min(max(round(test_fraction * n), 1 if n >= 2 and test_fraction > 0 else 0), n - 1)
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    test_ids = set(order[:n_test].tolist())
    masks: dict[Path, Path] = {}
    if mask_dir is not None:
        for image in anomalies:
            found = find_mask(src / mask_dir, image)
            if found is None:
                raise DatasetError(
                    f"anomalous image {image} has no mask in {src / mask_dir} (looked for {image.stem}_mask.* "
                    f"and {image.stem}.*); add it or import without mask_dir (image-level only)"
                )
            masks[image] = found
    with StagingDir(out_root, class_name, "import") as stage:
        tmp = stage.path
        plan = [(p, tmp / ("test" if i in test_ids else "train") / GOOD / p.name) for i, p in enumerate(normals)]
        plan += [(p, tmp / "test" / defect_type / p.name) for p in anomalies]
        with disk_full_as_error(dest, sum(p.stat().st_size for p, _ in plan)):
            for source_file, target in plan:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_file, target)
        for image, mask in masks.items():
            binarise_mask_file(mask, tmp / "ground_truth" / defect_type / f"{image.stem}_mask.png", rule="half_max")
        stage.seal()
        os.replace(tmp, dest)
    return dest


SOURCE = Folder()
