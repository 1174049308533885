"""Dataset sources: the registry is the one list of dataset names; the VAD source fetched from a
local server (resume, wrong sha256, a Drive-style confirmation page, its converter) and prepared
with train/bad kept as labelled anomalies that are never trained on."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from code_scan import code_files, string_tokens
from data_fixtures import png_bytes, zip_bytes
from pipeline_fixtures import ENV, REPO
from test_download import _sha, _url, server  # noqa: F401  (the local HTTP server fixture)

from skrd4ad.data import sources
from skrd4ad.data.download import ChecksumError, DownloadError, confirmation_target
from skrd4ad.data.layout import DatasetError
from skrd4ad.data.sources import FETCH_MARKER, fetch_dataset

GOOD_RGB, BAD_RGB = (40, 200, 40), (220, 30, 30)
#: A small VAD-shaped archive: folder -> number of images (good ones green, anomalous ones red).
VAD_FOLDERS = {"train/good": 3, "train/bad": 2, "test/good": 2, "test/bad": 2, "test/bad_unseen_defects": 1}


def vad_zip(folders: dict[str, int] = VAD_FOLDERS, top: str = "VAD/", extra: dict[str, bytes] | None = None) -> bytes:
    members = {}
    for folder, n in folders.items():
        colour = GOOD_RGB if folder.endswith("good") else BAD_RGB
        for i in range(n):
            members[f"{top}{folder}/{i:03d}.png"] = png_bytes(np.full((40, 48, 3), colour, dtype=np.uint8))
    members["__MACOSX/._junk"] = b"x"  # macOS zips carry this beside the top folder
    members.update(extra or {})
    return zip_bytes(members)


# ------------------------------------------------------------------------------------- registry


def test_registry_is_light_and_feeds_schema_cli_and_pipeline() -> None:
    code = ("import sys; from skrd4ad.data import sources as s; print(s.names()); "
            "print('numpy' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(sources.names()), "False False"]
    assert sources.names()[0] == "synthetic" and {"mvtec", "visa", "vad", "folder"} <= set(sources.names())
    from skrd4ad.cli import build_parser
    from skrd4ad.params import full_schema

    SCHEMA = full_schema()  # noqa: N806
    assert SCHEMA["properties"]["data"]["properties"]["dataset"]["enum"] == list(sources.names())
    download = build_parser()._subparsers._group_actions[0].choices["download"]
    choices = next(a.choices for a in download._actions if a.dest == "dataset")
    assert tuple(choices) == sources.downloadable() and "vad" in choices and "folder" not in choices
    assert {n: sources.get(n).extra_train_folders for n in sources.names()
            if sources.get(n).extra_train_folders} == {"vad": ("bad",)}
    with pytest.raises(DatasetError, match="unknown dataset source 'nope'; choose one of synthetic"):
        sources.get("nope")


#: Where the same word as a source's name is something else: a params key (``data.folder``,
#: ``data.synthetic``), a module or CLI command of the synthetic generator, the registry's order.
#: A new place that spells a source name fails the test below.
NAME_IS_SOMETHING_ELSE = {
    ("skrd4ad/cli.py", "synthetic"),  # the `skrd4ad synthetic` generator command and data.synthetic's schema
    ("skrd4ad/data/__init__.py", "synthetic"),  # lazy imports from the module skrd4ad/data/sources/synthetic/generate.py
    ("skrd4ad/data/sources/__init__.py", "synthetic"),  # the registry lists the embedded default first
    ("skrd4ad/params.py", "folder"),  # the key data.folder
    ("workflow/rules/common.smk", "synthetic"),  # the key data.synthetic
    ("workflow/rules/common.smk", "folder"),  # the key data.folder
}


def test_no_dataset_name_outside_its_own_module() -> None:
    """The registry is the one list: no code but a source's own module spells a source's name as a
    string ("mvtec", 'vad', ...; docstrings that mention one are fine), except where the same word
    is a params key or a module (NAME_IS_SOMETHING_ELSE)."""
    files = code_files()
    found = []
    for name in sources.names():
        own = REPO / "skrd4ad/data/sources" / name  # the source's package
        quoted = {f'"{name}"', f"'{name}'"}
        for path in files:
            rel = str(path.relative_to(REPO))
            if not path.is_relative_to(own) and (rel, name) not in NAME_IS_SOMETHING_ELSE:
                found += [f"{rel}:{line} {s}" for line, s in string_tokens(path) if s in quoted]
    assert not found, f"dataset names spelled outside their source module: {found}"


def test_presets_list_their_sources_classes_and_validate() -> None:
    from skrd4ad.errors import ParamsError
    from skrd4ad.params import merge_params, validate_params

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    paper = yaml.safe_load((REPO / "workflow/config/paper.yaml").read_text())
    seen = set()
    for preset in sorted((REPO / "workflow/config").glob("*.yaml")):
        overlay = yaml.safe_load(preset.read_text())
        kind = (overlay.get("data") or {}).get("dataset")
        if kind is None or not sources.get(kind).downloadable:
            continue
        seen.add(kind)
        assert tuple(overlay["data"]["classes"]) == sources.get(kind).classes, preset
        params = validate_params(merge_params(merge_params(base, paper), overlay))
        assert params["model"]["variants"] == ["rd4ad", "skrd4ad"] and params["data"]["name"] == kind
    assert seen == set(sources.downloadable())  # every downloaded source has its preset


def test_readme_table_is_the_registrys() -> None:
    readme = (REPO / "README.md").read_text()
    assert sources.markdown_table() in readme
    proc = subprocess.run([sys.executable, "-m", "skrd4ad", "sources"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == sources.markdown_table()


def test_pipeline_rejects_classes_the_source_does_not_have() -> None:
    from skrd4ad.errors import ParamsError
    from skrd4ad.params import merge_params, validate_params

    params = {"data": {"dataset": "vad", "classes": ["bottle"]}, "train": {}}
    with pytest.raises(ParamsError, match=r"data.classes: 'bottle' is not a class of vad \(vad\)"):
        validate_params(params)


# ------------------------------------------------------------------------------------------ VAD


def test_confirmation_target_form_and_link() -> None:
    page = ('<html><form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
            '<input type="submit" value="Download anyway"/><input type="hidden" name="id" value="F1">'
            '<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="u-1"></form></html>')
    assert confirmation_target(page, "https://drive.google.com/uc?export=download&id=F1") == (
        "https://drive.usercontent.google.com/download?id=F1&export=download&confirm=t&uuid=u-1")
    old = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=AbC&amp;id=F1">Download anyway</a>'
    assert confirmation_target(old, "https://drive.google.com/uc?export=download&id=F1") == (
        "https://drive.google.com/uc?export=download&confirm=AbC&id=F1")
    assert confirmation_target("<html><p>Quota exceeded</p></html>", "https://x/") is None


@pytest.mark.parametrize("page, target", [
    ('<a href="file:///etc/passwd?confirm=t">Download anyway</a>', "file:///etc/passwd?confirm=t"),
    ('<form action="ftp://h/VAD.zip"><input type="hidden" name="confirm" value="t"></form>',
     "ftp://h/VAD.zip?confirm=t"),
    ('<form action="javascript:go()"><input type="hidden" name="confirm" value="t"></form>',
     "javascript:go()?confirm=t"),
])
def test_confirmation_page_may_lead_only_to_http_or_https(page: str, target: str) -> None:
    import doctest

    from skrd4ad.data import download

    with pytest.raises(DownloadError) as err:
        confirmation_target(page, "https://drive.google.com/uc?id=F1")
    assert str(err.value).startswith(f"the confirmation page of https://drive.google.com/uc?id=F1 leads to {target}, "
                                     "not an http or https URL")
    assert "\n" not in str(err.value) and type(err.value).__name__ == "_PermanentError"  # one line; not retried
    assert confirmation_target('<a href="HTTP://h/f?confirm=t">x</a>', "https://h/") == "HTTP://h/f?confirm=t"
    assert doctest.testmod(download).failed == 0


def test_a_confirmation_page_to_a_local_file_is_not_followed(server, tmp_path: Path) -> None:  # noqa: F811
    secret = tmp_path / "secret.zip"
    secret.write_bytes(vad_zip())
    server.files["/uc"] = f'<html><a href="{secret.as_uri()}?confirm=t">Download anyway</a></html>'.encode()
    server.types["/uc"] = "text/html"
    with pytest.raises(DownloadError, match=f"leads to {re.escape(secret.as_uri())}.*not an http or https URL"):
        fetch_dataset("vad", tmp_path / "d", url=_url(server, "/uc"), sha256=_sha(secret.read_bytes()),
                      progress=False)
    assert server.log == [("/uc", None)]  # asked once: not retried
    assert not (tmp_path / "d" / "vad").exists()


def test_vad_fetch_resumes_converts_and_logs_licence_once(server, tmp_path: Path, caplog) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="skrd4ad")
    archive = vad_zip()
    server.files["/VAD.zip"] = archive
    server.drop_once.add("/VAD.zip")
    out = fetch_dataset("vad", tmp_path / "data", url=_url(server, "/VAD.zip"), sha256=_sha(archive), progress=False)
    assert out == tmp_path / "data" / "vad" and (out / FETCH_MARKER).is_file()
    half = len(archive) // 2
    assert server.log == [("/VAD.zip", None), ("/VAD.zip", f"bytes={half}-")]  # resumed after the drop
    for folder, n in VAD_FOLDERS.items():
        assert len(list((out / "vad" / folder).glob("*.png"))) == n, folder
    assert not (out / "vad" / "ground_truth").exists()
    err = caplog.text
    assert err.count("licence CC BY-NC-SA 4.0") == 1
    assert ("VAD archive (VAD): train/bad 2, train/good 3, test/bad 2, test/bad_unseen_defects 1, test/good 2"
            in err)
    caplog.clear()
    fetch_dataset("vad", tmp_path / "data", url=_url(server, "/VAD.zip"), sha256=_sha(archive), progress=False)
    assert "licence" not in caplog.text and len(server.log) == 2  # no-op: nothing fetched


def test_vad_wrong_sha256_is_refused(server, tmp_path: Path) -> None:  # noqa: F811
    server.files["/VAD.zip"] = vad_zip()
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        fetch_dataset("vad", tmp_path / "d", url=_url(server, "/VAD.zip"), sha256="0" * 64, progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["downloads"]
    assert (tmp_path / "d" / "downloads" / "VAD.zip.corrupt").is_file()


def test_vad_from_drive_confirmation_page_after_a_dead_mirror(server, tmp_path: Path) -> None:  # noqa: F811
    """The first location is down (404); the second answers with Drive's HTML page, whose form
    leads to the file; the confirmed link is resumed with Range after a drop."""
    archive = vad_zip()
    page = ('<!DOCTYPE html><html><body><p>Google Drive can\'t scan this file for viruses.</p>'
            '<form id="download-form" action="/download" method="get">'
            '<input type="hidden" name="id" value="F1"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1"></form>'
            '</body></html>').encode()
    server.files["/uc?export=download&id=F1"] = page
    server.types["/uc?export=download&id=F1"] = "text/html; charset=utf-8"
    target = "/download?id=F1&export=download&confirm=t&uuid=u-1"
    server.files[target] = archive
    server.drop_once.add(target)
    out = fetch_dataset("vad", tmp_path / "d", urls=[_url(server, "/mirror-gone.zip"),
                                                     _url(server, "/uc?export=download&id=F1")],
                        sha256=_sha(archive), progress=False)
    assert [p for p, _ in server.log] == ["/mirror-gone.zip", "/uc?export=download&id=F1", target, target]
    assert server.log[-1][1] == f"bytes={len(archive) // 2}-"
    assert len(list((out / "vad" / "train" / "bad").glob("*.png"))) == 2
    assert (tmp_path / "d" / "downloads" / "VAD.zip").read_bytes() == archive


def test_html_page_without_a_form_is_one_clear_error(server, tmp_path: Path) -> None:  # noqa: F811
    server.files["/q"] = b"<html><body>Too many users have viewed or downloaded this file recently</body></html>"
    server.types["/q"] = "text/html"
    with pytest.raises(DownloadError, match="answered with an HTML page, not the file"):
        fetch_dataset("vad", tmp_path / "d", url=_url(server, "/q"), sha256="0" * 64, progress=False)


@pytest.mark.parametrize("folders, extra, message", [
    ({**VAD_FOLDERS, "train/weird": 1}, {}, "unexpected {zip}:VAD/train/weird (VAD's layout: train/good, train/bad, "
     "test/good, test/bad, test/bad_unseen_defects and low_shot_train.json, in one top folder); not converting a "
     "layout this code does not know (is the archive the VAD release?)"),
    ({k: v for k, v in VAD_FOLDERS.items() if k != "test/bad"}, {}, "{zip}:VAD/test/bad is missing or empty (VAD's "
     "layout: train/good, train/bad, test/good, test/bad, test/bad_unseen_defects and low_shot_train.json, in one top "
     "folder); is the archive the VAD release?"),
    # issue 33 item 6: extra entries are refused, not dropped
    ({**VAD_FOLDERS, "val/good": 1}, {}, "unexpected {zip}:VAD/val (VAD's layout"),
    (VAD_FOLDERS, {"VAD/README.txt": b"read me"}, "unexpected {zip}:VAD/README.txt (VAD's layout"),
    (VAD_FOLDERS, {"README.txt": b"read me"}, "unexpected {zip}:README.txt (VAD's layout"),
    (VAD_FOLDERS, {"extra/x.png": b"x"}, "{zip} holds 2 folders (VAD, extra) and no train/ and test/ (VAD's layout: "
     "train/good, train/bad, test/good, test/bad, test/bad_unseen_defects and low_shot_train.json, in one top "
     "folder); not converting a layout this code does not know"),
])
def test_vad_unknown_layout_is_refused(server, tmp_path: Path, folders, extra, message) -> None:  # noqa: F811
    """Issue 33 items 5 and 6: an entry VAD's layout does not have is refused, and the message
    names the archive and its member, not the (deleted) staging folder."""
    archive = vad_zip(folders, extra=extra)
    server.files["/VAD.zip"] = archive
    with pytest.raises(DatasetError) as err:
        fetch_dataset("vad", tmp_path / "d", url=_url(server, "/VAD.zip"), sha256=_sha(archive), progress=False)
    assert str(err.value).startswith(message.format(zip=tmp_path / "d" / "downloads" / "VAD.zip")), str(err.value)
    assert ".fetch" not in str(err.value) and "extracted" not in str(err.value)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["downloads"]  # nothing half-converted


def test_vad_low_shot_split_file_is_known_and_left_out(server, tmp_path: Path, caplog) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="skrd4ad")
    archive = vad_zip(top="vad/", extra={"vad/low_shot_train.json": b"{}"})
    server.files["/VAD.zip"] = archive
    out = fetch_dataset("vad", tmp_path / "d", url=_url(server, "/VAD.zip"), sha256=_sha(archive), progress=False)
    assert sorted(p.name for p in (out / "vad").iterdir()) == ["test", "train"]
    assert "VAD archive: low_shot_train.json left out (not used)" in caplog.text


def test_vad_cli_download_and_prepare_keep_train_bad_out_of_training(server, tmp_path: Path) -> None:  # noqa: F811
    from skrd4ad.cli import main
    from skrd4ad.data.prepared import PreparedClass

    archive = vad_zip(top="")
    server.files["/VAD.zip"] = archive
    assert main(["download", "--dataset", "vad", "--root", str(tmp_path / "raw"), "--url",
                 _url(server, "/VAD.zip"), "--sha256", _sha(archive)]) == 0
    assert main(["prepare", "--root", str(tmp_path / "raw" / "vad"), "--classes", "vad", "--out",
                 str(tmp_path / "prep"), "--image-size", "32"]) == 0
    prepared = PreparedClass(tmp_path / "prep")
    assert prepared.image_level_only and prepared.test_masks is None
    normal = np.concatenate([prepared.train_images, prepared.val_images])  # train/good, split into train and val
    assert normal.shape == (3, 32, 32, 3) and len(prepared.val_images) == 1  # default val_fraction: at least 1
    assert (np.abs(normal.reshape(-1, 3).astype(int) - GOOD_RGB).max() <= 1)  # good ones only
    assert prepared.labelled_anomalies is not None and prepared.labelled_anomalies.shape == (2, 32, 32, 3)
    assert (np.abs(prepared.labelled_anomalies.reshape(-1, 3).astype(int) - BAD_RGB).max() <= 1)
    assert prepared.test_labels.tolist() == [1, 1, 1, 0, 0]
    assert prepared.meta["n_labelled_anomalies"] == 2 and prepared.meta["counts"]["labelled_anomalies"] == {"bad": 2}
    rows = prepared.manifest[prepared.manifest["split"] == "labelled_anomalies"]
    assert rows["file"].tolist() == ["vad/train/bad/000.png", "vad/train/bad/001.png"]
    assert set(rows["label"]) == {1}


def test_classes_without_labelled_anomalies_have_none(prepared_brick: Path) -> None:
    from skrd4ad.data.prepared import PreparedClass

    prepared = PreparedClass(prepared_brick)
    assert prepared.labelled_anomalies is None and "n_labelled_anomalies" not in prepared.meta
    assert not (prepared_brick / "labelled_anomalies.npy").exists()


def _class_with_train_bad(root: Path) -> Path:
    for folder, n in {"train/good": 2, "train/bad": 1, "test/good": 1, "test/bad": 1}.items():
        for i in range(n):
            (root / "c" / folder).mkdir(parents=True, exist_ok=True)
            (root / "c" / folder / f"{i}.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    return root


def test_training_reads_only_train_good(tmp_path: Path) -> None:
    """train/bad is an extra set of the VAD source, so in a folder that source fetched (its marker)
    the registry names it and the layout accepts it, as labelled anomalies only; any other train
    folder is still refused, naming the accepted ones."""
    from skrd4ad.data.layout import scan_class

    root = _class_with_train_bad(tmp_path)
    (root / FETCH_MARKER).write_text('{"name": "vad"}')
    want = [("train", 0, "good"), ("train", 0, "good"), ("train", 1, "bad"), ("test", 1, "bad"), ("test", 0, "good")]
    assert sources.extra_train_folders(root) == ("bad",)
    assert [(s.split, s.label, s.defect_type) for s in scan_class(root, "c", extra_train=("bad",))] == want
    with pytest.raises(DatasetError, match="one-class training reads only"):
        scan_class(root, "c")  # the layout alone knows no source: train/good only
    (root / FETCH_MARKER).unlink()  # no marker: the caller names the source's folders
    assert [(s.split, s.label, s.defect_type) for s in scan_class(root, "c", extra_train=("bad",))] == want
    (root / "c" / "train" / "other").mkdir()
    with pytest.raises(DatasetError, match=re.escape("one-class training reads only") + ".*train/bad"):
        scan_class(root, "c", extra_train=sources.get("vad").extra_train_folders)


@pytest.mark.parametrize("marker", [None, '{"name": "mvtec"}', '{"name": "gone"}', "not json"])
def test_a_source_without_extra_sets_refuses_another_sources_folder(tmp_path: Path, marker: str | None) -> None:
    """A folder not fetched as VAD (a user's folder, MVTec, an unregistered source, a damaged
    marker) that holds a train/bad folder: refused as any other train folder, saying where
    train/bad is a set of labelled anomalies, and nothing of it reaches prepare."""
    from skrd4ad.data.layout import scan_class
    from skrd4ad.data.prepare import prepare_class

    root = _class_with_train_bad(tmp_path / "raw")
    if marker is not None:
        (root / FETCH_MARKER).write_text(marker)
    assert sources.extra_train_folders(root) == ()
    c = root / "c"
    message = (f"unexpected {c / 'train' / 'bad'}: one-class training reads only {c / 'train' / 'good'}; "
               f"move anomalous images to {c / 'test'}/<defect>/ and remove anything else (train/bad holds "
               "labelled anomalies only in a dataset fetched by `skrd4ad download --dataset vad`)")
    owners = sources.extra_train_owners
    for call in (lambda: scan_class(root, "c", owners=owners), lambda: scan_class(root, "c", extra_train=(), owners=owners),
                 lambda: prepare_class(root, "c", tmp_path / "prep", image_size=8, progress=False)):
        with pytest.raises(DatasetError) as err:
            call()
        assert str(err.value) == message
    assert not (tmp_path / "prep").exists()


def test_every_location_failing_lists_each(server, tmp_path: Path) -> None:  # noqa: F811
    archive = vad_zip()
    server.files["/b.zip"] = archive
    with pytest.raises(ChecksumError, match=r"every location failed: GET .*/a.zip failed with HTTP 404.* \| "
                                            r"sha256 mismatch for .*/b.zip"):
        fetch_dataset("vad", tmp_path / "d", urls=[_url(server, "/a.zip"), _url(server, "/b.zip")],
                      sha256="0" * 64, progress=False)


def test_tiny_vad_run_reports_overall_and_per_subset_image_auroc(server, tmp_path: Path) -> None:  # noqa: F811
    """Download, prepare, train (1 epoch) and evaluate a VAD-shaped archive: image AUROC overall
    and per test subset (seen defects ``bad``, ``bad_unseen_defects``), no pixel metrics."""
    import json

    from skrd4ad.cli import main

    archive = vad_zip()
    server.files["/VAD.zip"] = archive
    assert main(["download", "--dataset", "vad", "--root", str(tmp_path / "raw"), "--url",
                 _url(server, "/VAD.zip"), "--sha256", _sha(archive)]) == 0
    assert main(["prepare", "--root", str(tmp_path / "raw" / "vad"), "--classes", "vad", "--out",
                 str(tmp_path / "prep"), "--image-size", "64"]) == 0
    assert main(["train", "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "m.pt"), "--arch", "mobilenet_v2",
                 "--variant", "skrd4ad", "--teacher-weights", "none", "--epochs", "1", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path / "prep"), "--out",
                 str(tmp_path / "eval"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("image_auroc", "image_auroc_bad", "image_auroc_bad_unseen_defects"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert not any(k.startswith("pixel_") for k in metrics)


# ------------------------------------------------------------------ issue 33: fetch faults, said well


@pytest.mark.parametrize("kind", ["zip", "tar.xz"])
def test_a_broken_archive_whose_sha256_matches_is_moved_aside(server, tmp_path: Path, kind: str) -> None:  # noqa: F811
    """Item 3: a broken mirror (its sha256 taken of the broken file): the archive is moved aside as
    ``.corrupt`` with a message saying so, and the next run downloads again (here: a fixed copy)."""
    from data_fixtures import make_mvtec_class, tar_of_folder

    from skrd4ad.data.download import BrokenArchiveError

    if kind == "zip":
        name, full = "vad", vad_zip()
        cut = full[: len(full) // 2]
        reason = "is neither a tar nor a zip archive (or is truncated)"
    else:
        make_mvtec_class(tmp_path / "src", "bottle", n_train=6, size=(64, 64))
        name, full = "mvtec", tar_of_folder(tmp_path / "src", "w:xz")
        cut = full[: len(full) * 2 // 3]
        reason = "is truncated or damaged (EOFError: "
    root = tmp_path / "d"
    archive = root / "downloads" / sources.get(name).archive_name
    server.files["/a"] = cut
    with pytest.raises(BrokenArchiveError) as err:
        fetch_dataset(name, root, url=_url(server, "/a"), sha256=_sha(cut), progress=False)
    message = str(err.value)
    assert message.startswith(f"{archive} {reason}"), message
    assert message.endswith(f", although its sha256 matches; moved it aside as {archive}.corrupt: the copy "
                            "it came from is broken and its sha256 was taken of the broken file; fix that copy and "
                            "--sha256, or use another location, then re-run"), message
    assert not archive.exists() and Path(f"{archive}.corrupt").read_bytes() == cut
    assert sorted(p.name for p in root.iterdir()) == ["downloads"]
    server.files["/a"] = full  # the mirror is fixed: the next run downloads it
    out = fetch_dataset(name, root, url=_url(server, "/a"), sha256=_sha(full), progress=False)
    assert (out / FETCH_MARKER).is_file() and archive.read_bytes() == full


def test_visa_errors_name_the_archive_member(server, tmp_path: Path) -> None:  # noqa: F811
    """Item 5: a converter's message names ``<archive>:<member>``, not the deleted staging folder."""
    members = {"c/Data/Images/Normal/000.JPG": png_bytes(np.zeros((8, 8, 3), np.uint8), "JPEG"),
               "split_csv/1cls.csv": b"object,split,label,image,mask\nc,train,normal,c/Data/Images/Normal/001.JPG,\n"}
    from data_fixtures import tar_bytes

    archive = tar_bytes(members)
    server.files["/v.tar"] = archive
    with pytest.raises(DatasetError) as err:
        fetch_dataset("visa", tmp_path / "d", url=_url(server, "/v.tar"), sha256=_sha(archive), progress=False)
    tar = tmp_path / "d" / "downloads" / "VisA_20220922.tar"
    assert str(err.value) == (f"{tar}:split_csv/1cls.csv line 2: image {tar}:c/Data/Images/Normal/001.JPG does not "
                              "exist; is the extraction complete?")


