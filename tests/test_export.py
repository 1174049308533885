"""ONNX export of the whole inference path, checked against the eager PyTorch path.

The reference everywhere is :func:`skrd4ad.inference.predict_batch` on a freshly loaded,
BatchNorm-folded model: never the exported module itself.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from skrd4ad.checkpoint import load_checkpoint
from skrd4ad.config import EvalConfig, TrainConfig
from skrd4ad.data.prepare import prepare_class
from skrd4ad.data.prepared import PreparedClass
from skrd4ad.data.sources.synthetic.generate import generate
from skrd4ad.export import ONNX_FORMAT, export_onnx, verify_onnx
from skrd4ad.inference import predict_batch
from skrd4ad.io import sha256_file
from skrd4ad.models import variants
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.thresholds import find_thresholds, settings_for, thresholds_record, write_thresholds
from skrd4ad.train import train

pytest.importorskip("onnxruntime")  # a guard only: the test extra installs the export extra

SIZE = 64
#: Map settings that together cover sum and product ("mul"), max and top-k scores, and sigma 0 (no
#: blur buffers); each (arch, variant) case of every registered variant gets one, in turn.  Each case
#: also gets its thresholds file from these settings, except NO_THRESHOLDS, exported without
#: thresholds (settings via config).
MAP_SETTINGS = [{"combine": "sum", "sigma": 4.0, "score": "max", "topk": 100},
                {"combine": "sum", "sigma": 4.0, "score": "topk_mean", "topk": 50},
                {"combine": "mul", "sigma": 2.0, "score": "max", "topk": 100},
                {"combine": "sum", "sigma": 0.0, "score": "topk_mean", "topk": 10}]
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    f"{arch}-{variant}": (arch, variant, MAP_SETTINGS[(2 * i + j + 1) % len(MAP_SETTINGS)])
    for j, arch in enumerate(("mobilenet_v2", "resnet18")) for i, variant in enumerate(variants.names())}
NO_THRESHOLDS = f"resnet18-{variants.names()[0]}"
REL_TOL = 1e-4
#: For students with per-instance normalisation (RD++'s projection): on this test's 64 px images the
#: coarsest maps are 2x2, InstanceNorm divides by their small spread, and onnxruntime's rounding
#: differs more (measured 1.6e-4 of the map range for mobilenet_v2 with the projection).
REL_TOL_INSTANCE_NORM = 5e-4


def tolerance(case: dict[str, Any]) -> float:
    """The parity tolerance of ``case``'s model, relative to its map range."""
    model, _ = load_checkpoint(case["checkpoint"])
    norm = any(isinstance(m, torch.nn.modules.instancenorm._InstanceNorm) for m in model.student.modules())
    return REL_TOL_INSTANCE_NORM if norm else REL_TOL


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_data")
    generate(root / "raw", ["brick"], seed=3, image_size=SIZE, n_train=4, n_test_good=3, n_test_bad=4)
    return prepare_class(root / "raw", "brick", root / "prepared", image_size=SIZE, progress=False)


