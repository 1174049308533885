"""Datasets: download and convert, the embedded synthetic default, layout checks, prepared cache.

Every source ends in MVTec AD's layout (``<root>/<class>/train/good``, ``test/<defect>``,
``ground_truth/<defect>/<name>_mask.png``), then :func:`prepare_class` decodes it once into
arrays that :class:`PreparedClass` memory-maps for training and evaluation. See docs/data.md.
"""

from skrd4ad.data.download import ChecksumError, DownloadError, UnsafeArchiveError, download, safe_extract
from skrd4ad.data.layout import DatasetError, Sample, list_classes, scan_class
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.prepared import PreparedClass, batch_from, iterate_batches, to_model_input
from skrd4ad.data.sources import DATASETS, convert_visa, dataset_root, fetch_dataset, import_two_folders
from skrd4ad.data.synthetic import DEFAULT_CLASSES, DEFECT_TYPES, contact_sheet, generate

__all__ = [
    "DATASETS",
    "DEFAULT_CLASSES",
    "DEFECT_TYPES",
    "ChecksumError",
    "DatasetError",
    "DownloadError",
    "PreparedClass",
    "Sample",
    "UnsafeArchiveError",
    "batch_from",
    "contact_sheet",
    "convert_visa",
    "dataset_root",
    "download",
    "fetch_dataset",
    "generate",
    "import_two_folders",
    "iterate_batches",
    "list_classes",
    "prepare_class",
    "safe_extract",
    "scan_class",
    "to_model_input",
]
