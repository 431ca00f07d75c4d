"""Malformed checkpoints, made at run time from a tiny valid one: each is one specific CheckpointError.

Every case goes through ``load_bundle`` and, where the problem is visible without reading weight values,
through the ``svd-lab info`` code path too; a case passes only if a CheckpointError with the case's
distinctive message part is raised (any other exception type fails the test), names the file, and does
not echo a huge value back. Nothing may be written outside the sandbox's folders and no process started.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from comfyui_svd_lab.cli import _cmd_info, main
from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

NAME = "fuzz_case.safetensors"
_TORCH = {"F32": torch.float32, "F16": torch.float16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass
class Tiny:
    """A parsed tiny checkpoint: the header table (file order), the metadata and each tensor's bytes."""

    entries: dict[str, dict]
    metadata: dict[str, str]
    blobs: dict[str, bytes]

    @classmethod
    def parse(cls, data: bytes) -> Tiny:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        metadata = header.pop("__metadata__", {})
        body = data[8 + n:]
        blobs = {k: body[e["data_offsets"][0]:e["data_offsets"][1]] for k, e in header.items()}
        return cls(header, metadata, blobs)

    def copy(self) -> Tiny:
        return Tiny(json.loads(json.dumps(self.entries)), dict(self.metadata), dict(self.blobs))

    def key(self, predicate: Callable[[str, list[int]], bool]) -> str:
        return next(k for k, e in self.entries.items() if predicate(k, e["shape"]))

    def tensor(self, key: str) -> torch.Tensor:
        entry = self.entries[key]
        return torch.frombuffer(bytearray(self.blobs[key]), dtype=_TORCH[entry["dtype"]]).reshape(entry["shape"])

    def set_tensor(self, key: str, value: torch.Tensor, dtype: str | None = None) -> None:
        dtype = dtype or self.entries[key]["dtype"]
        value = value.to(_TORCH[dtype]).contiguous()
        self.entries[key] = {"dtype": dtype, "shape": list(value.shape), "data_offsets": [0, 0]}
        self.blobs[key] = value.reshape(-1).view(torch.uint8).numpy().tobytes()

    def header(self) -> dict:
        """A fresh header with contiguous offsets in file order (what a correct writer produces)."""
        out: dict = {"__metadata__": dict(self.metadata)} if self.metadata else {}
        offset = 0
        for key, entry in self.entries.items():
            size = len(self.blobs[key])
            out[key] = {**entry, "data_offsets": [offset, offset + size]}
            offset += size
        return out

    def data(self) -> bytes:
        return b"".join(self.blobs[k] for k in self.entries)

    def build(self, header: dict | None = None, data: bytes | None = None) -> bytes:
        return pack(json.dumps(header if header is not None else self.header()).encode(),
                    self.data() if data is None else data)


def pack(raw_header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(raw_header) if length is None else length) + raw_header + data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", seed=4)
    return Tiny.parse(path.read_bytes())


# --- the cases: (id, make(tiny) -> file bytes, distinctive message part, also through `info`) -------------------

def _edit_header(edit: Callable[[dict, Tiny], None]) -> Callable[[Tiny], bytes]:
    def make(t: Tiny) -> bytes:
        header = t.header()
        edit(header, t)
        return t.build(header)
    return make


def _edit_tiny(edit: Callable[[Tiny], None]) -> Callable[[Tiny], bytes]:
    def make(t: Tiny) -> bytes:
        t = t.copy()
        edit(t)
        return t.build()
    return make


