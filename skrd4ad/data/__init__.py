"""Datasets: sources (download and convert), the embedded synthetic default, layout checks, prepared cache.

Every source ends in MVTec AD's layout (``<root>/<class>/train/good``, ``test/<defect>``,
``ground_truth/<defect>/<name>_mask.png``), then :func:`prepare_class` decodes it once into
arrays that :class:`PreparedClass` memory-maps for training and evaluation. See docs/data.md.
The names below are imported on first use, so ``skrd4ad.data.sources`` (read by the params
schema) stays free of numpy and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ChecksumError": "download", "DownloadError": "download", "UnsafeArchiveError": "download",
    "download": "download", "safe_extract": "download",
    "DatasetError": "layout", "Sample": "layout", "list_classes": "layout", "scan_class": "layout",
    "prepare_class": "prepare",
    "PreparedClass": "prepared", "batch_from": "prepared", "iterate_batches": "prepared",
    "to_model_input": "prepared",
    "convert_visa": "sources", "dataset_root": "sources", "fetch_dataset": "sources",
    "import_two_folders": "sources",
    "DEFAULT_CLASSES": "sources.synthetic.generate", "DEFECT_TYPES": "sources.synthetic.generate",
    "contact_sheet": "sources.synthetic.generate", "generate": "sources.synthetic.generate",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
