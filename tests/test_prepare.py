"""Layout validation, the prepared cache (prepare_class / PreparedClass) and batch helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.functional as TF
from data_fixtures import box_mask, make_mvtec_class, save_png
from PIL import Image

from skrd4ad.data.layout import DatasetError, scan_class
from skrd4ad.data.masks import binarise_mask
from skrd4ad.data.prepare import MANIFEST_COLUMNS, prepare_class, resize_image, source_digest
from skrd4ad.data.prepared import IMAGENET_MEAN, IMAGENET_STD, PreparedClass, batch_from, iterate_batches, to_model_input


def _prep(root: Path, out: Path, size: int, **kw: object) -> PreparedClass:
    return PreparedClass(prepare_class(root, "widget", out, image_size=size, progress=False, workers=2, **kw))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------- layout checks


def test_unknown_class_lists_found_classes(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, "widget")
    make_mvtec_class(tmp_path, "gadget")
    with pytest.raises(DatasetError, match=r"unknown class 'gizmo'.*\['gadget', 'widget'\]"):
        scan_class(tmp_path, "gizmo")
    with pytest.raises(DatasetError, match="unknown class"):
        prepare_class(tmp_path, "gizmo", tmp_path / "out", image_size=8, progress=False)


def test_missing_mask_is_an_error_naming_the_image(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path)
    (tmp_path / "widget/ground_truth/crack/001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"test/crack/001.png has no mask.*001_mask.png"):
        scan_class(tmp_path, "widget")
    assert len(scan_class(tmp_path, "widget", image_level_only=True)) == 7  # explicit opt-out works


def test_empty_train_set_and_unsupported_extension(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, n_train=0)
    (tmp_path / "widget/train/good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DatasetError, match="empty train set.*train/good"):
        scan_class(tmp_path, "widget")
    save_png(tmp_path / "widget/train/good/a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "widget/test/good/notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"unsupported file .*notes.txt.*'\.txt'"):
        scan_class(tmp_path, "widget")


def test_scan_order_labels_and_masks(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, defects={"crack": 2, "bent": 1})
    (tmp_path / "widget/train/good/.DS_Store").write_text("hidden files are ignored")
    samples = scan_class(tmp_path, "widget")
    got = [(s.split, s.defect_type, s.path.name, s.label, s.mask_path.name if s.mask_path else None) for s in samples]
    assert got == [
        ("train", "good", "000.png", 0, None), ("train", "good", "001.png", 0, None), ("train", "good", "002.png", 0, None),
        ("test", "bent", "000.png", 1, "000_mask.png"),
        ("test", "crack", "000.png", 1, "000_mask.png"), ("test", "crack", "001.png", 1, "001_mask.png"),
        ("test", "good", "000.png", 0, None), ("test", "good", "001.png", 0, None),
    ]


# ---------------------------------------------------------------------------------- conversion and resize


def test_grayscale_16bit_rgba_palette_are_converted(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, n_train=0, size=(5, 5), with_masks=False)
    good = tmp_path / "widget/train/good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(good / "a_gray.png")
    g16 = rng.integers(0, 65536, (5, 5), dtype=np.uint16)
    Image.fromarray(g16).save(good / "b_16bit.png")
    rgba = rng.integers(0, 256, (5, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(good / "c_rgba.png")
    indices = rng.integers(0, 4, (5, 5), dtype=np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    pal = Image.fromarray(indices, mode="P")
    pal.putpalette(palette)
    pal.save(good / "d_palette.png")
    assert Image.open(good / "b_16bit.png").mode.startswith("I")  # really 16-bit on disk
    data = _prep(tmp_path, tmp_path / "out", 5)  # same size: no resampling, exact values
    train = np.asarray(data.train_images)
    assert train.shape == (4, 5, 5, 3) and train.dtype == np.uint8
    np.testing.assert_array_equal(train[0], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(train[1], np.repeat(np.rint(g16 / 257.0).astype(np.uint8)[..., None], 3, axis=2))
    np.testing.assert_array_equal(train[2], rgba[..., :3])
    np.testing.assert_array_equal(train[3], np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[indices])


def _triangle_resize(image: np.ndarray, out: int) -> np.ndarray:
    """Brute-force antialiased bilinear resize (triangle kernel stretched by the reduction factor)."""
    result = image.astype(np.float64)
    for axis in (1, 0):  # PIL filters horizontally first
        n_in = result.shape[axis]
        scale = n_in / out
        support = max(scale, 1.0)
        weights = np.zeros((out, n_in))
        for i in range(out):
            center = (i + 0.5) * scale
            for j in range(n_in):
                weights[i, j] = max(0.0, 1.0 - abs(j + 0.5 - center) / support)
            weights[i] /= weights[i].sum()
        result = np.rint(np.moveaxis(np.tensordot(weights, np.moveaxis(result, axis, 0), axes=1), 0, axis))
    return np.clip(result, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src,out", [(12, 5), (9, 3), (4, 9)])
def test_resize_matches_brute_force_and_torchvision(src: int, out: int) -> None:
    image = np.random.default_rng(src).integers(0, 256, (src, src, 3), dtype=np.uint8)
    ours = resize_image(Image.fromarray(image), out)
    assert ours.shape == (out, out, 3)
    assert np.abs(ours.astype(int) - _triangle_resize(image, out).astype(int)).max() <= 1
    reference = TF.resize(torch.from_numpy(image).permute(2, 0, 1), [out, out], antialias=True,
                          interpolation=TF.InterpolationMode.BILINEAR).permute(1, 2, 0).numpy()
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


def test_masks_nearest_and_binarised_nonzero(tmp_path: Path) -> None:
    np.testing.assert_array_equal(binarise_mask(np.array([[0, 1], [1, 0]])), [[0, 1], [1, 0]])  # 0/1 masks
    np.testing.assert_array_equal(binarise_mask(np.array([[0, 1, 127, 255]], np.uint8)), [[0, 1, 1, 1]])
    np.testing.assert_array_equal(binarise_mask(np.zeros((2, 2), np.uint8)), np.zeros((2, 2)))
    make_mvtec_class(tmp_path, size=(8, 8), defects={"crack": 1})
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 2:6] = 255
    mask[7, 7] = 100  # below half of the max: kept (any non-zero pixel is defect; issue 21, item 4)
    save_png(tmp_path / "widget/ground_truth/crack/000_mask.png", mask)
    data = _prep(tmp_path, tmp_path / "out", 4)
    i = int(data.test_manifest.index[data.test_manifest["defect_type"] == "crack"][0])
    expected = (mask > 0).astype(np.uint8)[1::2, 1::2]  # PIL nearest at factor 2 samples odd pixels
    np.testing.assert_array_equal(data.test_masks[i], expected)
    assert set(np.unique(data.test_masks)) <= {0, 1}


# ---------------------------------------------------------------------------------- cache contents


def test_manifest_arrays_and_meta_are_consistent(tmp_path: Path) -> None:
    written = make_mvtec_class(tmp_path, n_train=4, n_good=2, defects={"crack": 2, "bent": 1}, size=(10, 10))
    data = _prep(tmp_path, tmp_path / "out", 10)
    assert data.train_images.shape == (4, 10, 10, 3) and isinstance(data.train_images, np.memmap)
    assert data.test_images.shape == (5, 10, 10, 3) and data.test_masks.shape == (5, 10, 10)
    manifest = pd.read_csv(tmp_path / "out/manifest.csv", keep_default_na=False)
    assert list(manifest.columns) == MANIFEST_COLUMNS and (manifest["status"] == "ok").all()
    for row in manifest.itertuples():
        array = data.train_images if row.split == "train" else data.test_images
        np.testing.assert_array_equal(array[row.index], written[row.file])
        if row.split == "test":
            assert data.test_labels[row.index] == row.label == int(row.defect_type != "good")
            mask_rel = row.file.replace("/test/", "/ground_truth/").replace(".png", "_mask.png")
            expected = (written[mask_rel] > 0) if row.label else np.zeros((10, 10), bool)
            np.testing.assert_array_equal(data.test_masks[row.index], expected.astype(np.uint8))
            assert row.has_mask == bool(row.label)
    assert list(data.test_manifest["index"]) == list(range(5))
    meta = data.meta
    assert meta["counts"] == {"train": {"good": 4}, "test": {"bent": 1, "crack": 2, "good": 2}}
    assert meta["class"] == "widget" and meta["image_size"] == 10 and meta["image_level_only"] is False
    assert meta["source_root"] == tmp_path.as_posix()  # as given


def test_prepared_bytes_do_not_depend_on_where_the_tree_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline prepares ``data/raw/<name>`` by its relative path: two clones at different
    places write byte-identical prepared folders (DVC hashes them), so no absolute path is recorded."""
    def prepared_bytes(clone: Path) -> dict[str, bytes]:
        make_mvtec_class(clone / "data" / "raw")
        monkeypatch.chdir(clone)
        out = _prep(Path("data/raw"), Path("data/prepared"), 8).path
        return {f.name: f.read_bytes() for f in sorted(Path(out).iterdir())}

    first, second = prepared_bytes(tmp_path / "one"), prepared_bytes(tmp_path / "elsewhere" / "two")
    assert first == second and str(tmp_path).encode() not in first["meta.json"]


