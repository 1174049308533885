"""The base class of a dataset source: where a dataset comes from and how it becomes MVTec AD's
layout (see :mod:`skrd4ad.data.layout`).  Importing this module imports neither numpy nor torch
(the registry's names are read on every Snakemake parse and by the params schema); methods
import what they need when they run.

A source subclass sets the class attributes and overrides what differs:

- a downloadable source sets ``locations`` (tried in order), ``sha256``, ``archive_name`` and
  overrides ``convert(extracted, work) -> layout root`` when the archive is not already in
  MVTec layout (the default finds the folder that holds ``<class>/train``);
- a source that is not downloaded (generated, a user's folder) overrides ``materialise``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from skrd4ad.data.layout import DatasetError, list_classes
from skrd4ad.io import (
    DiskFullError,
    StagingDir,
    clean_stale_staging,
    format_mb,
    replace_dir,
    tree_disk_usage,
    write_json_atomic,
)

log = logging.getLogger(__name__)

FETCH_MARKER = ".skrd4ad_fetch.json"
"""Written last into a fetched dataset root; its presence makes :meth:`Source.fetch` a no-op."""

MIRROR_KEY = "data.mirror"
"""The params key of a mirror of a source's archive (``{urls: [...], sha256: ...}``; null: the source's)."""


@dataclass(frozen=True)
class Location:
    """One place an archive can be downloaded from.  A server that first answers with an HTML
    confirmation page (Google Drive, for files too large to virus-scan) is followed through it."""

    url: str
    note: str = ""


class Source:
    """One dataset source (see the module docstring).  Instances are stateless and shared."""

    #: Registry key: the ``data.dataset`` value, the default ``data.name`` of its outputs.
    name: ClassVar[str] = ""
    #: Display name, e.g. ``"MVTec AD"``.
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Where the archive is downloaded from, tried in order (empty: not downloaded).
    locations: ClassVar[tuple[Location, ...]] = ()
    sha256: ClassVar[str] = ""
    #: Archive size in bytes (``None``: unknown); printed with the licence when downloading.
    size: ClassVar[int | None] = None
    archive_name: ClassVar[str] = ""
    #: Printed once, when the archive is downloaded.
    licence: ClassVar[str] = ""
    #: Class names (empty: whatever the folder holds).
    classes: ClassVar[tuple[str, ...]] = ()
    #: Pixel masks: True every class has them, False image-level only, None per class (auto).
    has_masks: ClassVar[bool | None] = None
    #: Extra image sets beside train/good and test/<defect>: ``{"train/bad": "labelled_anomalies"}``
    #: (labelled anomalous images outside the test set; never trained on).
    extra_sets: ClassVar[dict[str, str]] = {}
    #: True: the dataset is the user's folder ``data.folder`` (other sources ignore it).
    user_folder: ClassVar[bool] = False
    #: The source's own settings, JSON-schema properties with defaults: params ``data.<name>``
    #: (:func:`skrd4ad.data.sources.inject_schema` adds them to the params schema), handed to
    #: :meth:`materialise` as ``data[name]``.
    settings: ClassVar[dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<dataset source {self.name}>"

    @property
    def downloadable(self) -> bool:
        return bool(self.locations)

    @property
    def extra_train_folders(self) -> tuple[str, ...]:
        """The folders under ``<class>/train`` besides ``good`` that this source's extra sets hold
        (``{"train/bad": ...}`` -> ``("bad",)``), sorted."""
        return tuple(sorted(key.split("/", 1)[1] for key in self.extra_sets))

    # --- archive -> MVTec layout ----------------------------------------------------------------

    def convert(self, extracted: Path, work: Path) -> Path:
        """The MVTec-layout root made from the extracted archive ``extracted``; ``work`` is an
        empty folder for converted copies (same file system, removed afterwards).  Default: the
        archive already is in MVTec layout, at its top or in its single top folder."""
        return layout_root(extracted)

    # --- the download stage ---------------------------------------------------------------------

    def materialise(self, data: dict[str, Any], out: Path) -> None:
        """The download stage: put this dataset in MVTec layout at ``out`` (``data``: the
        ``data`` params section).  Default: fetch into ``out.parent/<name>`` (shared by every
        ``data.name``) from ``data.mirror`` when set (a copy behind a firewall), else from the
        source's locations, and hard-link it to ``out`` when that is another folder."""
        mirror = data.get("mirror")
        locations = tuple(Location(u, note=MIRROR_KEY) for u in mirror["urls"]) if mirror else None
        key = f"{MIRROR_KEY}.sha256" if mirror else f"{MIRROR_KEY} (urls and sha256 of your copy)"
        fetched = self.fetch(out.parent, locations=locations, sha256=mirror["sha256"] if mirror else None,
                             sha256_key=key)
        if fetched.resolve() != out.resolve():
            copy_tree(fetched, out, link=True)

    def fetch(self, root: str | Path, *, locations: tuple[Location, ...] | None = None,
              sha256: str | None = None, progress: bool = True, sha256_key: str = "sha256") -> Path:
        """Download, verify, extract and convert; return the MVTec-layout root ``<root>/<name>``.

        The archive goes to ``<root>/downloads/``, the dataset to ``<root>/<name>/`` with a
        :data:`FETCH_MARKER` written last, once the converted folder holds classes and only those
        the source declares.  When the marker exists nothing is downloaded or written, but a
        ``sha256`` other than the one it was fetched with is an error (delete the folder to
        fetch the other archive).  ``locations``/``sha256`` override the source's (mirrors,
        tests); ``sha256_key`` names the setting they came from in messages (``--sha256``,
        ``data.mirror.sha256``).  Extraction and conversion happen in a
        :class:`~skrd4ad.io.StagingDir` ``<root>/.<name>.<host>-p<pid>.<random>.fetch``, removed
        on failure (and by the next call when a killed fetch left one); their errors name the
        archive and its member (``<archive>:<member>``), not that folder.  An archive that
        matches its sha256 but cannot be read is moved aside as ``<archive>.corrupt``.
        """
        from skrd4ad.data.download import BrokenArchiveError, check_sha256, download_from, safe_extract

        if not self.downloadable and locations is None:
            raise DatasetError(f"dataset {self.name!r} is not downloaded (it has no locations)")
        given = locations is not None
        locations = tuple(locations if locations is not None else self.locations)
        own = f"the {self.name} source's sha256"
        sha256 = check_sha256(sha256, sha256_key) if sha256 else check_sha256(self.sha256, own)
        root = Path(root)
        out = root / self.name
        marker = out / FETCH_MARKER
        if marker.is_file():
            self._check_fetched(marker, sha256, [loc.url for loc in locations] if given else [], sha256_key)
            return out
        if out.exists():
            raise DatasetError(
                f"{out} exists but has no {FETCH_MARKER} (not a completed fetch); remove it and re-run, "
                "or use it directly as a folder dataset"
            )
        _remove_legacy_staging(root, self.name)
        clean_stale_staging(root, self.name, "fetch")  # before downloading: frees the space they hold
        archive = root / "downloads" / self.archive_name
        if not archive.exists() and (self.licence or self.size):  # once, when the archive is downloaded
            size = f"{archive.name}, {self.size / 1e9:.2f} GB; " if self.size else ""
            log.info("%s: %slicence %s", self.label or self.name, size, self.licence or "not stated")
        archive, url = download_from([loc.url for loc in locations], archive, sha256, progress=progress,
                                     sha256_key=sha256_key)
        with StagingDir(root, self.name, "fetch") as stage:
            extracted = stage.path / "extracted"
            try:
                safe_extract(archive, extracted)
                (stage.path / "work").mkdir()
                converted = self.convert(extracted, stage.path / "work")
                classes = self._checked_classes(converted, archive)
            except BrokenArchiveError as err:  # its sha256 matched: the copy it came from is broken
                corrupt = archive.with_name(archive.name + ".corrupt")
                os.replace(archive, corrupt)
                raise BrokenArchiveError(archive, f"{err.reason}, although its sha256 matches", fix=(
                    f"moved it aside as {corrupt}: the copy it came from is broken and its sha256 was taken of "
                    f"the broken file; fix that copy and {sha256_key}, or use another location, then re-run")) from err
            except DatasetError as err:  # the staging folder is gone when this is read: name archive:member
                raise DatasetError(_as_member(str(err), extracted, archive)) from err
            except DiskFullError as err:
                raise DiskFullError(err.errno, re.sub(re.escape(str(stage.path)) + r"[^\s;]*", str(out), str(err)),
                                    str(out)) from err
            write_json_atomic(converted / FETCH_MARKER, {"name": self.name, "url": url, "sha256": sha256,
                                                          "archive": str(archive), "classes": classes})
            try:
                os.replace(converted, out)
            except OSError:
                if marker.is_file():  # a concurrent fetch finished first: same verified archive
                    return out
                raise
        return out

    def _checked_classes(self, converted: Path, archive: Path) -> list[str]:
        """The classes of the converted folder; DatasetError when there is none or one the source
        does not declare (checked before the marker is written, not at prepare)."""
        classes = list_classes(converted)
        label = self.label or self.name
        if not classes:
            raise DatasetError(f"{archive}: converting it made no <class>/train folder; is it the {label} release?")
        unknown = [c for c in classes if self.classes and c not in self.classes]
        if unknown:
            raise DatasetError(f"{archive}: converting it made class {', '.join(unknown)}, not one of the "
                               f"{self.name} source's classes ({', '.join(self.classes)}); is it the {label} release?")
        return classes

    def _check_fetched(self, marker: Path, sha256: str, urls: list[str], sha256_key: str) -> None:
        """A finished fetch asked for again: fine when it was fetched with ``sha256`` (logged when
        from another location), else DatasetError naming both archives and the fix."""
        try:
            done = json.loads(marker.read_text())
            done_sha, done_url = done["sha256"], done.get("url")
        except (OSError, ValueError, KeyError, TypeError):
            return  # an unreadable marker: nothing to compare
        out = marker.parent
        if done_sha != sha256:
            raise DatasetError(
                f"{out} is already fetched from {done_url} (sha256 {done_sha}), not the archive asked for "
                f"(sha256 {sha256}); delete {out} and {done.get('archive')} to fetch that one, "
                f"or set {sha256_key} to {done_sha}")
        if urls and done_url not in urls:
            log.info("%s is already fetched from %s (same sha256); not downloading it from %s", out, done_url,
                     ", ".join(urls))


