"""Tests for skrd4ad.viz: overlay colours, PNG output, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps as plt_colormaps
import pytest
from matplotlib import colormaps
from PIL import Image

from skrd4ad import viz


def _scene(h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 128, dtype=np.uint8)
    amap = np.zeros((h, w), dtype=np.float32)
    amap[8:16, 10:20] = 1.0
    mask = (amap > 0).astype(np.uint8)
    return image, amap, mask


def _jet255(t: float) -> np.ndarray:
    return np.asarray(colormaps["jet"](t)[:3]) * 255.0


def test_overlay_shape_dtype_and_known_colours() -> None:
    image, amap, _ = _scene()
    out = viz.overlay(image, amap, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[12, 15], np.rint(0.5 * 128 + 0.5 * _jet255(1.0)))
    np.testing.assert_array_equal(out[0, 0], np.rint(0.5 * 128 + 0.5 * _jet255(0.0)))
    # High map -> red dominates; low map -> blue dominates.
    assert out[12, 15, 0] > out[12, 15, 2] and out[0, 0, 2] > out[0, 0, 0]
    np.testing.assert_array_equal(viz.overlay(image, amap, alpha=0.0), image)


def test_overlay_range_and_clipping() -> None:
    image, amap, _ = _scene()
    ramp = np.linspace(-1, 2, amap.size).reshape(amap.shape)
    out = viz.overlay(image, ramp, vmin=0.0, vmax=1.0, alpha=1.0)
    below, above = ramp < 0, ramp > 1
    np.testing.assert_array_equal(out[below], np.broadcast_to(np.rint(_jet255(0.0)), (below.sum(), 3)))
    np.testing.assert_array_equal(out[above], np.broadcast_to(np.rint(_jet255(1.0)), (above.sum(), 3)))
    # Constant map: no division by zero, bottom colour everywhere.
    const = viz.overlay(image, np.full(amap.shape, 3.0), alpha=1.0)
    np.testing.assert_array_equal(const, np.broadcast_to(np.rint(_jet255(0.0)), image.shape))


def test_overlay_rejects_bad_inputs() -> None:
    image, amap, _ = _scene()
    with pytest.raises(ValueError, match="uint8"):
        viz.overlay(image.astype(np.float32), amap)
    with pytest.raises(ValueError, match="shape"):
        viz.overlay(image, amap[:-1])
    bad = amap.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        viz.overlay(image, bad)
    with pytest.raises(ValueError, match="vmax"):
        viz.overlay(image, amap, vmin=1.0, vmax=0.0)


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_save_overlay_png_round_trips(tmp_path: Path) -> None:
    image, amap, _ = _scene()
    path = tmp_path / "sub" / "overlay.png"
    viz.save_overlay_png(path, image, amap, alpha=0.7, title="a title")
    decoded = np.asarray(Image.open(path).convert("RGB"))
    _, boxes = viz.render_overlay(image, amap, alpha=0.7, title="a title")
    top, left, h, w = boxes["overlay"]
    np.testing.assert_array_equal(decoded[top:top + h, left:left + w], viz.overlay(image, amap, alpha=0.7))
    top, left, h, w = boxes["colour bar"]
    jet = (plt_colormaps["jet"]([1.0, 0.0])[:, :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(decoded[[top, top + h - 1], left + w // 2], jet)  # vmax on top, vmin below
    assert decoded.shape[0] > image.shape[0] and decoded.shape[1] > image.shape[1] + w
    assert _leftovers(path.parent) == []


@pytest.mark.parametrize("with_mask", [True, False])
def test_save_triptych_writes_a_png(tmp_path: Path, with_mask: bool) -> None:
    image, amap, mask = _scene()
    path = tmp_path / "triptych.png"
    viz.save_triptych(path, image, mask if with_mask else None, amap, title="bottle / broken_large / 000")
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[1] > pixels.shape[0] > 100  # three panels side by side
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not blank
    assert _leftovers(tmp_path) == []


def test_triptych_panels_are_the_pixels_themselves(tmp_path: Path) -> None:
    image, amap, mask = _scene(h=24, w=32)  # below PANEL_MIN_SIDE: enlarged by an integer factor
    image = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    canvas, boxes = viz.render_triptych(image, mask, amap, title="t", vmin=-1.0, vmax=2.0, alpha=0.5)
    factor = -(-viz.PANEL_MIN_SIDE // 32)  # 6
    expected = {
        "image": image,
        "ground truth": np.repeat((mask != 0).astype(np.uint8)[..., None] * 255, 3, axis=2),
        "anomaly map": viz.overlay(image, amap, vmin=-1.0, vmax=2.0, alpha=0.5),
    }
    for name, panel in expected.items():
        top, left, h, w = boxes[name]
        assert (h, w) == (24 * factor, 32 * factor)
        np.testing.assert_array_equal(canvas[top:top + h, left:left + w],
                                      panel.repeat(factor, axis=0).repeat(factor, axis=1), err_msg=name)
    tops = [boxes[n][1] for n in ("image", "ground truth", "anomaly map", "colour bar")]
    assert tops == sorted(tops)  # left to right, colour bar last
    top, left, h, w = boxes["colour bar"]
    bar = canvas[top:top + h, left:left + w].astype(float)
    np.testing.assert_allclose(bar[0, 0], _jet255(1.0), atol=1)  # vmax at the top
    np.testing.assert_allclose(bar[-1, 0], _jet255(0.0), atol=1)  # vmin at the bottom
    assert (bar == bar[:, :1]).all()  # constant across each row
    # the PNG holds exactly the rendered canvas
    viz.save_triptych(tmp_path / "f.png", image, mask, amap, title="t", vmin=-1.0, vmax=2.0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "f.png").convert("RGB")), canvas)


def test_triptych_keeps_large_images_at_their_size_and_marks_missing_masks() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (256, 200, 3), dtype=np.uint8)
    amap = rng.random((256, 200))
    canvas, boxes = viz.render_triptych(image, None, amap, title="x" * 500)  # long title is shortened
    top, left, h, w = boxes["image"]
    assert (h, w) == (256, 200)
    np.testing.assert_array_equal(canvas[top:top + h, left:left + w], image)
    top, left, h, w = boxes["ground truth"]
    gt = canvas[top:top + h, left:left + w]
    assert (gt[:10] == 0).all() and gt.max() == 255  # black panel with the white "no mask" text
    title_band = canvas[: boxes["image"][0] - 18]  # above the panel labels
    assert (title_band < 128).any() and (title_band[:, -8:] == 255).all()  # text drawn, not past the margin


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    image, amap, mask = _scene()
    path = tmp_path / "fig.png"
    with pytest.raises(ValueError):
        viz.save_triptych(path, image, mask[:-1], amap, title="bad mask")
    with pytest.raises(ValueError):
        viz.save_overlay_png(path, image, amap, alpha=2.0)
    assert list(tmp_path.iterdir()) == []