def test_source_digest_tracks_content_not_location(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    da = _prep(tmp_path / "a", tmp_path / "pa", 8).meta["source_digest"]
    db = _prep(tmp_path / "b", tmp_path / "pb", 8).meta["source_digest"]
    assert da == db
    save_png(tmp_path / "b/widget/ground_truth/crack/000_mask.png", box_mask(20, 24, 0, 0, 3, 3))
    assert _prep(tmp_path / "b", tmp_path / "pc", 8).meta["source_digest"] != da
    assert source_digest([("b", "2"), ("a", "1")]) == source_digest([("a", "1"), ("b", "2")])


def test_image_level_only_class(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, with_masks=False, defects={"crack": 2})
    data = _prep(tmp_path, tmp_path / "out", 8)
    assert data.image_level_only and data.test_masks is None
    assert not (tmp_path / "out/test_masks.npy").exists()
    assert list(data.test_labels) == [1, 1, 0, 0]
    assert not data.test_manifest["has_mask"].any()


# ---------------------------------------------------------------------------------- failures


def test_truncated_image_error_names_file_and_leaves_nothing(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, size=(64, 64))
    _truncate(tmp_path / "widget/test/good/001.png")  # test split: train arrays are already written
    with pytest.raises(DatasetError, match=r"cannot read .*widget/test/good/001.png.*truncated.*allow_skip"):
        prepare_class(tmp_path, "widget", tmp_path / "prep/out", image_size=8, progress=False)
    assert not (tmp_path / "prep/out").exists() and _leftovers(tmp_path / "prep") == []


def test_failed_reprepare_keeps_the_previous_cache(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, size=(64, 64))
    _prep(tmp_path, tmp_path / "out", 8)
    before = (tmp_path / "out/train.npy").read_bytes()
    _truncate(tmp_path / "widget/train/good/002.png")
    with pytest.raises(DatasetError):
        prepare_class(tmp_path, "widget", tmp_path / "out", image_size=16, progress=False)
    assert (tmp_path / "out/train.npy").read_bytes() == before and _leftovers(tmp_path) == []
    assert PreparedClass(tmp_path / "out").image_size == 8


def test_allow_skip_lists_skipped_files(tmp_path: Path) -> None:
    written = make_mvtec_class(tmp_path, n_train=3, size=(64, 64))
    _truncate(tmp_path / "widget/train/good/001.png")
    _truncate(tmp_path / "widget/test/crack/000.png")
    data = _prep(tmp_path, tmp_path / "out", 64, allow_skip=True)
    skipped = data.manifest[data.manifest["status"] == "skipped"]
    assert sorted(skipped["file"]) == ["widget/test/crack/000.png", "widget/train/good/001.png"]
    assert (skipped["index"] == -1).all() and skipped["reason"].str.contains("truncated").all()
    assert data.train_images.shape[0] == 2 and data.test_images.shape[0] == 3 and data.meta["n_skipped"] == 2
    np.testing.assert_array_equal(data.train_images[1], written["widget/train/good/002.png"])
    row = data.test_manifest[data.test_manifest["file"] == "widget/test/crack/001.png"].iloc[0]
    np.testing.assert_array_equal(data.test_images[row["index"]], written["widget/test/crack/001.png"])
    np.testing.assert_array_equal(data.test_masks[row["index"]], written["widget/ground_truth/crack/001_mask.png"] // 255)


def test_all_train_images_unreadable_is_empty_train_set(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, n_train=1, size=(64, 64))
    _truncate(tmp_path / "widget/train/good/000.png")
    with pytest.raises(DatasetError, match="empty train set"):
        prepare_class(tmp_path, "widget", tmp_path / "out", image_size=8, allow_skip=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, size=(20, 24))
    save_png(tmp_path / "widget/ground_truth/crack/001_mask.png", box_mask(10, 12, 0, 0, 2, 2))
    with pytest.raises(DatasetError, match=r"mask .*crack/001_mask.png is 12x10 but its image .*crack/001.png is 24x20"):
        prepare_class(tmp_path, "widget", tmp_path / "out", image_size=8, allow_skip=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_prepared_class_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist; run prepare"):
        PreparedClass(tmp_path / "nothing")
    make_mvtec_class(tmp_path)
    _prep(tmp_path, tmp_path / "out", 8)
    (tmp_path / "out/test_masks.npy").unlink()
    with pytest.raises(DatasetError, match=r"test_masks.npy is missing.*re-run prepare"):
        PreparedClass(tmp_path / "out")
    meta = json.loads((tmp_path / "out/meta.json").read_text())
    meta["n_train"] = 99
    (tmp_path / "out/meta.json").write_text(json.dumps({**meta, "image_level_only": True}))
    with pytest.raises(DatasetError, match=r"train.npy has dtype uint8 shape \(3, 8, 8, 3\).*\(99, 8, 8, 3\)"):
        PreparedClass(tmp_path / "out")


# ---------------------------------------------------------------------------------- batches and model input


def test_iterate_batches_covers_everything_once() -> None:
    batches = list(iterate_batches(10, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert all(b.dtype == np.int64 and (np.diff(b) > 0).all() for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    again = list(iterate_batches(10, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all((a == b).all() for a, b in zip(batches, again))
    other = list(iterate_batches(10, 4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert any(not np.array_equal(a, b) for a, b in zip(batches, other))
    assert [b.tolist() for b in iterate_batches(5, 2, shuffle=False, generator=None)] == [[0, 1], [2, 3], [4]]
    assert list(iterate_batches(0, 3, shuffle=True, generator=None)) == []
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(5, 0, shuffle=False, generator=None))


def test_to_model_input_numerics() -> None:
    batch = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    x = to_model_input(batch, "cpu")
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.is_contiguous()
    reference = TF.normalize(batch.permute(0, 3, 1, 2).double() / 255.0, list(IMAGENET_MEAN), list(IMAGENET_STD))
    torch.testing.assert_close(x.double(), reference, atol=1e-5, rtol=0)
    corner = (255 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert to_model_input(torch.full((1, 1, 1, 3), 255, dtype=torch.uint8), "cpu")[0, 0, 0, 0].item() == pytest.approx(corner, abs=1e-5)
    with pytest.raises(ValueError, match=r"uint8 tensor \(B, H, W, 3\)"):
        to_model_input(batch.float(), "cpu")
    with pytest.raises(ValueError, match="uint8 tensor"):
        to_model_input(batch.permute(0, 3, 1, 2), "cpu")


def test_batch_from_memmap(tmp_path: Path) -> None:
    make_mvtec_class(tmp_path, n_train=5)
    data = _prep(tmp_path, tmp_path / "out", 8)
    idx = np.array([1, 3, 4])
    batch = batch_from(data.train_images, idx)
    assert batch.dtype == torch.uint8 and batch.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(batch.numpy(), np.asarray(data.train_images)[idx])
