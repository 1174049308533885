"""Scan and validate a dataset in MVTec AD's on-disk layout.

The layout, per class::

    <root>/<class>/train/good/<name>.<ext>              normal training images
    <root>/<class>/train/<extra>/<name>.<ext>           labelled anomalous images a source declares
                                                        (VAD's train/bad): kept, never trained on
    <root>/<class>/test/<defect>/<name>.<ext>           test images; defect "good" = normal
    <root>/<class>/ground_truth/<defect>/<name>_mask.png  masks of anomalous test images

A class without any ``ground_truth`` directory is treated as image-level only (labels, no
masks), e.g. the Valeo VAD dataset. Every problem is raised as :class:`DatasetError` with a
message that names the file and says how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""Accepted image/mask file extensions (compared lower-case)."""

GOOD = "good"
"""Defect-type name of normal images (train and test)."""

LABELLED_ANOMALIES = "labelled_anomalies"
"""Prepared image set (and manifest split) of the labelled anomalous images outside the test set."""


class DatasetError(ValueError):
    """A dataset, its layout or a prepared cache is not usable; the message says why and how to fix it."""


@dataclass(frozen=True)
class Sample:
    """One image of a class.

    ``path``: the image file; ``split``: ``"train"`` or ``"test"``; ``label``: 0 normal, 1 anomalous;
    ``defect_type``: sub-folder name (``"good"`` for normal images; a train sample with label 1 is a
    labelled anomaly from an extra train folder, never trained on); ``mask_path``: the ground-truth
    mask of an anomalous test image, ``None`` for normal images and image-level-only classes.
    """

    path: Path
    split: Literal["train", "test"]
    label: int
    defect_type: str
    mask_path: Path | None = None


def _visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` sorted by name, hidden ones (``.DS_Store``, markers) left out."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def list_classes(root: str | Path) -> list[str]:
    """Names of the classes under ``root``: sub-directories that hold a ``train`` directory, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory; pass the folder that holds the class folders")
    return [p.name for p in _visible_entries(root) if p.is_dir() and (p / "train").is_dir()]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; any other file or a sub-directory is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a directory; create it and put the images there")
    files: list[Path] = []
    for entry in _visible_entries(folder):
        if entry.is_dir():
            raise DatasetError(
                f"unexpected directory {entry}: images must sit directly in {folder}; move its files up or remove it"
            )
        if entry.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(
                f"unsupported file {entry}: extension {entry.suffix!r} is not one of "
                f"{sorted(IMAGE_EXTENSIONS)}; convert it or move it out of the dataset"
            )
        files.append(entry)
    return files


def find_mask(gt_dir: Path, image: Path) -> Path | None:
    """The mask of ``image`` in ``gt_dir``: ``<stem>_mask.<ext>`` first, then ``<stem>.<ext>``; ``None`` if absent."""
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in (".png", *sorted(IMAGE_EXTENSIONS - {".png"})):
            for candidate in (gt_dir / f"{stem}{ext}", gt_dir / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def scan_class(root: str | Path, class_name: str, *, image_level_only: bool | None = None,
               extra_train: tuple[str, ...] = (), owners: Callable[[str], tuple[str, ...]] | None = None
               ) -> list[Sample]:
    """List and validate every image of one class: train samples first, then test samples.

    ``extra_train``: folders under ``train`` besides ``good`` whose images are labelled anomalies
    (train samples with label 1, after the normal ones; a source's ``extra_train_folders``, which
    :func:`skrd4ad.data.prepare.prepare_class` looks up for the folder it reads).  Any other folder
    under ``train`` is refused; ``owners(folder)`` names the sources whose datasets hold such a
    folder, for the message.

    ``image_level_only``: ``True`` ignores masks, ``False`` requires a mask for every anomalous test
    image, ``None`` (auto) means image-level only exactly when the class has no ``ground_truth`` dir.
    Order is deterministic: train by file name, then test by (defect type, file name).
    Raises :class:`DatasetError` for an unknown class, an empty train set, a missing test set, an
    anomalous test image without a mask, or an unsupported file.
    """
    root = Path(root)
    class_dir = root / class_name
    if not class_dir.is_dir():
        found = list_classes(root)
        raise DatasetError(
            f"unknown class {class_name!r}: {class_dir} does not exist; classes found in {root}: "
            f"{found if found else 'none (no <class>/train folders)'}"
        )
    train_dir = class_dir / "train"
    good_dir = train_dir / GOOD
    if not good_dir.is_dir():
        raise DatasetError(f"empty train set: {good_dir} does not exist; put the normal training images there")
    for entry in _visible_entries(train_dir):
        if entry.name != GOOD and not (entry.is_dir() and entry.name in extra_train):
            also = f" (or labelled anomalies in train/{', train/'.join(extra_train)})" if extra_train else ""
            holders = owners(entry.name) if owners is not None and entry.is_dir() else ()
            other = (f" (train/{entry.name} holds labelled anomalies only in a dataset fetched by "
                     f"`skrd4ad download --dataset {' or '.join(holders)}`)") if holders else ""
            raise DatasetError(
                f"unexpected {entry}: one-class training reads only {good_dir}{also}; move anomalous images to "
                f"{class_dir / 'test'}/<defect>/ and remove anything else{other}"
            )
    train_files = list_images(good_dir)
    if not train_files:
        raise DatasetError(f"empty train set: no images in {good_dir}; put the normal training images there")
    samples = [Sample(path=p, split="train", label=0, defect_type=GOOD) for p in train_files]
    for extra in extra_train:
        if (train_dir / extra).is_dir():
            samples += [Sample(path=p, split="train", label=1, defect_type=extra) for p in list_images(train_dir / extra)]

    test_dir = class_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"no test set: {test_dir} does not exist; put test images in {test_dir}/<defect>/")
    gt_root = class_dir / "ground_truth"
    if image_level_only is None:
        image_level_only = is_image_level_only(root, class_name)
    n_test = 0
    for defect_dir in _visible_entries(test_dir):
        if not defect_dir.is_dir():
            raise DatasetError(
                f"unexpected file {defect_dir}: test images must sit in {test_dir}/<defect>/ (normal ones in 'good')"
            )
        defect = defect_dir.name
        label = 0 if defect == GOOD else 1
        for image in list_images(defect_dir):
            mask: Path | None = None
            if label == 1 and not image_level_only:
                mask = find_mask(gt_root / defect, image)
                if mask is None:
                    raise DatasetError(
                        f"anomalous test image {image} has no mask: expected "
                        f"{gt_root / defect / (image.stem + '_mask.png')}; "
                        "add the mask, or treat the class as image-level only (pass --image-level-only; params: "
                        "data.image_level_only: true)"
                    )
            samples.append(Sample(path=image, split="test", label=label, defect_type=defect, mask_path=mask))
            n_test += 1
    if n_test == 0:
        raise DatasetError(
            f"no test set: no images under {test_dir}/<defect>/; add test images ('good' for normal ones)"
        )
    return samples


def is_image_level_only(root: str | Path, class_name: str) -> bool:
    """Auto rule of :func:`scan_class`: ``True`` when ``<root>/<class>/ground_truth`` does not exist."""
    return not (Path(root) / class_name / "ground_truth").is_dir()
