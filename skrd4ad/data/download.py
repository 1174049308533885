"""Resumable, checksum-verified downloads and archive extraction that cannot escape its folder.

:func:`download` streams to ``<dest>.part``, resumes it with an HTTP ``Range`` request, and
renames it onto ``dest`` only after its sha256 matched. :func:`safe_extract` checks every member
of a tar/zip archive before writing anything and extracts into a temporary sibling that is
renamed into place when complete, so an interrupted extraction never looks complete; the
temporary folders of killed extractions are removed by the next one (:class:`skrd4ad.io.StagingDir`).
Both check the free space first where the size is known; a full disk raises
:class:`skrd4ad.io.DiskFullError`.  A truncated or damaged archive raises :class:`BrokenArchiveError`;
a sha256 that is not 64 hex digits is refused before any request (:func:`check_sha256`).
"""

from __future__ import annotations

import gzip
import http.client
import html.parser
import lzma
import os
import re
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from skrd4ad import __version__
from skrd4ad.io import (
    STAGING_LOCK,
    DiskFullError,
    StagingDir,
    check_free_space,
    disk_full_as_error,
    sha256_file,
    writable_dir,
)


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, incomplete transfer) after all retries."""


class ChecksumError(DownloadError):
    """A downloaded file's sha256 differs from the expected one; the file is kept for inspection."""


def check_sha256(sha256: str, key: str = "sha256") -> str:
    """``sha256`` in lower case when it is 64 hex digits; else ``ValueError`` naming ``key`` (the
    setting it came from), before anything is downloaded.

    >>> check_sha256("abc", "--sha256")
    Traceback (most recent call last):
    ValueError: --sha256 'abc' is not a sha256 (64 hex digits); pass the archive's full sha256 (sha256sum prints it)
    """
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"{key} {sha256!r} is not a sha256 (64 hex digits); pass the archive's full sha256 "
                         "(sha256sum prints it)")
    return sha256.lower()


class _PermanentError(DownloadError):
    """An HTTP client error (4xx) that retrying cannot fix."""


class _ConfirmationPage(Exception):
    """The server answered with an HTML page whose form or link leads to the file (Google Drive's
    "can't scan this file for viruses" page); ``url`` is that link."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _ConfirmParser(html.parser.HTMLParser):
    """The first form's action and inputs, and every link whose query has ``confirm=``."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []
        self.links: list[str] = []
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields.append((a["name"], a.get("value", "")))
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def confirmation_target(page: str, url: str) -> str | None:
    """The URL a download-confirmation page leads to (its form, submitted with its inputs, or a
    link with ``confirm=``), resolved against ``url``; ``None`` when the page has neither.  A
    target that is not http or https (``file:``, ``ftp:``, ...) raises :class:`_PermanentError`
    naming it: a web page must not make the download read a local file or another protocol.

    >>> confirmation_target('<form action="/get"><input type="hidden" name="id" value="x"></form>', "http://h/uc?id=x")
    'http://h/get?id=x'
    >>> confirmation_target('<a href="file:///etc/passwd?confirm=t">go</a>', "https://h/uc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    skrd4ad.data.download._PermanentError: the confirmation page of https://h/uc leads to file:///etc/passwd?...
    """
    parser = _ConfirmParser()
    parser.feed(page)
    if parser.action is not None and parser.fields:
        target = urllib.parse.urljoin(url, parser.action or url)
        query = urllib.parse.urlencode(parser.fields)
        target = f"{target}{'&' if '?' in target else '?'}{query}"
    elif parser.links:
        target = urllib.parse.urljoin(url, parser.links[0])
    else:
        return None
    if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
        raise _PermanentError(f"the confirmation page of {url} leads to {target}, not an http or https URL; "
                              "refusing to follow it: open the page in a browser, or use another location (--url)")
    return target


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination or is not a plain file/dir/link."""


class BrokenArchiveError(ValueError):
    """An archive cannot be read: not a tar or zip, truncated or damaged.  ``reason`` says which,
    without the archive's path; a caller that knows where it came from words the ``fix``."""

    def __init__(self, archive: Path, reason: str, fix: str = "check the download") -> None:
        super().__init__(f"{archive} {reason}; {fix}")
        self.archive, self.reason = archive, reason


