"""A checkpoint is identified by what determines its model, not by its file's bytes; the package
source digest that replaces the git revision in tracked outputs."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

from skrd4ad.checkpoint import IDENTITY_KEY, checkpoint_identity, identity_of_file, model_identity, tensors_digest
from skrd4ad.io import write_json_atomic
from skrd4ad.provenance import source_digest
from skrd4ad.thresholds import find_thresholds


def test_tensors_digest_known_answer() -> None:
    # by hand: key, dtype and shape as JSON, then the little-endian float32 bytes of 1.0 and 2.0
    want = hashlib.sha256(b'["w", "torch.float32", [2]]' + bytes.fromhex("0000803f") + bytes.fromhex("00000040"))
    assert tensors_digest({"w": torch.tensor([1.0, 2.0])}) == want.hexdigest()
    # key order does not matter; dtype, shape and one value do
    a = {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    assert tensors_digest(a) == tensors_digest(dict(reversed(list(a.items()))))
    assert tensors_digest(a) != tensors_digest({**a, "a": torch.zeros(3, 2)})
    assert tensors_digest(a) != tensors_digest({**a, "a": torch.zeros(2, 3, dtype=torch.float64)})
    assert tensors_digest(a) != tensors_digest({**a, "b": torch.tensor([1.0, 1, 1, 1.0078125], dtype=torch.bfloat16)})


def _ckpt() -> dict:
    torch.manual_seed(0)
    return {"variant": "rd4ad", "image_size": 64,
            "teacher": {"arch": "mobilenet_v2", "weights": "data/teacher/mobilenet_v2.pth", "weights_id": "sha256:ab"},
            "config": {"arch": "mobilenet_v2", "variant": "rd4ad", "teacher_weights": "data/teacher/mobilenet_v2.pth",
                       "seed": 111, "epochs": 1, "lr": 0.005, "checkpoint_every": 1, "device": "cpu"},
            "student": {"w": torch.randn(3, 3), "b": torch.randn(3)}, "teacher_state": None,
            "final_loss": 0.5, "versions": {"torch": "1"}, "code": {"source_sha256": "0" * 64}}


def test_identity_follows_the_model_not_the_file() -> None:
    base = _ckpt()
    ident = model_identity(base)
    assert ident.startswith("sha256:") and len(ident) == 7 + 64
    same = copy.deepcopy(base)  # records that do not change the model
    same.update(final_loss=9.0, versions={"torch": "2"}, code={"source_sha256": "1" * 64})
    same["config"].update(checkpoint_every=5, device="cuda", teacher_weights="/elsewhere/mnv2.pth")
    same["teacher"]["weights"] = "/elsewhere/mnv2.pth"
    assert model_identity(same) == ident
    for change in ({"variant": "skrd4ad"}, {"image_size": 128}):
        assert model_identity({**base, **change}) != ident, change
    other = copy.deepcopy(base)
    other["student"]["w"][0, 0] += 1e-6
    assert model_identity(other) != ident
    other = copy.deepcopy(base)
    other["teacher"]["weights_id"] = "sha256:cd"  # another teacher
    assert model_identity(other) != ident
    other = copy.deepcopy(base)
    other["config"]["lr"] = 0.01  # a setting that changes the model
    assert model_identity(other) != ident
    other = copy.deepcopy(base)
    other["teacher_state"] = {"t": torch.zeros(1)}  # a random teacher's weights count
    assert model_identity(other) != ident
    # stored at save time; an old checkpoint without it is recomputed
    assert checkpoint_identity({**base, IDENTITY_KEY: "sha256:stored"}) == "sha256:stored"
    assert checkpoint_identity(base) == ident


def _thresholds(path: Path, **key: str) -> Path:
    write_json_atomic(path, {"format": "skrd4ad-thresholds-v1", "image_threshold": 0.5, "pixel_threshold": None,
                             "settings": {"combine": "sum", "sigma": 4.0, "score": "max", "topk": 100}, **key})
    return path


def test_thresholds_match_by_identity_and_older_files_by_file_sha256(tmp_path: Path) -> None:
    ckpt = {**_ckpt(), "format": "skrd4ad-checkpoint-v1"}
    ckpt[IDENTITY_KEY] = model_identity(ckpt)
    path = tmp_path / "m.pt"
    torch.save(ckpt, path)
    assert identity_of_file(path) == ckpt[IDENTITY_KEY]
    found = find_thresholds(path, _thresholds(tmp_path / "a.json", checkpoint_id=ckpt[IDENTITY_KEY]))
    assert found is not None and found.image == 0.5 and found.checkpoint_id == ckpt[IDENTITY_KEY]
    with pytest.raises(ValueError, match=r"a2.json belongs to another checkpoint \(model sha256:"):
        find_thresholds(path, _thresholds(tmp_path / "a2.json", checkpoint_id="sha256:" + "f" * 64))
    # older thresholds.json: the checkpoint file's sha256, checked against the file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    old = find_thresholds(path, _thresholds(tmp_path / "b.json", checkpoint_sha256=digest))
    assert old is not None and old.checkpoint_id is None and old.checkpoint_sha256 == digest
    with pytest.raises(ValueError, match=r"c.json belongs to another checkpoint \(older file: checkpoint_sha256 "
                                         r"0000.*; evaluate this checkpoint"):
        find_thresholds(path, _thresholds(tmp_path / "c.json", checkpoint_sha256="0" * 64))
    with pytest.raises(ValueError, match=r"d.json is not valid .*checkpoint_id"):
        find_thresholds(path, _thresholds(tmp_path / "d.json"))


def test_source_digest_changes_with_the_code_only(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "params.schema.yaml").write_text("k: 1\n")
    first = source_digest(pkg)
    (pkg / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\0")  # compiled files do not count
    (pkg / "notes.txt").write_text("not source")
    assert source_digest(pkg) == first
    (pkg / "params.schema.yaml").write_text("k: 2\n")
    assert source_digest(pkg) != first
    (pkg / "params.schema.yaml").write_text("k: 1\n")
    assert source_digest(pkg) == first
    (pkg / "sub" / "b.py").rename(pkg / "b.py")  # a moved file is other code
    assert source_digest(pkg) != first


def test_a_relabelled_checkpoint_is_refused(tmp_path: Path) -> None:
    """SK-RD4AD and RD4AD weights share their parameter names, so only the identity training
    recorded can tell a relabelled file: reading it refuses the edit, naming the file."""
    from skrd4ad.checkpoint import CHECKPOINT_FORMAT, read_checkpoint

    ckpt = {**_ckpt(), "format": CHECKPOINT_FORMAT}
    ckpt[IDENTITY_KEY] = model_identity(ckpt)
    torch.save(ckpt, tmp_path / "good.pt")
    assert read_checkpoint(tmp_path / "good.pt")["variant"] == "rd4ad"
    torch.save({**ckpt, "variant": "skrd4ad"}, tmp_path / "relabelled.pt")
    with pytest.raises(ValueError, match=r"relabelled.pt was changed after training: its contents \(variant "
                                         r"'skrd4ad'"):
        read_checkpoint(tmp_path / "relabelled.pt")
    old = {k: v for k, v in ckpt.items() if k != IDENTITY_KEY}  # written before identities: accepted
    torch.save({**old, "variant": "skrd4ad"}, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt")["variant"] == "skrd4ad"
