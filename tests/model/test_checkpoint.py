"""Safetensors reading/writing: zero-copy mmap, dtype conversion, atomic saves, and specific errors."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.weights.checkpoint import CheckpointReader, read_header, save_checkpoint


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.half": torch.randn(3, 3, generator=g).half(),
        "c.bf16": torch.randn(9, generator=g).bfloat16(),
        "d.scalar": torch.tensor(2.5),
        "e.empty": torch.zeros(0, 4),
        "f.int": torch.arange(6).reshape(2, 3),
    }


def test_reader_matches_safetensors_library(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(_tensors(), str(path), metadata={"k": "v"})
    reader = CheckpointReader(path)
    assert reader.metadata == {"k": "v"}
    assert set(reader) == set(_tensors())
    for k, v in _tensors().items():
        assert reader[k].dtype == v.dtype and torch.equal(reader[k], v), k


def test_writer_output_is_readable_by_safetensors_library(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "y.safetensors", _tensors(), {"note": "hi"})
    loaded = load_file(str(path))
    for k, v in _tensors().items():
        assert torch.equal(loaded[k], v), k
    assert CheckpointReader(path).metadata == {"note": "hi"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_reader_view_is_zero_copy_and_load_converts(tmp_path):
    path = save_checkpoint(tmp_path / "z.safetensors", _tensors())
    reader = CheckpointReader(path)
    view = reader["a.weight"]
    assert reader.load("a.weight", torch.float32).data_ptr() == view.data_ptr()  # same memory, no copy
    half = reader.load("a.weight", torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), _tensors()["a.weight"], atol=1e-3)
    view.add_(1.0)  # copy-on-write mapping: writing a view never changes the file
    assert torch.equal(CheckpointReader(path)["a.weight"], _tensors()["a.weight"])


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.safetensors", {"w": torch.ones(3)})

    class Boom:
        dtype = torch.float32
        shape = (2,)

        def numel(self):
            return 2

        def element_size(self):
            return 4

        def detach(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": Boom()})  # type: ignore[dict-item]
    assert torch.equal(CheckpointReader(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_header(tmp_path / "nope.safetensors")


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    with pytest.raises(CheckpointError, match="pickle"):
        read_header(path)
    zpath = tmp_path / "model.pt"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="zip archive"):
        read_header(zpath)


def test_truncated_file_names_missing_bytes(tmp_path):
    path = save_checkpoint(tmp_path / "t.safetensors", {"w": torch.ones(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"truncated.*100 missing"):
        read_header(path)
    path.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(path)
    path.write_bytes(data[:3])
    with pytest.raises(CheckpointError, match="too short"):
        read_header(path)


def test_garbage_and_bad_header(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a .safetensors"):
        read_header(path)
    raw = b"{not json"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="not JSON"):
        read_header(path)
    raw = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    with pytest.raises(CheckpointError, match="should take 16 bytes"):
        read_header(path)


def _raw_file(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_library_refusals_are_explained_per_tensor(tmp_path):
    path = tmp_path / "bad.safetensors"
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    _raw_file(path, {"a": entry, "b": {**entry, "data_offsets": [4, 12]}}, b"\0" * 12)
    with pytest.raises(CheckpointError, match=r"^bad.safetensors: tensors 'a' and 'b' overlap"):
        read_header(path)
    _raw_file(path, {"a": {**entry, "data_offsets": [-8, 0]}}, b"\0" * 8)  # a start inside the JSON header
    with pytest.raises(CheckpointError, match=r"tensor 'a': data_offsets \[-8, 0\] is not a pair of non-negative"):
        read_header(path)
    _raw_file(path, {"__metadata__": ["x"], "a": entry}, b"\0" * 8)
    with pytest.raises(CheckpointError, match="__metadata__ is a list, expected an object of text values"):
        read_header(path)
    raw = json.dumps({"a": entry})[1:-1]
    dup = ("{" + raw + "," + raw + "}").encode()  # the library keeps one of two identical entries: we refuse
    path.write_bytes(struct.pack("<Q", len(dup)) + dup + b"\0" * 8)
    with pytest.raises(CheckpointError, match="names tensor 'a' more than once"):
        read_header(path)
    assert str(tmp_path) not in str(pytest.raises(CheckpointError, read_header, path).value)


def test_fp8_tensors_read_and_upcast(tmp_path):
    values = torch.tensor([0.5, -1.25, 3.0, 448.0])
    path = tmp_path / "f8.safetensors"
    save_file({"e4m3": values.to(torch.float8_e4m3fn), "e5m2": values.to(torch.float8_e5m2)}, str(path))
    reader = CheckpointReader(path)
    assert reader["e4m3"].dtype == torch.float8_e4m3fn and reader["e5m2"].dtype == torch.float8_e5m2
    assert torch.equal(reader.load("e4m3", torch.float32), values)
    assert torch.equal(reader.load("e5m2", torch.float16), values.to(torch.float8_e5m2).half())


def test_unsupported_dtype_is_named_not_malformed(tmp_path):
    path = tmp_path / "e8m0.safetensors"
    _raw_file(path, {"w": {"dtype": "F8_E8M0", "shape": [8], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(CheckpointError, match="dtype F8_E8M0 is not supported yet") as exc:
        read_header(path)
    assert "malformed" not in str(exc.value)
