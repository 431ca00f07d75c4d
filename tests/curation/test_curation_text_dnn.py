"""Per-clip curation scores, text area with OpenCV dnn detectors (EAST / DB): error paths, and the code path with
tiny hand-written ONNX networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comfyui_svd_lab.svd_model.curation.text_dnn import DnnTextDetector
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError

# ---------------------------------------------------------------------------------------------------------------
# OpenCV dnn detectors: error paths, and the code path with tiny hand-written ONNX networks
# ---------------------------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes / str."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


Node = tuple[str, list[str], list[str], dict[str, list[int]]]  # op, inputs, outputs, int-list attributes


def _onnx(
    nodes: list[Node], inits: dict[str, np.ndarray], inputs: dict[str, list[int]], outputs: dict[str, list[int]]
) -> bytes:
    """A minimal ONNX ModelProto (opset 13) in protobuf wire format: nodes, initializers, typed float I/O."""

    def tensor(name: str, a: np.ndarray) -> bytes:
        kind = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}[a.dtype]
        return b"".join(_field(1, d) for d in a.shape) + _field(2, kind) + _field(8, name) + _field(9, a.tobytes())

    def value(name: str, dims: list[int]) -> bytes:
        shape = b"".join(_field(1, _field(1, d)) for d in dims)
        return _field(1, name) + _field(2, _field(1, _field(1, 1) + _field(2, shape)))

    def node(op: str, ins: list[str], outs: list[str], attrs: dict[str, list[int]]) -> bytes:
        fields = [_field(1, i) for i in ins] + [_field(2, o) for o in outs] + [_field(4, op)]
        fields += [
            _field(5, _field(1, k) + _field(20, 7) + b"".join(_field(8, v) for v in vs))  # INTS attribute
            for k, vs in attrs.items()
        ]
        return b"".join(fields)

    graph = b"".join(_field(1, node(*n)) for n in nodes) + _field(2, "g")
    graph += b"".join(_field(5, tensor(k, v)) for k, v in inits.items())
    graph += b"".join(_field(11, value(k, v)) for k, v in inputs.items())
    graph += b"".join(_field(12, value(k, v)) for k, v in outputs.items())
    return _field(1, 8) + _field(8, _field(1, "") + _field(2, 13)) + _field(7, graph)


def _brightness(source: str, out: str) -> tuple[list[Node], dict[str, np.ndarray]]:
    """Conv 1x1 + sigmoid: ~1 where the (scaled 0..1) input is bright, ~0 where dark."""
    k = 20.0
    return [("Conv", [source, "w", "b"], ["z"], {}), ("Sigmoid", ["z"], [out], {})], {
        "w": np.full((1, 3, 1, 1), k / 3, np.float32),
        "b": np.array([-k / 2], np.float32),
    }


def _bright_frame() -> np.ndarray:
    frame = np.zeros((256, 512, 3), np.uint8)
    frame[96:160, 128:384] = 255
    return frame


def test_dnn_detector_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        DnnTextDetector(tmp_path / "missing.onnx")
    (tmp_path / "model.pth").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match=r"\.onnx, \.pb"):
        DnnTextDetector(tmp_path / "model.pth")
    (tmp_path / "broken.onnx").write_bytes(b"this is not a network")
    with pytest.raises(CheckpointError, match="could not load"):
        DnnTextDetector(tmp_path / "broken.onnx")
    with pytest.raises(ConfigError, match="kind"):
        DnnTextDetector(tmp_path / "broken.onnx", kind="craft")  # type: ignore[arg-type]


def test_dnn_db_detector_runs(tmp_path: Path) -> None:
    nodes, inits = _brightness("x", "p")
    nodes.append(("Reshape", ["p", "s"], ["y"], {}))  # OpenCV's DB decoder wants a 2-D (H, W) map
    inits["s"] = np.array([128, 256], np.int64)
    path = tmp_path / "db_tiny.onnx"
    path.write_bytes(_onnx(nodes, inits, {"x": [1, 3, 128, 256]}, {"y": [128, 256]}))
    det = DnnTextDetector(path, input_side=256, unclip_ratio=1.0)
    assert det.kind == "db" and det.input_size(256, 512) == (256, 128)
    boxes = det.detect(_bright_frame())
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert abs(x0 - 128) <= 40 and abs(x1 - 384) <= 40 and abs(y0 - 96) <= 40 and abs(y1 - 160) <= 40
    assert det.detect(np.zeros((256, 512, 3), np.uint8)) == []


def test_dnn_east_detector_runs(tmp_path: Path) -> None:
    nodes, inits = _brightness("x4", "score")
    nodes.insert(0, ("AveragePool", ["x"], ["x4"], {"kernel_shape": [4, 4], "strides": [4, 4]}))
    nodes.append(("Conv", ["x4", "gw", "gb"], ["geometry"], {}))  # every cell: a box 8 px to each side, angle 0
    inits.update({"gw": np.zeros((5, 3, 1, 1), np.float32), "gb": np.array([8, 8, 8, 8, 0], np.float32)})
    path = tmp_path / "east_tiny.onnx"
    outputs = {"geometry": [1, 5, 32, 64], "score": [1, 1, 32, 64]}
    path.write_bytes(_onnx(nodes, inits, {"x": [1, 3, 128, 256]}, outputs))
    det = DnnTextDetector(path, input_side=256, confidence=0.5, nms=0.3)
    assert det.kind == "east"
    boxes = det.detect(_bright_frame())
    assert boxes, "no EAST detections on a bright rectangle"
    for x0, y0, x1, y1 in boxes:
        assert 128 - 24 <= x0 < x1 <= 384 + 24 and 96 - 24 <= y0 < y1 <= 160 + 24
    assert det.detect(np.zeros((256, 512, 3), np.uint8)) == []


def test_dnn_detector_input_size_keeps_aspect(tmp_path: Path) -> None:
    nodes, inits = _brightness("x", "p")
    path = tmp_path / "east_like.onnx"
    path.write_bytes(_onnx(nodes, inits, {"x": [1, 3, 64, 64]}, {"p": [1, 1, 64, 64]}))
    det = DnnTextDetector(path, kind="db", input_side=736)
    assert det.input_size(576, 1024) == (736, 416)
    assert det.input_size(1080, 720) == (480, 736)
    assert all(v % 32 == 0 for v in det.input_size(333, 777))