def test_a_full_disk_while_extracting_names_the_dataset_folder(tmp_path: Path, monkeypatch) -> None:
    """Item 5: the free-space check of the extraction names the dataset folder being made."""
    import collections
    import shutil

    from data_fixtures import make_mvtec_class, tar_of_folder

    from skrd4ad.io import DiskFullError

    make_mvtec_class(tmp_path / "src", "bottle")
    archive = tar_of_folder(tmp_path / "src")
    root = tmp_path / "d"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / sources.get("mvtec").archive_name).write_bytes(archive)  # verified, not downloaded
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    with pytest.raises(DiskFullError) as err:
        fetch_dataset("mvtec", root, url="http://127.0.0.1:9/unused", sha256=_sha(archive), progress=False)
    assert str(err.value).startswith(f"no space left on device while writing {root / 'mvtec'}; "), str(err.value)
    assert err.value.filename == str(root / "mvtec") and ".fetch" not in str(err.value)


class _Plugin(sources.Source):
    """A plug-in source that declares one class; its archive decides what converting it makes."""

    name, label, archive_name = "plug", "Plug", "plug.tar"
    locations = (sources.Location("http://127.0.0.1:9/unused"),)
    classes = ("bottle",)


class _MakesNothing(_Plugin):
    def convert(self, extracted: Path, work: Path) -> Path:
        return work  # an empty folder: no class


