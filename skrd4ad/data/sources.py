"""Where datasets come from: the MVTec AD / VisA registry, fetch + convert, and folder imports.

Every source ends in MVTec AD's layout (see :mod:`skrd4ad.data.layout`):

* :func:`fetch_dataset` downloads MVTec AD or VisA (checksum-verified), extracts it safely and,
  for VisA, converts it with the archive's own ``split_csv/1cls.csv``.
* A folder already in MVTec layout is used as is (without ``ground_truth`` it is image-level only).
* :func:`import_two_folders` turns ``normal/`` + ``anomalous/`` (+ optional masks) into that layout.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from skrd4ad.data.download import download, safe_extract
from skrd4ad.data.layout import GOOD, DatasetError, find_mask, list_classes, list_images
from skrd4ad.data.prepare import mask_values
from skrd4ad.io import (
    StagingDir,
    atomic_path,
    clean_stale_staging,
    disk_full_as_error,
    format_mb,
    tree_disk_usage,
    write_json_atomic,
)

log = logging.getLogger(__name__)

FETCH_MARKER = ".skrd4ad_fetch.json"
"""Written last into a fetched dataset root; its presence makes :func:`fetch_dataset` a no-op."""


@dataclass(frozen=True)
class DatasetSource:
    """A downloadable dataset: archive ``url`` and ``sha256``, file name, and its class names."""

    name: str
    url: str
    sha256: str
    archive_name: str
    classes: tuple[str, ...]


DATASETS: dict[str, DatasetSource] = {
    "mvtec": DatasetSource(
        name="mvtec",
        url=(
            "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/"
            "420938113-1629960298/mvtec_anomaly_detection.tar.xz"
        ),
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        archive_name="mvtec_anomaly_detection.tar.xz",
        classes=(
            "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
            "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
        ),
    ),
    "visa": DatasetSource(
        name="visa",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        archive_name="VisA_20220922.tar",
        classes=(
            "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
            "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
        ),
    ),
}

VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ["object", "split", "label", "image", "mask"]


def _layout_root(folder: Path) -> Path:
    """``folder`` itself when it holds class folders, else its single sub-folder that does."""
    if list_classes(folder):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and list_classes(subdirs[0]):
        return subdirs[0]
    raise DatasetError(f"no <class>/train folders found in {folder}; is the archive the right dataset?")


def _find_visa_root(folder: Path) -> Path:
    """The folder of the extracted VisA archive that holds ``split_csv/1cls.csv``."""
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / VISA_SPLIT_CSV).is_file():
            return candidate
    raise DatasetError(f"{VISA_SPLIT_CSV} not found in {folder}; is the archive the VisA release?")


def _binarise_mask_file(src: Path, dst: Path, *, rule: Literal["nonzero", "half_max"]) -> None:
    """Write ``src`` as a 0/255 single-channel PNG at ``dst`` (atomically).

    ``nonzero``: every non-zero pixel is foreground (VisA masks hold small class ids);
    ``half_max``: pixels at or above half the mask's maximum are foreground.
    """
    try:
        with Image.open(src) as img:
            values = mask_values(img)  # colour channels reduced, alpha ignored (as prepare does)
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read mask {src}: {err}; replace or remove the file") from err
    peak = float(values.max()) if values.size else 0.0
    binary = values != 0 if rule == "nonzero" else (values >= 0.5 * peak) & (values > 0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        Image.fromarray((binary * 255).astype(np.uint8), mode="L").save(tmp, format="PNG")


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
                    _binarise_mask_file(src_root / mask, dst_mask, rule="nonzero")
        stage.seal()
        os.replace(tmp, dest)
    return dest


def fetch_dataset(
    name: Literal["mvtec", "visa"],
    root: str | Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download, verify, extract (and for VisA convert) a dataset; return its MVTec-layout root.

    Files: the archive in ``<root>/downloads/``, the dataset in ``<root>/<name>/`` with a
    :data:`FETCH_MARKER` written last; when the marker exists nothing is downloaded or written.
    ``url``/``sha256`` override the registry (mirrors, tests). Extraction and conversion happen
    in a staging folder ``<root>/.<name>.<host>-p<pid>.<random>.fetch`` (a
    :class:`~skrd4ad.io.StagingDir`), removed on failure; one left by a killed fetch of the same
    dataset is removed by the next call (never one that a live process still holds), as are the
    temporary folders of versions before it (``.<name>.staging``, ``.<name>.converted`` and their
    ``*.extract`` / ``*.convert`` siblings). A full disk raises :class:`~skrd4ad.io.DiskFullError`.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    source = DATASETS[name]
    url = url or source.url
    sha256 = (sha256 or source.sha256).lower()
    root = Path(root)
    out = root / name
    marker = out / FETCH_MARKER
    if marker.is_file():
        return out
    if out.exists():
        raise DatasetError(
            f"{out} exists but has no {FETCH_MARKER} (not a completed fetch); remove it and re-run, "
            "or use it directly as a folder dataset"
        )
    _remove_legacy_staging(root, name)
    clean_stale_staging(root, name, "fetch")  # before downloading: frees the space they hold
    archive = download(url, root / "downloads" / source.archive_name, sha256, progress=progress)
    # Everything temporary (extraction, VisA conversion) lives in one staging folder of this fetch;
    # those of killed fetches of the same dataset are removed here (the extracted MVTec AD is ~5 GB).
    with StagingDir(root, name, "fetch") as stage:
        extracted = safe_extract(archive, stage.path / "extracted")
        if name == "visa":
            layout_root = convert_visa(_find_visa_root(extracted), stage.path / "converted", move=True)
        else:
            layout_root = _layout_root(extracted)
        classes = list_classes(layout_root)
        write_json_atomic(
            layout_root / FETCH_MARKER,
            {"name": name, "url": url, "sha256": sha256, "archive": str(archive), "classes": classes},
        )
        try:
            os.replace(layout_root, out)
        except OSError:
            if marker.is_file():  # a concurrent fetch finished first: same verified archive
                return out
            raise
    return out


def _remove_legacy_staging(root: Path, name: str) -> None:
    """Remove the temporary folders older versions of :func:`fetch_dataset` left when killed."""
    for fixed in (f".{name}.staging", f".{name}.converted"):
        folder = root / fixed
        if folder.is_dir() and not folder.is_symlink():
            size = tree_disk_usage(folder)
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed stale staging folder %s (%s MB) left by an interrupted run", folder, format_mb(size))
        clean_stale_staging(root, fixed, "extract" if fixed.endswith("staging") else "convert")


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
            _binarise_mask_file(mask, tmp / "ground_truth" / defect_type / f"{image.stem}_mask.png", rule="half_max")
        stage.seal()
        os.replace(tmp, dest)
    return dest


def dataset_root(source: str, data_dir: str | Path, *, progress: bool = True) -> Path:
    """Resolve a dataset spec to an MVTec-layout root.

    ``"mvtec"`` / ``"visa"`` fetch into ``data_dir`` (:func:`fetch_dataset`); anything else is a
    path to a folder already in MVTec layout (``ground_truth`` optional). The embedded synthetic
    set is made by :func:`skrd4ad.data.synthetic.generate`.
    """
    if source in DATASETS:
        return fetch_dataset(source, data_dir, progress=progress)  # type: ignore[arg-type]
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset {source!r} is neither one of {sorted(DATASETS)} nor an existing folder; "
            "pass a folder in MVTec layout (<root>/<class>/train/good/...)"
        )
    if not list_classes(root):
        raise DatasetError(f"{root} holds no <class>/train folders; it is not in MVTec layout")
    return root
