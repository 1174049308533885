"""VAD, the Valeo Anomaly Dataset (Baitieva et al., 2024): one class ``vad`` of 5,000 images, image
level only (no masks), with 1,000 labelled anomalous *training* images.

The archive's documented layout, and what it becomes (``<root>/vad/...``, MVTec layout)::

    train/good                 2,000 normal        -> vad/train/good   (the one-class training set)
    train/bad                  1,000 anomalous     -> vad/train/bad    (labelled anomalies, never trained on)
    test/good                  1,000 normal        -> vad/test/good
    test/bad                   anomalous           -> vad/test/bad
    test/bad_unseen_defects    anomalous, defect   -> vad/test/bad_unseen_defects
                               types unseen in train/bad (165 images; 1,000 anomalous test images in all)
    low_shot_train.json        the low-shot benchmark's split (not used)

The converter logs what it found (folders, image counts) and refuses, with one line, a layout it
does not know rather than guess: any other folder or file (``val/``, ``README.txt``), a second
top-level folder, a missing one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from skrd4ad.data.layout import DatasetError, list_images

from skrd4ad.data.sources.base import Location, Source

log = logging.getLogger(__name__)

CLASS = "vad"
#: The folders of the archive: required ones, and the documented image counts where known.
KNOWN_FOLDERS = {"train": ("good", "bad"), "test": ("good", "bad", "bad_unseen_defects")}
REQUIRED_FOLDERS = ("train/good", "test/good", "test/bad")
#: Files beside train/ and test/ in the release (the dataset tree in github.com/abc-125/vad README.md at a9ffd97, its latest commit), left out of the dataset.
KNOWN_FILES = ("low_shot_train.json",)
DOCUMENTED_COUNTS = {"train/good": 2000, "train/bad": 1000, "test/good": 1000,
                     "test/bad+test/bad_unseen_defects": 1000, "test/bad_unseen_defects": 165}


class VAD(Source):
    name = "vad"
    label = "VAD (Valeo)"
    description = "Valeo Anomaly Dataset, one class, image level, train/bad kept as labelled anomalies"
    locations = (
        Location("https://eu.mydrive.ch/shares/90677/c42f2e42db42dd710153dbadc2160f88/download/"
                 "453437487-1757245265/VAD.zip", note="mirror used by anomalib's VAD datamodule"),
        Location("https://drive.google.com/uc?export=download&id=1LbHHJHCdkvhzVqekAIRdWjBWaBHxPjuu",
                 note="Google Drive file the seed links (answers with a confirmation page first)"),
    )
    sha256 = "8655b46d9de19f1c50d3eb79567cc3504773979892281a669d0c36680050050a"
    archive_name = "VAD.zip"
    licence = "CC BY-NC-SA 4.0 (Valeo; non-commercial use, share alike)"
    classes = (CLASS,)
    has_masks = False
    extra_sets = {"train/bad": "labelled_anomalies"}

    def convert(self, extracted: Path, work: Path) -> Path:
        return convert_vad(extracted, work / "converted")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX")


def _layout() -> str:
    folders = ", ".join(f"{split}/{kind}" for split, kinds in KNOWN_FOLDERS.items() for kind in kinds)
    return f"VAD's layout: {folders} and {', '.join(KNOWN_FILES)}, in one top folder"


def _unknown(entry: Path) -> DatasetError:
    return DatasetError(f"unexpected {entry} ({_layout()}); not converting a layout this code does not know "
                        "(is the archive the VAD release?)")


def find_vad_root(folder: Path, depth: int = 3) -> Path:
    """The folder of the extracted archive that holds ``train/`` and ``test/``: ``folder`` itself or
    the only entry on each level below it (at most ``depth`` levels); DatasetError naming a second
    top-level folder or a stray file on the way."""
    here = folder
    for _ in range(depth + 1):
        if (here / "train").is_dir() and (here / "test").is_dir():
            return here
        entries = _visible(here)
        subdirs = [p for p in entries if p.is_dir()]
        if len(subdirs) > 1:
            names = ", ".join(p.name for p in subdirs)
            raise DatasetError(f"{here} holds {len(subdirs)} folders ({names}) and no train/ and test/ ({_layout()}); "
                               "not converting a layout this code does not know")
        if len(subdirs) != 1:
            break
        stray = [p for p in entries if not p.is_dir()]
        if stray:
            raise _unknown(stray[0])
        here = subdirs[0]
    raise DatasetError(f"{folder}: no folder with train/ and test/ found ({_layout()}); "
                       "is the archive the VAD release?")


def scan_vad(root: Path) -> dict[str, int]:
    """Image count of every folder ``<split>/<kind>`` of the VAD layout at ``root``; DatasetError
    naming the first unknown entry (folder or file) or missing folder."""
    for entry in _visible(root):
        if not (entry.is_dir() and entry.name in KNOWN_FOLDERS or entry.is_file() and entry.name in KNOWN_FILES):
            raise _unknown(entry)
    counts: dict[str, int] = {}
    for split, kinds in KNOWN_FOLDERS.items():
        for entry in _visible(root / split):
            if not entry.is_dir() or entry.name not in kinds:
                raise _unknown(entry)
            counts[f"{split}/{entry.name}"] = len(list_images(entry))
    missing = [f for f in REQUIRED_FOLDERS if not counts.get(f)]
    if missing:
        raise DatasetError(f"{root / missing[0]} is missing or empty ({_layout()}); is the archive the VAD release?")
    return counts


def convert_vad(extracted: str | Path, dest: str | Path) -> Path:
    """Move the extracted VAD archive into MVTec layout ``<dest>/vad/{train,test}/...``; return ``dest``.
    Logs what it found (folders and image counts, against the documented ones)."""
    extracted, dest = Path(extracted), Path(dest)
    root = find_vad_root(extracted)
    counts = scan_vad(root)
    found = ", ".join(f"{k} {n}" for k, n in counts.items())
    log.info("VAD archive (%s): %s", root.relative_to(extracted) if root != extracted else ".", found)
    left_out = [f for f in KNOWN_FILES if (root / f).exists()]
    if left_out:
        log.info("VAD archive: %s left out (not used)", ", ".join(left_out))
    combined = dict(counts, **{"test/bad+test/bad_unseen_defects":
                               counts.get("test/bad", 0) + counts.get("test/bad_unseen_defects", 0)})
    differ = [f"{k} {combined.get(k, 0)} (documented {n})" for k, n in DOCUMENTED_COUNTS.items()
              if combined.get(k, 0) != n]
    if differ:
        log.warning("VAD archive differs from the documented release: %s", ", ".join(differ))
    (dest / CLASS).mkdir(parents=True)
    for split in KNOWN_FOLDERS:
        os.replace(root / split, dest / CLASS / split)
    return dest


SOURCE = VAD()
