"""Downloads (local HTTP server with Range support), safe extraction, dataset fetch/convert/import."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_mvtec_class, png_bytes, save_png, tar_bytes, tar_of_folder, zip_bytes
from PIL import Image

from skrd4ad.data.download import (
    BrokenArchiveError,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download,
    safe_extract,
)
from skrd4ad.data.layout import DatasetError, list_classes, scan_class
from skrd4ad.data.sources import FETCH_MARKER, fetch_dataset, import_two_folders


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    log: list[tuple[str, str | None]]
    drop_once: set[str]
    ignore_range: bool
    types: dict[str, str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        range_header = self.headers.get("Range")
        srv.log.append((self.path, range_header))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if self.path in srv.types:  # e.g. text/html: a confirmation page
            self.send_header("Content-Type", srv.types[self.path])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.path in srv.drop_once:  # announce the full length, send half, hang up
            srv.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.drop_once, srv.ignore_range, srv.types = {}, [], set(), False, {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _url(srv: _Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAYLOAD = np.random.default_rng(1).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()


def test_full_download(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = download(_url(server, "/a.bin"), tmp_path / "a.bin", _sha(PAYLOAD), progress=False, chunk_size=4096)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin.part").exists()
    assert server.log == [("/a.bin", None)]


def test_interrupted_download_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    server.drop_once.add("/a.bin")
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="connection closed after"):
        download(_url(server, "/a.bin"), dest, _sha(PAYLOAD), progress=False, retries=0, chunk_size=4096)
    part = tmp_path / "a.bin.part"
    half = len(PAYLOAD) // 2
    assert part.stat().st_size == half and not dest.exists()
    download(_url(server, "/a.bin"), dest, _sha(PAYLOAD), progress=False, retries=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/a.bin", None), ("/a.bin", f"bytes={half}-")]


def test_interrupted_download_retries_within_one_call(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    server.drop_once.add("/a.bin")
    dest = download(_url(server, "/a.bin"), tmp_path / "a.bin", _sha(PAYLOAD), progress=False, retries=1)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.log] == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_server_ignoring_range_restarts(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes that are not the file")
    dest = download(_url(server, "/a.bin"), tmp_path / "a.bin", _sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.log[0][1] == "bytes=33-"  # it asked to resume, got 200, rewrote from the start


def test_complete_part_file_answered_416_is_verified(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)
    dest = download(_url(server, "/a.bin"), tmp_path / "a.bin", _sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_keeps_file_and_names_both_hashes(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(_url(server, "/a.bin"), tmp_path / "a.bin", wrong, progress=False)
    message = str(info.value)
    assert wrong in message and _sha(PAYLOAD) in message and "a.bin.corrupt" in message
    assert (tmp_path / "a.bin.corrupt").read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()


def test_http_404_is_not_retried(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        download(_url(server, "/missing"), tmp_path / "m.bin", "0" * 64, progress=False, retries=3)
    assert len(server.log) == 1


def test_present_verified_file_is_not_fetched_again(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    url, dest = _url(server, "/a.bin"), tmp_path / "a.bin"
    download(url, dest, _sha(PAYLOAD), progress=False)
    download(url, dest, _sha(PAYLOAD), progress=False)
    assert len(server.log) == 1
    dest.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="exists but its sha256"):
        download(url, dest, _sha(PAYLOAD), progress=False)
    assert len(server.log) == 1


@pytest.mark.parametrize("sha256", ["abc", "0" * 63, "g" * 64, "0" * 65, ""])
def test_malformed_sha256_is_refused_before_downloading(server: _Server, tmp_path: Path, sha256: str) -> None:
    """Issue 33 item 2: the form is checked first, not after the whole archive arrived."""
    server.files["/a.bin"] = PAYLOAD
    with pytest.raises(ValueError) as err:
        download(_url(server, "/a.bin"), tmp_path / "a.bin", sha256, progress=False)
    assert str(err.value) == (f"sha256 {sha256!r} is not a sha256 (64 hex digits); pass the archive's full sha256 "
                              "(sha256sum prints it)")
    assert server.log == [] and list(tmp_path.iterdir()) == []


def test_cli_download_refuses_a_malformed_sha256_before_downloading(server: _Server, tmp_path: Path, capsys) -> None:
    from skrd4ad.cli import main

    server.files["/VAD.zip"] = PAYLOAD
    assert main(["download", "--dataset", "vad", "--root", str(tmp_path / "raw"), "--url", _url(server, "/VAD.zip"),
                 "--sha256", "abc"]) == 1
    assert ("--sha256 'abc' is not a sha256 (64 hex digits); pass the archive's full sha256 (sha256sum prints it)"
            in capsys.readouterr().err)
    assert server.log == [] and not (tmp_path / "raw").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_host_promises_a_resume_only_with_a_part_file(tmp_path: Path) -> None:
    """Issue 33 item 4: "re-run to resume from X.part" only when there is such a file."""
    url, dest = f"http://127.0.0.1:{_closed_port()}/VAD.zip", tmp_path / "VAD.zip"
    with pytest.raises(DownloadError) as err:
        download(url, dest, "0" * 64, progress=False, retries=0)
    assert str(err.value).startswith(f"GET {url} failed: ") and "resume" not in str(err.value)
    assert str(err.value).endswith("; check the URL and the network, then re-run")
    (tmp_path / "VAD.zip.part").write_bytes(b"half")
    with pytest.raises(DownloadError) as err:
        download(url, dest, "0" * 64, progress=False, retries=0)
    assert str(err.value).endswith(f"; re-run to resume from {tmp_path / 'VAD.zip.part'}")


def test_checksum_errors_name_the_setting_to_change(server: _Server, tmp_path: Path) -> None:
    """Issue 33 item 1: a mismatch (a mirror's other archive) says which key takes its sha256."""
    server.files["/a.bin"] = PAYLOAD
    wrong, actual = "0" * 64, _sha(PAYLOAD)
    with pytest.raises(ChecksumError) as err:
        download(_url(server, "/a.bin"), tmp_path / "a.bin", wrong, progress=False, sha256_key="data.mirror.sha256")
    assert str(err.value).endswith(f"if it is the archive you want, set data.mirror.sha256 to {actual}")
    (tmp_path / "a.bin.corrupt").rename(tmp_path / "a.bin")  # an archive already there, of another sha256
    with pytest.raises(ChecksumError) as err:
        download(_url(server, "/a.bin"), tmp_path / "a.bin", wrong, progress=False, sha256_key="data.mirror.sha256")
    assert str(err.value) == (f"{tmp_path / 'a.bin'} exists but its sha256 is {actual}, expected {wrong}; delete "
                              f"it to download again, or set data.mirror.sha256 to {actual} if it is the archive "
                              "you want")


# ---------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz"])
def test_safe_extract_tar_formats(tmp_path: Path, mode: str) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes({"top/x.txt": b"x", "top/sub/y.txt": b"yy"}, mode))
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "top/x.txt").read_bytes() == b"x" and (out / "top/sub/y.txt").read_bytes() == b"yy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "out"]  # no temp folder left