@pytest.mark.parametrize("source, members, message", [
    (_Plugin(), {"screw/train/good/0.png": b"x"}, "{tar}: converting it made class screw, not one of the plug "
     "source's classes (bottle); is it the Plug release?"),
    (_MakesNothing(), {"bottle/train/good/0.png": b"x"}, "{tar}: converting it made no <class>/train folder; is it "
     "the Plug release?"),
])
def test_a_conversion_without_its_declared_classes_is_not_marked_complete(server, tmp_path: Path, source,  # noqa: F811
                                                                          members, message) -> None:
    """Item 7: no class, or a class the source does not declare: refused before the marker is
    written (not at prepare), and no dataset folder is left."""
    from data_fixtures import tar_bytes

    archive = tar_bytes(members)
    server.files["/p.tar"] = archive
    root = tmp_path / "d"
    with pytest.raises(DatasetError) as err:
        source.fetch(root, locations=(sources.Location(_url(server, "/p.tar")),), sha256=_sha(archive),
                     progress=False)
    assert str(err.value) == message.format(tar=root / "downloads" / "plug.tar")
    assert sorted(p.name for p in root.iterdir()) == ["downloads"]


def test_a_finished_fetch_says_when_asked_for_another_archive(server, tmp_path: Path, caplog) -> None:  # noqa: F811
    """Item 7: a second fetch with another sha256 is an error naming both archives and the key;
    the same archive from another location is not downloaded again, and the log says so."""
    caplog.set_level(logging.INFO, logger="skrd4ad")
    first, other = vad_zip(), vad_zip(top="vad/")
    server.files.update({"/VAD.zip": first, "/other.zip": other, "/copy.zip": first})
    root = tmp_path / "d"
    out = fetch_dataset("vad", root, url=_url(server, "/VAD.zip"), sha256=_sha(first), progress=False)
    with pytest.raises(DatasetError) as err:
        fetch_dataset("vad", root, url=_url(server, "/other.zip"), sha256=_sha(other), progress=False)
    assert str(err.value) == (
        f"{out} is already fetched from {_url(server, '/VAD.zip')} (sha256 {_sha(first)}), not the archive asked for "
        f"(sha256 {_sha(other)}); delete {out} and {root / 'downloads' / 'VAD.zip'} to fetch that one, "
        f"or set --sha256 to {_sha(first)}")
    fetch_dataset("vad", root, url=_url(server, "/copy.zip"), sha256=_sha(first), progress=False)
    assert [p for p, _ in server.log] == ["/VAD.zip"]
    assert (f"{out} is already fetched from {_url(server, '/VAD.zip')} (same sha256); not downloading it from "
            f"{_url(server, '/copy.zip')}") in caplog.text