def _as_member(message: str, extracted: Path, archive: Path) -> str:
    """``message`` with the paths inside the extraction folder ``extracted`` written as
    ``<archive>:<member>`` (that folder is deleted when the message is read).

    >>> stage = Path("/r/.x.fetch/extracted")
    >>> _as_member(f"{stage}/VAD/val: unknown; in {stage}", stage, Path("/r/VAD.zip"))
    '/r/VAD.zip:VAD/val: unknown; in /r/VAD.zip'
    """
    return message.replace(f"{extracted}{os.sep}", f"{archive}:").replace(str(extracted), str(archive))


def layout_root(folder: Path) -> Path:
    """``folder`` itself when it holds class folders, else its single sub-folder that does."""
    if list_classes(folder):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and list_classes(subdirs[0]):
        return subdirs[0]
    raise DatasetError(f"no <class>/train folders found in {folder}; is the archive the right dataset?")


def binarise_mask_file(src: Path, dst: Path, *, rule: Literal["nonzero", "half_max"]) -> None:
    """Write ``src`` as a 0/255 single-channel PNG at ``dst`` (atomically).

    ``nonzero``: every non-zero pixel is foreground (VisA masks hold small class ids);
    ``half_max``: pixels at or above half the mask's maximum are foreground.
    """
    import numpy as np
    from PIL import Image

    from skrd4ad.data.masks import mask_values
    from skrd4ad.io import atomic_path

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


def copy_tree(src: Path, out: Path, link: bool = False) -> None:
    """Copy (or hard-link) ``src`` to ``out`` through a temporary sibling, replacing ``out``."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system
            shutil.copy2(a, b)

    tmp = out.with_name(f".{out.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    try:
        shutil.copytree(src, tmp, copy_function=link_or_copy if link else shutil.copy2)
    except BaseException:  # a full disk halfway through a large folder: no partial copy left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def _remove_legacy_staging(root: Path, name: str) -> None:
    """Remove the temporary folders older versions of the fetch left when killed."""
    for fixed in (f".{name}.staging", f".{name}.converted"):
        folder = root / fixed
        if folder.is_dir() and not folder.is_symlink():
            size = tree_disk_usage(folder)
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed stale staging folder %s (%s MB) left by an interrupted run", folder, format_mb(size))
        clean_stale_staging(root, fixed, "extract" if fixed.endswith("staging") else "convert")