@pytest.fixture(scope="module")
def trained(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``trained(arch, variant)``: a checkpoint trained for one epoch (one step) with a random
    teacher, trained once per module and shared; copy it before writing beside it."""
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, variant: str) -> Path:
        if (arch, variant) not in cache:
            root = tmp_path_factory.mktemp(f"{arch}-{variant}")
            config = TrainConfig(arch=arch, variant=variant, teacher_weights=None, epochs=1, batch_size=4,
                                 device="cpu", seed=7)
            torch.manual_seed(0)
            train(config, prepared, root / "model.pt", progress=False)
            cache[arch, variant] = root / "model.pt"
        return cache[arch, variant]

    return get


def _copy(checkpoint: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(checkpoint, folder / "model.pt"))


def _eager(checkpoint: Path, images: np.ndarray, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The reference: predict_batch on the loaded, folded model."""
    model, _ = load_checkpoint(checkpoint, device="cpu")
    fold_batchnorm(model)
    maps, scores = predict_batch(model, images, EvalConfig(**settings))
    return maps.numpy(), scores.numpy()


def _between(values: np.ndarray) -> float:
    """A threshold halfway in the widest gap of the middle half of the sorted ``values``."""
    v = np.sort(values)
    lo, hi = len(v) // 4, max(len(v) * 3 // 4, len(v) // 4 + 1)
    i = lo + int(np.argmax(np.diff(v[lo:hi + 1])))
    return float((v[i] + v[i + 1]) / 2)


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, prepared: Path, trained: Callable[[str, str], Path],
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One trained checkpoint exported to ONNX; the eager reference is computed after the export
    (in the same process, so an export that broke later eager calls would show)."""
    arch, variant, settings = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = _copy(trained(arch, variant), root)
    images = np.array(PreparedClass(prepared).test_images)
    thresholds = None
    if request.param != NO_THRESHOLDS:
        # thresholds chosen with these settings (the values only travel into the sidecar)
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        deployed = {"image": 0.25, "pixel": 0.75, "rule": "val_fpr", "chosen_on": "validation set (test)",
                    "validation": None}  # the oracle (test F1-max) differs: the sidecar must carry these
        record = thresholds_record({"image_f1_threshold": 0.125, "pixel_f1_threshold": 0.5}, settings,
                                   ckpt["identity"], ckpt, deployed)
        thresholds = root / "chosen.thresholds.json"
        write_thresholds(record, thresholds)
        out = export_onnx(checkpoint, root / "deploy" / "brick.onnx", thresholds=thresholds)  # settings from the file
    else:
        out = export_onnx(checkpoint, root / "deploy" / "brick.onnx", config=settings)
    maps, scores = _eager(checkpoint, images, settings)
    return {"name": request.param, "checkpoint": checkpoint, "onnx": out, "images": images, "settings": settings,
            "thresholds": thresholds, "eager_maps": maps, "eager_scores": scores, "arch": arch, "variant": variant}


def test_onnx_matches_the_eager_path_at_any_batch_size(case: dict[str, Any]) -> None:
    images, ref_maps, ref_scores = case["images"], case["eager_maps"], case["eager_scores"]
    tol = tolerance(case)
    assert len(images) == 7  # exported with an example batch of 2: 7 and 1 prove the dynamic batch
    scale = float(ref_maps.max() - ref_maps.min())
    assert scale > 0 and np.isfinite(ref_maps).all()
    scores, maps = verify_onnx(case["onnx"], images)
    assert maps.shape == (7, SIZE, SIZE) and scores.shape == (7,)
    assert maps.dtype == np.float32 and scores.dtype == np.float32
    map_diff = float(np.abs(maps - ref_maps).max()) / scale
    score_diff = float(np.abs(scores - ref_scores).max()) / scale
    print(f"\n{case['name']}: max map diff {map_diff:.2e}, score diff {score_diff:.2e} of the map range {scale:.3g}")
    assert map_diff <= tol and score_diff <= tol

    one_scores, one_maps = verify_onnx(case["onnx"], images[4:5], threads=1)
    assert one_maps.shape == (1, SIZE, SIZE)
    assert np.abs(one_maps[0] - ref_maps[4]).max() <= tol * scale
    assert abs(float(one_scores[0] - ref_scores[4])) <= tol * scale

    # identical labels: image threshold between two scores; pixels may differ only within the tolerance
    threshold = _between(ref_scores)
    assert np.array_equal(scores >= threshold, ref_scores >= threshold)
    assert 0 < (ref_scores >= threshold).sum() < len(ref_scores)
    pixel_t = float(np.median(ref_maps))
    differ = (maps >= pixel_t) != (ref_maps >= pixel_t)
    assert np.all(np.abs(ref_maps[differ] - pixel_t) <= tol * scale)


def test_sidecar_records_settings_thresholds_and_origin(case: dict[str, Any]) -> None:
    sidecar = case["onnx"].with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    ckpt = torch.load(case["checkpoint"], map_location="cpu", weights_only=True)
    assert meta["format"] == ONNX_FORMAT and meta["onnx_file"] == "brick.onnx"
    assert meta["onnx_sha256"] == sha256_file(case["onnx"])
    assert meta["checkpoint"]["id"] == ckpt["identity"] and meta["checkpoint"]["id"].startswith("sha256:")
    assert meta["input"]["name"] == "images" and meta["input"]["dtype"] == "uint8"
    assert meta["input"]["shape"] == ["batch", SIZE, SIZE, 3] and "NHWC RGB" in meta["input"]["layout"]
    assert [o["name"] for o in meta["outputs"]] == ["scores", "maps"]
    assert meta["image_size"] == SIZE and meta["settings"] == case["settings"]
    assert (meta["class"], meta["variant"], meta["arch"]) == ("brick", case["variant"], case["arch"])
    assert meta["teacher"]["weights_id"] == ckpt["teacher"]["weights_id"]
    assert isinstance(meta["opset"], int) and meta["opset"] >= 13
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["parity_check"]["max_map_diff_rel"] <= tolerance(case)
    if case["thresholds"] is None:
        assert meta["thresholds"] is None
    else:
        found = find_thresholds(case["checkpoint"], case["thresholds"])
        assert (found.image, found.pixel) == (0.25, 0.75)
        assert (meta["thresholds"]["image"], meta["thresholds"]["pixel"]) == (0.25, 0.75)
        assert meta["thresholds"]["source"] == str(case["thresholds"])
        assert meta["thresholds"]["chosen_on"] == "validation set (test)"
    assert sorted(p.name for p in case["onnx"].parent.iterdir()) == ["brick.json", "brick.onnx"]  # no temp files


@pytest.fixture(scope="module")
def with_thresholds(trained: Callable[[str, str], Path],
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint and its companion thresholds file (found without being named), chosen with
    the default settings (sigma 4, score max)."""
    checkpoint = _copy(trained("mobilenet_v2", variants.names()[0]), tmp_path_factory.mktemp("companion"))
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    path = checkpoint.with_name("model.thresholds.json")
    write_thresholds(thresholds_record({"image_f1_threshold": 1.0}, EvalConfig().__dict__, ckpt["identity"],
                                       ckpt), path)
    return checkpoint, path


def test_settings_that_differ_from_the_thresholds_are_an_error(with_thresholds: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    checkpoint, path = with_thresholds
    for config, key in ((EvalConfig(sigma=2.0), "sigma"), ({"score": "topk_mean"}, "score"),
                        ({"combine": "mul", "topk": 100}, "combine")):
        with pytest.raises(ValueError, match=rf"^{key}=.* differs from {key}=.* thresholds in {path}"):
            export_onnx(checkpoint, tmp_path / "m.onnx", config=config)
    assert not list(tmp_path.iterdir())
    found = find_thresholds(checkpoint)
    # equal values are no conflict; unset ones come from the thresholds; other keys pass through
    same = settings_for({"sigma": 4.0, "batch_size": 3}, found)
    assert (same.sigma, same.score, same.batch_size) == (4.0, "max", 3)
    assert settings_for({"sigma": 2.0}, None).sigma == 2.0  # no thresholds: anything goes


def test_a_model_that_does_not_match_is_not_written(with_thresholds: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import skrd4ad.export as export

    real = export.verify_onnx

    def off_by_a_bit(*args, **kwargs):
        scores, maps = real(*args, **kwargs)
        return scores, maps + 1e-3 * (maps.max() - maps.min())

    monkeypatch.setattr(export, "verify_onnx", off_by_a_bit)
    checkpoint, _ = with_thresholds
    with pytest.raises(ValueError, match="differs from the PyTorch model .* nothing was written"):
        export_onnx(checkpoint, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_missing_onnxruntime_names_the_install_command(with_thresholds: tuple[Path, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    hint = r"onnxruntime is missing\): pip install -e '\.\[export\]'$"
    with pytest.raises(ImportError, match=hint):
        export_onnx(with_thresholds[0], tmp_path / "m.onnx")
    with pytest.raises(ImportError, match=hint):
        verify_onnx(tmp_path / "m.onnx", np.zeros((1, SIZE, SIZE, 3), np.uint8))
    assert not list(tmp_path.iterdir())


def test_json_output_name_is_refused(with_thresholds: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not end in .json"):
        export_onnx(with_thresholds[0], tmp_path / "m.json")


@pytest.mark.slow
def test_dynamo_exporter_matches_too(prepared: Path, trained: Callable[[str, str], Path], tmp_path: Path) -> None:
    """The torch.export-based exporter (slower: 10-30 s on 2 cores), on the cheapest arch."""
    pytest.importorskip("onnxscript")
    checkpoint = _copy(trained("resnet18", variants.names()[0]), tmp_path)
    out = export_onnx(checkpoint, tmp_path / "d.onnx", dynamo=True)
    images = np.array(PreparedClass(prepared).test_images)
    ref_maps, ref_scores = _eager(checkpoint, images, {})  # after the export: eager still right
    scores, maps = verify_onnx(out, images)
    scale = float(ref_maps.max() - ref_maps.min())
    assert np.abs(maps - ref_maps).max() <= REL_TOL * scale
    assert np.abs(scores - ref_scores).max() <= REL_TOL * scale
    assert json.loads(out.with_suffix(".json").read_text())["exporter"] == "torch.onnx.export(dynamo=True)"


def test_tracing_first_does_not_poison_the_eager_caches() -> None:
    """The ImageNet constants and blur matrices are cached per device; filled first inside
    torch.export they would hold the tracer's fake tensors and break every later eager call."""
    import scipy.ndimage as ndi

    from skrd4ad.data.prepared import _imagenet_constants, to_model_input
    from skrd4ad.models.anomaly_map import blur_matrix, gaussian_blur

    class Blur(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return gaussian_blur(to_model_input(x, x.device)[:, 0], 4.0)

    x = torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    _imagenet_constants.cache_clear()
    blur_matrix.cache_clear()
    torch.export.export(Blur(), (x,))  # traced first, with empty caches
    got = Blur()(x).numpy()
    channel = (x[..., 0].double() / 255 - 0.485) / 0.229  # ImageNet normalisation of red, written out
    want = np.stack([ndi.gaussian_filter(c, 4.0, mode="reflect", truncate=4.0) for c in channel.numpy()])
    np.testing.assert_allclose(got, want, atol=1e-5)
