"""The embedded synthetic dataset: determinism, layout, exact masks, defect sizes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skrd4ad.data.layout import DatasetError, list_classes, scan_class
from skrd4ad.data.sources.synthetic.generate import DEFECT_TYPES, MARKER, SOURCES, contact_sheet, generate, make_image

SMALL = dict(image_size=64, n_train=3, n_test_good=2, n_test_bad=6)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = _digests(generate(tmp_path / "a", ["grass"], seed=3, **SMALL))
    b = _digests(generate(tmp_path / "b", ["grass"], seed=3, **SMALL))
    c = _digests(generate(tmp_path / "c", ["grass"], seed=4, **SMALL))
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 3 + 2 + 6 + 6
    assert all(a[k] != c[k] for k in pngs if "_mask" not in k)


def test_class_subset_and_counts_do_not_change_other_images(tmp_path: Path) -> None:
    one = _digests(generate(tmp_path / "one", ["gravel"], seed=0, **SMALL))
    both = _digests(generate(tmp_path / "both", ["brick", "gravel"], seed=0, **SMALL))
    assert {k: v for k, v in both.items() if k.startswith("gravel/")} == one
    more = _digests(generate(tmp_path / "more", ["gravel"], seed=0, **{**SMALL, "n_train": 5}))
    assert more["gravel/train/good/002.png"] == one["gravel/train/good/002.png"]


def test_layout_is_valid_mvtec(tmp_path: Path) -> None:
    root = generate(tmp_path, ["brick"], seed=0, image_size=48, n_train=4, n_test_good=3, n_test_bad=7)
    assert list_classes(root) == ["brick"]
    samples = scan_class(root, "brick", image_level_only=False)
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    assert len(train) == 4 and len(test) == 10
    per_defect = {d: sum(s.defect_type == d for s in test) for d in ("good", *DEFECT_TYPES)}
    assert per_defect == {"good": 3, "scratch": 2, "stain": 2, "hole": 1, "foreign": 1, "smear": 1}
    for s in test:
        image = np.asarray(Image.open(s.path))
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        if s.label:
            assert s.mask_path is not None
            mask = np.asarray(Image.open(s.mask_path))
            assert mask.shape == (48, 48) and set(np.unique(mask)) == {0, 255}


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_mask_is_exactly_the_changed_pixels(defect: str) -> None:
    for cls in SOURCES:
        for index in range(3):
            s = make_image(cls, seed=1, index=index, stream="test", defect=defect, image_size=64)
            assert s.mask is not None and s.mask.dtype == np.uint8
            changed = (s.image != s.clean).any(axis=2)
            np.testing.assert_array_equal(s.mask.astype(bool), changed)
            frac = s.mask.mean()
            assert 0 < frac <= 0.07, (cls, defect, index, frac)
            # visibly different, not a one-level nudge: mean change under the mask of at least 8 levels
            diff = np.abs(s.image.astype(int) - s.clean.astype(int)).max(axis=2)
            assert diff[s.mask.astype(bool)].mean() >= 7.5


def test_defect_sizes_span_tiny_to_a_few_percent() -> None:
    fractions = [
        make_image("gravel", seed=0, index=i, stream="test", defect=d, image_size=64).mask.mean()  # type: ignore[union-attr]
        for d in ("stain", "hole", "foreign", "smear") for i in range(6)
    ]
    assert min(fractions) < 0.004 and max(fractions) > 0.015


def test_normal_images_are_varied_but_alike() -> None:
    images = [make_image("brick", seed=0, index=i, image_size=64) for i in range(6)]
    assert all(s.mask is None and s.image is s.clean for s in images)
    stack = np.stack([s.image.astype(float) for s in images])
    for i in range(len(images)):
        for j in range(i):
            assert np.abs(stack[i] - stack[j]).mean() > 5  # different crops
    means = stack.mean(axis=(1, 2))  # per image, per channel
    assert np.ptp(means, axis=0).max() < 40  # same material: colour stays close
    assert means[:, 0].mean() > means[:, 2].mean()  # brick is red-brown


def test_marker_makes_generate_idempotent_and_protects_foreign_folders(tmp_path: Path) -> None:
    root = generate(tmp_path, ["grass"], seed=0, **SMALL)
    first = (root / "grass/train/good/000.png").stat().st_mtime_ns
    generate(tmp_path, ["grass"], seed=0, **SMALL)
    assert (root / "grass/train/good/000.png").stat().st_mtime_ns == first
    assert (root / "grass" / MARKER).is_file()
    before = (root / "grass/train/good/000.png").read_bytes()
    generate(tmp_path, ["grass"], seed=9, **SMALL)  # other parameters: regenerated in place
    assert (root / "grass/train/good/000.png").read_bytes() != before
    assert sorted(p.name for p in root.iterdir()) == ["grass"]  # no temp folders left
    (tmp_path / "gravel").mkdir()
    with pytest.raises(DatasetError, match="not made by the synthetic generator"):
        generate(tmp_path, ["gravel"], seed=0, **SMALL)


def test_unknown_class_and_defect_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown synthetic class 'marble'.*brick"):
        generate(tmp_path, ["marble"])
    with pytest.raises(DatasetError, match="unknown defect type 'dent'"):
        generate(tmp_path, ["brick"], defect_types=["dent"])


def test_contact_sheet(tmp_path: Path) -> None:
    root = generate(tmp_path / "d", ["gravel"], seed=0, image_size=48, n_train=1, n_test_good=4, n_test_bad=10)
    out = contact_sheet(root, "gravel", tmp_path / "sheet.png", per_row=4, tile=32)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == ((1 + len(DEFECT_TYPES)) * (32 + 4), 72 + 4 * (32 + 4), 3)
    red = (sheet[..., 0] == 255) & (sheet[..., 1] == 0) & (sheet[..., 2] == 0)
    assert red.sum() > 0  # mask outlines drawn