def _first(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _second(header: dict) -> str:
    return [k for k in header if k != "__metadata__"][1]


def _set(field: str, value: object, which: Callable[[dict], str] = _first) -> Callable[[Tiny], bytes]:
    def edit(h: dict, t: Tiny) -> None:
        h[which(h)][field] = value
    return _edit_header(edit)


def _raw_header(raw: bytes) -> Callable[[Tiny], bytes]:
    return lambda t: pack(raw, t.data())


def _dup_identical(t: Tiny) -> bytes:
    text = json.dumps(t.header())
    key = _first(t.header())
    first = json.dumps({key: t.header()[key]})[1:-1]
    return pack(("{" + first + "," + text[1:]).encode(), t.data())


def _dup_different(t: Tiny) -> bytes:
    header = t.header()
    key, other = _first(header), _second(header)
    text = json.dumps(header)
    twin = json.dumps({key: header[other]})[1:-1]  # a second entry under the first key, with the 2nd's range
    return pack(("{" + twin + "," + text[1:]).encode(), t.data())


def _overlap(h: dict, t: Tiny) -> None:
    key, other = _first(h), _second(h)
    size = h[other]["data_offsets"][1] - h[other]["data_offsets"][0]
    h[other]["data_offsets"] = [h[key]["data_offsets"][0], h[key]["data_offsets"][0] + size]


def _gap(t: Tiny) -> bytes:
    header = t.header()
    last = list(header)[-1]
    header[last]["data_offsets"] = [o + 8 for o in header[last]["data_offsets"]]
    data = t.data()
    size = len(t.blobs[last])
    return pack(json.dumps(header).encode(), data[:len(data) - size] + b"\0" * 8 + data[len(data) - size:])


def _start_into_header(h: dict, t: Tiny) -> None:
    key = _first(h)
    start, end = h[key]["data_offsets"]
    h[key]["data_offsets"] = [start - 64, end - 64]


def _start_far_before(h: dict, t: Tiny) -> None:
    key = _first(h)
    start, end = h[key]["data_offsets"]
    h[key]["data_offsets"] = [start - 10**12, end - 10**12]


def _bigger_shape(h: dict, t: Tiny) -> None:
    key = _first(h)
    h[key]["shape"] = [*h[key]["shape"], 2]


def _f32_key(t: Tiny, rank: int = 1) -> str:
    return t.key(lambda k, s: len(s) == rank and t.entries[k]["dtype"] == "F32" and math.prod(s) >= 4)


def _as_dtype(name: str) -> Callable[[Tiny], None]:
    """Relabel one F32 tensor's bytes as `name` (1 byte per element: four times as many elements)."""
    def edit(t: Tiny) -> None:
        key = _f32_key(t)
        t.entries[key] = {"dtype": name, "shape": [len(t.blobs[key])], "data_offsets": [0, 0]}
    return edit


def _int_weight(t: Tiny) -> None:
    key = "first_stage_model.decoder.mid.attn_1.q.weight"
    t.entries[key]["dtype"] = "I32"  # same width as F32: only the expected dtype can tell


def _transposed(t: Tiny) -> None:
    key = t.key(lambda k, s: k.startswith("model.diffusion_model.") and "ff.net.2.weight" in k and s[0] != s[1])
    t.set_tensor(key, t.tensor(key).t())


def _flattened_conv(t: Tiny) -> None:
    key = t.key(lambda k, s: k.startswith("first_stage_model.decoder.up.") and "conv1.weight" in k and len(s) == 4)
    t.set_tensor(key, t.tensor(key).reshape(t.tensor(key).shape[0], -1))


def _rename(old: str, new: str) -> Callable[[Tiny], None]:
    def edit(t: Tiny) -> None:
        t.entries = {(new if k == old else k): v for k, v in t.entries.items()}
        t.blobs[new] = t.blobs.pop(old)
    return edit


def _drop(prefix: str) -> Callable[[Tiny], None]:
    def edit(t: Tiny) -> None:
        for key in [k for k in t.entries if k.startswith(prefix)]:
            del t.entries[key], t.blobs[key]
    return edit


def _zero_width(t: Tiny) -> None:
    t.set_tensor("model.diffusion_model.input_blocks.0.0.weight", torch.zeros(0, 8, 3, 3))


def _flat_marker_conv(t: Tiny) -> None:
    key = "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight"
    t.set_tensor(key, t.tensor(key).reshape(-1))


def _poison(keys: int, value: float) -> Callable[[Tiny], None]:
    def edit(t: Tiny) -> None:
        chosen = [k for k, e in t.entries.items() if k.startswith("model.diffusion_model.") and len(e["shape"]) > 1]
        for key in chosen[:keys]:
            v = t.tensor(key).clone()
            v.view(-1)[0] = value
            t.set_tensor(key, v)
    return edit


CASES: list[tuple[str, Callable[[Tiny], bytes], str, bool]] = [
    # file level (the prefix checks and the safetensors library)
    ("empty-file", lambda t: b"", r"is empty \(0 bytes\)", True),
    ("three-bytes", lambda t: b"abc", "too short to be a .safetensors file", True),
    ("header-length-beyond-file", lambda t: pack(b"{}", length=4096), "truncated: its header needs 4104 bytes", True),
    ("header-length-huge", lambda t: pack(b"{}", length=2**40), r"not a .safetensors file \(header length field", True),
    ("python-pickle", lambda t: pickle.dumps({"state_dict": {}}, protocol=4) + b"\0" * 64, "Python pickle", True),
    ("zip-archive", None, "zip archive", True),  # made in the test (zipfile needs a path)
    ("header-not-utf8", _raw_header(b'{"\xff\xfe": 1}'), "header is not UTF-8 text", True),
    ("header-not-json", _raw_header(b"{not json"), "header is not JSON", True),
    ("header-empty-length-zero", lambda t: pack(b""), "header is not JSON", True),
    ("header-is-list", _raw_header(b"[1, 2, 3]"), "header is not a JSON object", True),
    ("header-is-number", _raw_header(b"12345"), "header is not a JSON object", True),
    ("header-nested-100000", _raw_header(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested too deeply", True),
    ("header-nested-300", _raw_header(b'{"a":' + b"[" * 300 + b"]" * 300 + b"}"), "nested too deeply", True),
    ("metadata-list", _edit_header(lambda h, t: h.update(__metadata__=["a", "b"])), "__metadata__ is a list", True),
    ("metadata-string", _edit_header(lambda h, t: h.update(__metadata__="x" * 10_000)), "__metadata__ is a string",
     True),
    ("metadata-number", _edit_header(lambda h, t: h.update(__metadata__=7)), "__metadata__ is a number", True),
    ("metadata-value-number", _edit_header(lambda h, t: h.update(__metadata__={"k": 1})), r"__metadata__\['k'\]", True),
    ("duplicate-key-identical", _dup_identical, "more than once", True),
    ("duplicate-key-other-range", _dup_different, "more than once", True),
    ("entry-not-object", _edit_header(lambda h, t: h.update({_first(h): 5})), "malformed header entry", True),
    ("entry-missing-dtype", _edit_header(lambda h, t: h[_first(h)].pop("dtype")), "has no 'dtype' field", True),
    ("dtype-unknown", _set("dtype", "Q4_K"), "'Q4_K' is not a safetensors dtype", True),
    ("dtype-not-string", _set("dtype", 32), "is not a safetensors dtype", True),
    ("start-into-header", _edit_header(_start_into_header), "not a pair of non-negative byte offsets", True),
    ("start-far-before-file", _edit_header(_start_far_before), "not a pair of non-negative byte offsets", True),
    ("offsets-three", _set("data_offsets", [0, 4, 8]), "not a pair of non-negative byte offsets", True),
    ("offsets-reversed", _set("data_offsets", [8, 0]), "end before they start", True),
    ("offsets-beyond-u64", _set("data_offsets", [2**64, 2**64 + 4]), "not a pair of non-negative byte offsets", True),
    ("dim-negative", _set("shape", [-4, 8]), "not a list of non-negative integers", True),
    ("dim-float", _set("shape", [4.0]), "not a list of non-negative integers", True),
    ("dim-bool", _set("shape", [True]), "not a list of non-negative integers", True),
    ("shape-overflows", _set("shape", [2**62, 2**62]), "too large to be stored", True),
    ("shape-needs-more-bytes", _edit_header(_bigger_shape), "should take", True),
    ("ranges-overlap", _edit_header(_overlap), "overlap", True),
    ("unused-gap", _gap, "unused bytes before tensor", True),
    ("data-truncated", lambda t: t.build()[:-100], r"truncated: .*\(100 missing\)", True),
    ("data-trailing-bytes", lambda t: t.build() + b"\0" * 16, "16 bytes after its last tensor", True),
    ("dtype-f8-e8m0", _edit_tiny(_as_dtype("F8_E8M0")), "dtype F8_E8M0 is not supported yet", True),
    ("dtype-f4", _edit_tiny(lambda t: t.entries[_f32_key(t)].update(
        dtype="F4", shape=[2 * len(t.blobs[_f32_key(t)])])), "dtype F4 is not supported yet", True),
    # model level (what only the architecture inferred from the file can tell)
    ("weight-as-i32", _edit_tiny(_int_weight), "is I32, expected a floating-point dtype", True),
    ("weight-as-u8", _edit_tiny(_as_dtype("U8")), "is U8, expected a floating-point dtype", True),
    ("weight-transposed", _edit_tiny(_transposed), "same number of elements in another layout", True),
    ("conv-flattened", _edit_tiny(_flattened_conv), "same number of elements in another layout", True),
    ("vae-key-renamed", _edit_tiny(_rename("first_stage_model.decoder.mid.attn_1.q.weight",
                                           "first_stage_model.decoder.mid.attn_1.query.weight")),
     r"1 missing key\(s\): first_stage_model\.decoder\.mid\.attn_1\.q\.weight", True),
    ("vae-conv-out-renamed", _edit_tiny(_rename("first_stage_model.decoder.conv_out.weight",
                                                "first_stage_model.decoder.conv_last.weight")),
     "missing 'first_stage_model.decoder.conv_out.weight'", True),
    ("vae-removed", _edit_tiny(_drop("first_stage_model.")), "missing the first-stage VAE", True),
    ("unet-marker-removed", _edit_tiny(_drop("model.diffusion_model.input_blocks.1.0.time_stack.")),
     "not an SVD-family checkpoint", True),
    ("unet-width-zero", _edit_tiny(_zero_width), "a width of 0", True),
    ("unet-conv-one-dimensional", _edit_tiny(_flat_marker_conv), r"expected at least 3 dimension\(s\)", True),
    ("extra-unknown-key", _edit_tiny(lambda t: t.set_tensor("model_ema.decay", torch.tensor(0.999), "F32")),
     r"unexpected key\(s\): model_ema\.decay", True),
    # weight values (only a load reads them)
    ("one-nan-weight", _edit_tiny(_poison(1, float("nan"))), r"1 tensor\(s\) hold NaN or Inf values: .*\(1 of ", False),
    ("five-inf-weights", _edit_tiny(_poison(5, float("inf"))), r"5 tensor\(s\) hold NaN or Inf.* and 2 more", False),
]


def _write(sandbox, case_id: str, make: Callable[[Tiny], bytes] | None, tiny: Tiny) -> Path:
    path = sandbox.folder("models") / NAME
    if make is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    else:
        path.write_bytes(make(tiny))
    return path


def _check(exc: pytest.ExceptionInfo[CheckpointError], path: Path) -> None:
    text = str(exc.value)
    assert NAME in text and str(path.parent) not in text, text  # the file by its name, not its server path
    assert len(text) < 1200, f"message too long ({len(text)} chars)"
    assert "x" * 200 not in text


@pytest.mark.parametrize(("make", "message", "via_info"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_checkpoint_is_one_specific_error(sandbox, no_process, tiny, make, message, via_info):
    path = _write(sandbox, "", make, tiny)
    with pytest.raises(CheckpointError, match=message) as exc:
        load_bundle(path)
    _check(exc, path)
    if via_info:
        with pytest.raises(CheckpointError, match=message) as exc:
            _cmd_info(argparse.Namespace(checkpoint=str(path)))
        _check(exc, path)


def test_info_command_exits_2_with_one_line(sandbox, no_process, tiny, capsys):
    path = sandbox.folder("models") / NAME
    path.write_bytes(_edit_header(_overlap)(tiny))
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svd-lab: error: ") and "overlap" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_missing_folder_and_fifo_are_named(sandbox, no_process):
    models = sandbox.folder("models")
    with pytest.raises(CheckpointError, match="checkpoint not found: nope.safetensors"):
        load_bundle(models / "nope.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        _cmd_info(argparse.Namespace(checkpoint=str(models / "nope.safetensors")))
    (models / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="^dir.safetensors is a folder but not a diffusers SVD pipeline"):
        _cmd_info(argparse.Namespace(checkpoint=str(models / "dir.safetensors")))
    if hasattr(os, "mkfifo"):
        os.mkfifo(models / "pipe.safetensors")
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_bundle(models / "pipe.safetensors")  # refused without opening (opening a FIFO would block)


def test_shard_index_cannot_name_a_file_outside_its_folder(sandbox, no_process, tiny):
    root = sandbox.folder("models") / "svd_diffusers"
    for sub in ("unet", "vae", "image_encoder"):
        (root / sub).mkdir(parents=True)
    (sandbox.outside / "stolen.safetensors").write_bytes(tiny.build())
    sandbox.mark()
    index = {"weight_map": {"conv_in.weight": "../../../outside/stolen.safetensors"}}
    (root / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="is not a file name beside the index"):
        load_bundle(root)
    (root / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text("[not json")
    with pytest.raises(CheckpointError, match="not a readable shard index"):
        load_bundle(root)


# --- controls: what must still load ------------------------------------------------------------------------------

def test_valid_tiny_checkpoint_loads_and_info_reports_it(sandbox, no_process, tiny, capsys):
    path = sandbox.folder("models") / NAME
    path.write_bytes(tiny.build())
    bundle = load_bundle(path)
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(bundle.model.official_state_dict()[key], tiny.tensor(key))
    assert _cmd_info(argparse.Namespace(checkpoint=str(path))) == 0
    assert "family: svd" in capsys.readouterr().out


def test_non_finite_weights_load_when_allowed(sandbox, no_process, tiny, caplog):
    path = sandbox.folder("models") / NAME
    path.write_bytes(_edit_tiny(_poison(1, float("nan")))(tiny))
    with caplog.at_level(logging.WARNING, logger="comfyui_svd_lab.svd_model.weights.loader"):
        bundle = load_bundle(path, allow_non_finite=True)
    assert "hold NaN or Inf" in caplog.text and "loading it anyway" in caplog.text
    assert any(not torch.isfinite(p).all() for p in bundle.model.unet.parameters())


def test_non_finite_weight_in_a_zero_copy_load_is_found(sandbox, no_process, tiny):
    half = tiny.copy()
    for key in list(half.entries):
        half.set_tensor(key, half.tensor(key), "F16")
    _poison(1, float("inf"))(half)
    path = sandbox.folder("models") / NAME
    path.write_bytes(half.build())
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) hold NaN or Inf"):
        load_bundle(path, dtype=torch.float16)  # the UNet would be views of the file: no copy to check during


@pytest.mark.parametrize("fp8", ["F8_E4M3", "F8_E5M2"])
def test_fp8_checkpoint_loads_upcast(sandbox, no_process, tiny, fp8):
    small = tiny.copy()
    for key in list(small.entries):
        small.set_tensor(key, small.tensor(key), fp8)
    path = sandbox.folder("models") / NAME
    path.write_bytes(small.build())
    bundle = load_bundle(path, dtype=torch.bfloat16)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    weight = bundle.model.official_state_dict()[key]
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, tiny.tensor(key).to(_TORCH[fp8]).to(torch.bfloat16))
    vae = bundle.model.official_state_dict()["first_stage_model.decoder.conv_out.weight"]
    assert vae.dtype == torch.float32  # the VAEs are upcast to their own dtype
    assert _cmd_info(argparse.Namespace(checkpoint=str(path))) == 0