def test_safe_extract_zip_and_internal_symlink(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"d/x.txt": b"x"}))
    assert (safe_extract(archive, tmp_path / "z") / "d/x.txt").read_bytes() == b"x"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = tarfile.TarInfo("d/x.txt")
        data.size = 1
        tar.addfile(data, io.BytesIO(b"x"))
        link = tarfile.TarInfo("d/link")
        link.type, link.linkname = tarfile.SYMTYPE, "x.txt"
        tar.addfile(link)
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    out = safe_extract(tmp_path / "l.tar", tmp_path / "l")
    assert (out / "d/link").is_symlink() and (out / "d/link").read_bytes() == b"x"


def _special_tar(*infos: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(_file_info("ok.txt", 2), io.BytesIO(b"ok"))  # a harmless member first
        for info in infos:
            tar.addfile(info, io.BytesIO(b"E" * info.size) if info.isfile() else None)
    return buf.getvalue()


def _file_info(name: str, size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _link_info(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device_info() -> tarfile.TarInfo:
    info = tarfile.TarInfo("dev/null0")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


MALICIOUS = {
    "dotdot": lambda: _special_tar(_file_info("../evil")),
    "nested_dotdot": lambda: _special_tar(_file_info("a/../../evil")),
    "absolute": lambda: _special_tar(_file_info("/tmp/skrd4ad-test-evil-absolute")),
    "symlink_etc": lambda: _special_tar(_link_info("etc", "/etc")),
    "symlink_up": lambda: _special_tar(_link_info("up", "../..")),
    "write_through_link": lambda: _special_tar(_link_info("inside", "."), _file_info("inside/evil")),
    "hardlink_out": lambda: _special_tar(_link_info("h", "../evil", tarfile.LNKTYPE)),
    "device": lambda: _special_tar(_device_info()),
    "zip_dotdot": lambda: zip_bytes({"ok.txt": b"ok", "../evil": b"E"}),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_members_are_refused(tmp_path: Path, case: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "bad.archive"
    archive.write_bytes(MALICIOUS[case]())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError, match="refus") as err:
        safe_extract(archive, work / "out")
    assert ".extract" not in str(err.value)  # issue 33 item 5: never the (deleted) staging folder
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # nothing written: no out dir, no temp dir, no evil file anywhere
    assert not Path("/tmp/skrd4ad-test-evil-absolute").exists()


def test_interrupted_extraction_leaves_nothing(tmp_path: Path) -> None:
    data = tar_bytes({f"f{i}.bin": np.random.default_rng(i).bytes(50_000) for i in range(4)}, "w:gz")
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BrokenArchiveError, match=r"cut.tar.gz is truncated or damaged \(EOFError: .*\); check"):
        safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tar.gz"]


def test_extract_refuses_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(tar_bytes({"x": b"1"}))
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out"):
        safe_extract(tmp_path / "a.tar", tmp_path / "out")


# ---------------------------------------------------------------------------------- fetch_dataset


def test_fetch_mvtec_is_idempotent(server: _Server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_mvtec_class(src, "bottle")
    make_mvtec_class(src, "screw", seed=1)
    archive = tar_of_folder(src, "w:xz")
    server.files["/mvtec.tar.xz"] = archive
    root = tmp_path / "data"
    out = fetch_dataset("mvtec", root, url=_url(server, "/mvtec.tar.xz"), sha256=_sha(archive), progress=False)
    assert out == root / "mvtec" and (out / FETCH_MARKER).is_file()
    assert list_classes(out) == ["bottle", "screw"]
    assert (out / "bottle/test/crack/000.png").read_bytes() == (src / "bottle/test/crack/000.png").read_bytes()
    assert len(scan_class(out, "bottle")) == 3 + 2 + 2
    assert sorted(p.name for p in root.iterdir()) == ["downloads", "mvtec"]  # staging removed
    fetch_dataset("mvtec", root, url=_url(server, "/mvtec.tar.xz"), sha256=_sha(archive), progress=False)
    assert len(server.log) == 1


def test_fetch_with_wrong_checksum_extracts_nothing(server: _Server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_mvtec_class(src, "bottle")
    server.files["/m.tar"] = tar_of_folder(src)
    with pytest.raises(ChecksumError):
        fetch_dataset("mvtec", tmp_path / "data", url=_url(server, "/m.tar"), sha256="1" * 64, progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]


def _fake_visa(tmp_path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """A VisA-structured tar: <obj>/Data/Images/{Normal,Anomaly}/*.JPG, <obj>/Data/Masks/Anomaly/*.png, split_csv/1cls.csv."""
    rng = np.random.default_rng(3)
    members: dict[str, bytes] = {}
    masks: dict[str, np.ndarray] = {}
    lines = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(4):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            members[rel] = png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG")
            lines.append(f"{obj},{'train' if i < 3 else 'test'},normal,{rel},")
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            members[rel] = png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG")
            mask = np.zeros((16, 16), dtype=np.uint8)
            mask[3:7, 2 + i:9] = 1 + i  # VisA masks hold small non-zero ids
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            members[mrel] = png_bytes(mask)
            masks[f"{obj}/{i:03d}"] = mask
            lines.append(f"{obj},test,anomaly,{rel},{mrel}")
    members["split_csv/1cls.csv"] = ("\n".join(lines) + "\n").encode()
    members["LICENSE-DATASET"] = b"CC BY 4.0"
    return tar_bytes(members, "w"), masks


def test_fetch_visa_converts_to_mvtec_layout(server: _Server, tmp_path: Path) -> None:
    archive, masks = _fake_visa(tmp_path)
    server.files["/visa.tar"] = archive
    out = fetch_dataset("visa", tmp_path / "data", url=_url(server, "/visa.tar"), sha256=_sha(archive), progress=False)
    assert list_classes(out) == ["candle", "pcb1"]
    samples = scan_class(out, "pcb1")
    assert [(s.split, s.defect_type) for s in samples] == [("train", "good")] * 3 + [("test", "bad")] * 2 + [("test", "good")]
    for i in range(2):
        written = np.asarray(Image.open(out / f"pcb1/ground_truth/bad/{i:03d}_mask.png"))
        np.testing.assert_array_equal(written, (masks[f"pcb1/{i:03d}"] != 0) * 255)
    assert samples[3].mask_path == out / "pcb1/ground_truth/bad/000_mask.png"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads", "visa"]


def test_visa_anomaly_in_train_split_is_rejected(server: _Server, tmp_path: Path) -> None:
    members = {
        "c/Data/Images/Anomaly/000.JPG": png_bytes(np.zeros((8, 8, 3), np.uint8), "JPEG"),
        "split_csv/1cls.csv": b"object,split,label,image,mask\nc,train,anomaly,c/Data/Images/Anomaly/000.JPG,x.png\n",
    }
    archive = tar_bytes(members)
    server.files["/v.tar"] = archive
    with pytest.raises(DatasetError, match="line 2.*train split"):
        fetch_dataset("visa", tmp_path / "d", url=_url(server, "/v.tar"), sha256=_sha(archive), progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["downloads"]


# ---------------------------------------------------------------------------------- folder import


def _two_folders(tmp_path: Path, *, masks: bool) -> Path:
    src = tmp_path / "two"
    rng = np.random.default_rng(0)
    for i in range(10):
        save_png(src / "normal" / f"n{i}.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    for i in range(3):
        save_png(src / "anomalous" / f"a{i}.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        if masks:
            mask = np.zeros((12, 12), np.uint8)
            mask[2:5, 2:5] = 200
            mask[6, 6] = 90  # below half the max: background
            save_png(src / "masks" / f"a{i}_mask.png", mask)
    return src


def test_import_two_folders_with_masks(tmp_path: Path) -> None:
    src = _two_folders(tmp_path, masks=True)
    dest = import_two_folders(src, tmp_path / "ds", "parts", mask_dir="masks", test_fraction=0.3, seed=5)
    samples = scan_class(tmp_path / "ds", "parts")
    train = [s.path.name for s in samples if s.split == "train"]
    test_good = [s.path.name for s in samples if s.split == "test" and s.label == 0]
    assert len(train) == 7 and len(test_good) == 3 and not set(train) & set(test_good)
    assert [s.defect_type for s in samples if s.label == 1] == ["bad"] * 3
    mask = np.asarray(Image.open(dest / "ground_truth/bad/a0_mask.png"))
    expected = np.zeros((12, 12), np.uint8)
    expected[2:5, 2:5] = 255
    np.testing.assert_array_equal(mask, expected)
    again = import_two_folders(src, tmp_path / "ds2", "parts", mask_dir="masks", test_fraction=0.3, seed=5)
    assert sorted(p.name for p in (again / "test/good").iterdir()) == sorted(test_good)


def test_import_two_folders_image_level_only(tmp_path: Path) -> None:
    src = _two_folders(tmp_path, masks=False)
    dest = import_two_folders(src, tmp_path / "ds", "parts", test_fraction=0.0)
    assert not (dest / "ground_truth").exists()
    samples = scan_class(tmp_path / "ds", "parts")  # auto: image-level only
    assert sum(s.split == "train" for s in samples) == 10
    assert all(s.mask_path is None for s in samples)


def test_import_two_folders_missing_mask(tmp_path: Path) -> None:
    src = _two_folders(tmp_path, masks=True)
    (src / "masks" / "a1_mask.png").unlink()
    with pytest.raises(DatasetError, match="a1.png has no mask"):
        import_two_folders(src, tmp_path / "ds", "parts", mask_dir="masks")
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())


@pytest.mark.parametrize("rule", ["nonzero", "half_max"])
def test_converted_masks_ignore_the_alpha_channel(tmp_path: Path, rule: str) -> None:
    """An opaque RGBA mask with one white pixel stays one pixel (alpha is not a colour)."""
    from skrd4ad.data.sources.base import binarise_mask_file as _binarise_mask_file

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[1, 2, :3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "m.png")
    _binarise_mask_file(tmp_path / "m.png", tmp_path / "out" / "m.png", rule=rule)
    out = np.asarray(Image.open(tmp_path / "out" / "m.png"))
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1, 2] = 255
    np.testing.assert_array_equal(out, expected)