#: What reading a truncated or damaged tar/zip raises (compression layers included).
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


_USER_AGENT = f"skrd4ad/{__version__} (+python-urllib)"


def _show_progress(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


def _expected_total(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """Total file size from ``Content-Range`` (206) or ``Content-Length`` (+offset); None if unknown."""
    content_range = resp.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return offset + int(length)
    return None


def _fetch_once(url: str, part: Path, *, progress: bool, chunk_size: int, timeout: float) -> None:
    """One HTTP request that appends to ``part`` (resuming from its size) or rewrites it.

    Raises :class:`DownloadError` when the transfer ends before the announced size; ``part`` keeps
    what arrived so the next attempt resumes.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset > 0:
            # Range not satisfiable: the .part already holds the whole file (checked by the caller).
            err.close()
            return
        error = _PermanentError if 400 <= err.code < 500 else DownloadError
        raise error(f"GET {url} failed with HTTP {err.code} {err.reason}; check the URL") from err
    with resp:
        if resp.headers.get_content_type() == "text/html":  # no archive is HTML: a confirmation page
            page = resp.read(2 << 20).decode(resp.headers.get_content_charset() or "utf-8", "replace")
            target = confirmation_target(page, resp.geturl())
            if target is None:
                raise _PermanentError(f"GET {url} answered with an HTML page, not the file, and the page has no "
                                      "download form or confirm link; open it in a browser or use another location")
            raise _ConfirmationPage(target)
        if offset > 0 and resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise DownloadError(
                    f"GET {url}: server answered Range bytes={offset}- with Content-Range {content_range!r}; "
                    f"delete {part} to download from scratch"
                )
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # fresh download, or a server that ignored Range: restart
        total = _expected_total(resp, offset)
        on_disk = part.stat().st_size if part.exists() else 0  # kept when appending, freed when rewriting
        remaining = None if total is None else max(total - on_disk, 0)
        if remaining:
            check_free_space(part.parent, remaining, part)
        received = offset
        with disk_full_as_error(part, remaining), open(part, mode) as fh, tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not _show_progress(progress),
        ) as bar:
            while True:
                try:
                    chunk = resp.read(chunk_size)
                except (OSError, http.client.HTTPException) as err:
                    raise DownloadError(f"GET {url}: connection lost after {received} bytes ({err})") from err
                if not chunk:
                    break
                fh.write(chunk)  # a full disk: DiskFullError (not retried; the .part is kept)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received < total:
            raise DownloadError(f"GET {url}: connection closed after {received} of {total} bytes")


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str,
    *,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    retries: int = 3,
    timeout: float = 60.0,
    sha256_key: str = "sha256",
) -> Path:
    """Download ``url`` to ``dest`` and verify its sha256 (hex); return ``dest``.

    An existing ``dest`` whose hash matches is returned without any request. Data is streamed to
    ``<dest>.part``; an existing ``.part`` is resumed with ``Range: bytes=<size>-`` (a server that
    ignores Range answers 200 and the file is restarted). An interrupted transfer is resumed up to
    ``retries`` more times. On a hash mismatch the data is moved to ``<dest>.corrupt`` (kept for
    inspection) and :class:`ChecksumError` names both hashes. A progress bar is shown on a TTY
    when ``progress`` is true. When the server announces the size, the free space is checked
    before writing; too little, or a disk that fills up, raises :class:`skrd4ad.io.DiskFullError`
    naming ``<dest>.part`` (kept: the next call resumes it once there is space).  A ``sha256``
    that is not 64 hex digits raises ``ValueError`` before any request; ``sha256_key`` names the
    setting it came from in the messages (``--sha256``, ``data.mirror.sha256``).
    """
    dest = Path(dest)
    expected = check_sha256(sha256, sha256_key)
    if dest.exists():
        actual = sha256_file(dest)
        if actual == expected:
            return dest
        raise ChecksumError(
            f"{dest} exists but its sha256 is {actual}, expected {expected}; "
            f"delete it to download again, or set {sha256_key} to {actual} if it is the archive you want"
        )
    writable_dir(dest.parent, dest)  # a read-only or unwritable folder: one line naming dest, before any transfer
    part = dest.with_name(dest.name + ".part")
    pages = 0
    attempt = -1
    while attempt < retries:
        attempt += 1
        try:
            _fetch_once(url, part, progress=progress, chunk_size=chunk_size, timeout=timeout)
            break
        except _ConfirmationPage as page:
            pages += 1
            if pages > 3:
                raise DownloadError(f"GET {url}: more than 3 confirmation pages in a row; use another location")
            url, attempt = page.url, attempt - 1  # following the page is not a retry
        except DownloadError as err:
            if attempt == retries or isinstance(err, _PermanentError):
                raise
        except DiskFullError:
            raise  # retrying cannot help
        except (OSError, http.client.HTTPException) as err:  # refused, reset, DNS, timeout
            if attempt == retries:
                kept = part.exists() and part.stat().st_size > 0
                fix = f"re-run to resume from {part}" if kept else "check the URL and the network, then re-run"
                raise DownloadError(f"GET {url} failed: {err}; {fix}") from err
    if not part.exists():
        raise DownloadError(f"GET {url} produced no data; check the URL")
    actual = sha256_file(part)
    if actual != expected:
        corrupt = dest.with_name(dest.name + ".corrupt")
        os.replace(part, corrupt)
        raise ChecksumError(
            f"sha256 mismatch for {url}: expected {expected}, got {actual}; the data is kept as "
            f"{corrupt} for inspection (delete it and re-run to download again); if it is the archive you want, "
            f"set {sha256_key} to {actual}"
        )
    os.replace(part, dest)
    return dest


def download_from(urls: list[str], dest: str | os.PathLike[str], sha256: str, **kwargs: object) -> tuple[Path, str]:
    """:func:`download` from the first of ``urls`` that delivers the file with this sha256; return
    ``(dest, url)``.  When every location fails, the error of the last one is raised (of its
    class, e.g. :class:`ChecksumError`), its message listing each location's failure."""
    if not urls:
        raise DownloadError(f"no location to download {dest} from; pass a URL")
    failures: list[str] = []
    for url in urls:
        try:
            return download(url, dest, sha256, **kwargs), url  # type: ignore[arg-type]
        except DownloadError as err:
            failures.append(str(err))
            if len(failures) == len(urls):
                if len(urls) == 1:
                    raise
                raise type(err)("every location failed: " + " | ".join(failures)) from err
    raise AssertionError("unreachable")


def _member_target(dest: Path, name: str, archive: Path) -> Path:
    """Absolute path a member named ``name`` would be written to; refuses absolute or escaping names."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute or Windows path; refusing to extract")
    target = Path(os.path.normpath(dest / name))
    if target != dest and dest not in target.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the folder it is extracted "
                                 "to; refusing to extract")
    return target


def _through_link(name: str, links: set[str]) -> str | None:
    """The first parent of ``name`` that is a link member, else ``None``."""
    parts = PurePosixPath(os.path.normpath(name)).parts
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in links:
            return prefix
    return None


def _check_tar(tar: tarfile.TarFile, tmp: Path, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    links: set[str] = set()
    for m in members:
        target = _member_target(tmp, m.name, archive)
        via = _through_link(m.name, links)
        if via is not None:
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is written through link member {via!r}; refusing")
        if m.issym():
            if os.path.isabs(m.linkname):
                raise UnsafeArchiveError(f"{archive}: symlink {m.name!r} -> {m.linkname!r} is absolute; refusing")
            resolved = Path(os.path.normpath(target.parent / m.linkname))
            if resolved != tmp and tmp not in resolved.parents:
                raise UnsafeArchiveError(f"{archive}: symlink {m.name!r} -> {m.linkname!r} points outside; refusing")
            links.add(os.path.normpath(m.name))
        elif m.islnk():
            _member_target(tmp, m.linkname, archive)  # hard-link targets are archive-relative
            links.add(os.path.normpath(m.name))
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(
                f"{archive}: member {m.name!r} is a device, FIFO or other special file; refusing to extract"
            )
    return members


def _check_zip(zf: zipfile.ZipFile, tmp: Path, archive: Path) -> None:
    for info in zf.infolist():
        _member_target(tmp, info.filename, archive)
        mode = (info.external_attr >> 16) & 0o170000
        if mode not in (0, 0o100000, 0o040000):  # unknown, regular file, directory
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link or special file; refusing")


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a tar (plain/gz/bz2/xz) or zip ``archive`` into the new directory ``dest``; return ``dest``.

    Every member is checked first: absolute paths, ``..`` escaping ``dest``, links pointing outside
    it, members written through a link, and device/FIFO files raise :class:`UnsafeArchiveError`
    and nothing is written. Then the free space is checked against the members' total size
    (:class:`skrd4ad.io.DiskFullError` names ``dest`` and the size, also when the disk fills up
    while extracting). Extraction happens in a temporary sibling
    (``.<dest name>.<host>-p<pid>.<random>.extract``, a :class:`skrd4ad.io.StagingDir`) renamed onto
    ``dest`` when complete; such folders left by killed extractions into ``dest`` are removed
    first. ``dest`` must not exist (raises ``FileExistsError``).  A file that is not a tar or zip,
    or one that ends early or is damaged, raises :class:`BrokenArchiveError` (nothing is left).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it to extract {archive} again")
    with StagingDir(dest.parent, dest.name, "extract") as stage:
        tmp = stage.path.resolve()
        try:
            _extract_into(archive, tmp, dest)
        except getattr(tarfile, "FilterError", ()) as err:  # the extraction filter's own refusal: unsafe, not broken
            raise UnsafeArchiveError(f"{archive}: {err}; refusing to extract") from err
        except _READ_ERRORS as err:
            raise BrokenArchiveError(archive, f"is truncated or damaged ({type(err).__name__}: {err})") from err
        stage.seal()
        os.replace(tmp, dest)
    return dest


def _extract_into(archive: Path, tmp: Path, dest: Path) -> None:
    """:func:`safe_extract`'s checks and extraction into the empty folder ``tmp``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _check_zip(zf, tmp, archive)
            _check_reserved([info.filename for info in zf.infolist()], archive)
            needed = sum(info.file_size for info in zf.infolist() if not info.is_dir())
            check_free_space(tmp, needed, dest)
            with disk_full_as_error(dest, needed):
                zf.extractall(tmp)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, mode="r:*") as tar:
            members = _check_tar(tar, tmp, archive)
            _check_reserved([m.name for m in members], archive)
            needed = sum(m.size for m in members if m.isfile())
            check_free_space(tmp, needed, dest)
            data_filter = getattr(tarfile, "data_filter", None)
            with warnings.catch_warnings(), disk_full_as_error(dest, needed):
                warnings.simplefilter("ignore", DeprecationWarning)
                if data_filter is not None:
                    tar.extractall(tmp, members=members, filter=data_filter)
                else:  # pragma: no cover - Python without extraction filters; checks above still apply
                    tar.extractall(tmp, members=members)
    else:
        raise BrokenArchiveError(archive, "is neither a tar nor a zip archive (or is truncated)")


def _check_reserved(names: list[str], archive: Path) -> None:
    """Refuse a top-level member named like the staging lock file (extraction would overwrite it)."""
    for name in names:
        if os.path.normpath(name).startswith(STAGING_LOCK):
            raise UnsafeArchiveError(f"{archive}: member {name!r} uses the reserved name {STAGING_LOCK}; refusing")
