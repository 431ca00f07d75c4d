"""Tiny ONNX shot detectors built at test time (the onnx package's helper API; no weights are downloaded).

:func:`diff_model` writes a network with the TransNetV2 contract whose logit for frame t is
``scale * (mean |frame[t + 1] - frame[t]| - bias)`` (0 for the window's last frame): a known detector that
fires on the last frame of the old shot at a hard cut, as TransNetV2's single-frame head does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the learned shot detector's tests need onnx: pip install -e .[test]")
pytest.importorskip("onnxruntime", reason="the learned shot detector needs onnxruntime: pip install onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

BIAS, SCALE = 20.0, 0.5


def diff_model(path: str | Path, *, channels_last: bool = True, float_input: bool = False, window: int | None = None,
               batch: int | None = None, many: bool = True, output_rank: int = 3) -> Path:
    """Write the frame-difference detector to ``path``: input ``(batch, frames, 27, 48, 3)`` (``channels_last``)
    or ``(batch, 3, frames, 27, 48)``, uint8 or float; ``window`` / ``batch`` None = free dimensions; outputs
    ``single`` and (``many``) ``many_hot``, ``(batch, frames, 1)`` or (``output_rank`` 2) ``(batch, frames)``."""
    t = window or "frames"
    b = batch or "batch"
    shape = [b, t, 27, 48, 3] if channels_last else [b, 3, t, 27, 48]
    time_axis, pixel_axes = (1, [2, 3, 4]) if channels_last else (2, [1, 3, 4])
    ints = {"one": [1], "big": [2**62], "zero": [0], "minus": [-1], "axis": [time_axis], "pixels": pixel_axes,
            "pads": [0, 0, 0, 1]}
    init = [helper.make_tensor(k, TensorProto.INT64, [len(v)], v) for k, v in ints.items()]
    init += [helper.make_tensor("bias", TensorProto.FLOAT, [], [BIAS]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [SCALE])]
    nodes = [
        helper.make_node("Cast", ["frames"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["x", "one", "big", "axis"], ["after"]),  # frames 1..T-1
        helper.make_node("Slice", ["x", "zero", "minus", "axis"], ["before"]),  # frames 0..T-2
        helper.make_node("Sub", ["after", "before"], ["d"]),
        helper.make_node("Abs", ["d"], ["ad"]),
        helper.make_node("ReduceMean", ["ad", "pixels"], ["m"], keepdims=0),  # (b, T-1)
        helper.make_node("Pad", ["m", "pads"], ["mp"]),  # (b, T): 0 for the last frame
        helper.make_node("Sub", ["mp", "bias"], ["c"]),
        helper.make_node("Mul", ["c", "scale"], ["logit"]),
    ]
    out_shape = [b, t, 1] if output_rank == 3 else [b, t]
    if output_rank == 3:
        nodes.append(helper.make_node("Unsqueeze", ["logit", "minus"], ["single"]))
    else:
        nodes.append(helper.make_node("Identity", ["logit"], ["single"]))
    outputs = [helper.make_tensor_value_info("single", TensorProto.FLOAT, out_shape)]
    if many:
        nodes.append(helper.make_node("Identity", ["single"], ["many_hot"]))
        outputs.append(helper.make_tensor_value_info("many_hot", TensorProto.FLOAT, out_shape))
    kind = TensorProto.FLOAT if float_input else TensorProto.UINT8
    graph = helper.make_graph(nodes, "frame_difference", [helper.make_tensor_value_info("frames", kind, shape)],
                              outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def image_model(path: str | Path) -> Path:
    """An image classifier's signature (1, 3, 32, 32) -> (1, 10): not a shot detector."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3 * 32 * 32, 10], np.zeros(3 * 32 * 32 * 10, np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])
    nodes = [helper.make_node("Reshape", ["image", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"],
                                                                                           ["logits"])]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return Path(path)


def reference_probabilities(rgb: np.ndarray) -> np.ndarray:
    """What :func:`diff_model` gives for every frame of a whole video ``rgb`` uint8 (n, 27, 48, 3), computed
    directly: the last frame's successor is a copy of it (the end padding)."""
    x = rgb.astype(np.float32)
    d = np.zeros(len(x), np.float32)
    d[:-1] = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))
    return 1.0 / (1.0 + np.exp(-SCALE * (d - BIAS)))
