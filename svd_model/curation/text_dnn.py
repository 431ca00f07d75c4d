"""Text detection with a user-supplied DB or EAST network through OpenCV's dnn text-detection API
(:class:`DnnTextDetector`, a :class:`~.text.TextDetector`); nothing is downloaded. The default detector needs
no weights: :class:`~.text.ClassicTextDetector`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..errors import CheckpointError, ConfigError
from .text import Box, check_rgb

_DNN_SUFFIXES = (".onnx", ".pb")
#: Input normalisation of the OpenCV text-detection samples: (scale, BGR mean, swap R and B).
_DNN_INPUT = {
    "db": (1.0 / 255.0, (122.67891434, 116.66876762, 104.00698793), False),
    "east": (1.0, (123.68, 116.78, 103.94), True),
}


class DnnTextDetector:
    """Text detection with a user-supplied network through OpenCV dnn (``cv2.dnn_TextDetectionModel_DB`` or
    ``cv2.dnn_TextDetectionModel_EAST``); nothing is downloaded.

    model_path: an ONNX (``.onnx``) or TensorFlow (``.pb``) file, e.g. OpenCV's DB_TD500_resnet50.onnx /
    DB_IC15_resnet18.onnx or frozen_east_text_detection.pb. kind: "db", "east" or "auto" (EAST when the file
    name contains "east", else DB). Frames are resized so the long side is `input_side` (both sides multiples
    of 32, aspect kept). OpenCV's DB decoder expects a 2-D (H, W) probability map as the network output.
    Boxes are the axis-aligned bounds of the detected quadrilaterals. Not thread-safe (the input size is set
    per frame): give each thread its own instance.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        kind: Literal["auto", "db", "east"] = "auto",
        input_side: int = 736,
        binary_threshold: float = 0.3,
        polygon_threshold: float = 0.5,
        unclip_ratio: float = 2.0,
        confidence: float = 0.5,
        nms: float = 0.4,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise CheckpointError(
                f"text-detection model not found: {path}; give the path of a DB or EAST network you downloaded "
                "(.onnx or .pb; nothing is fetched automatically), or use the built-in ClassicTextDetector"
            )
        if path.suffix.lower() not in _DNN_SUFFIXES:
            raise CheckpointError(
                f"unsupported text-detection model file {path.name!r}: expected one of {', '.join(_DNN_SUFFIXES)} "
                "(an ONNX or TensorFlow DB / EAST network)"
            )
        if kind == "auto":
            kind = "east" if "east" in path.name.lower() else "db"
        if kind not in _DNN_INPUT:
            raise ConfigError(f"unknown text-detection network kind {kind!r}; choose from auto, db, east")
        if input_side < 32:
            raise ConfigError(f"input_side must be >= 32, got {input_side}")
        self.kind, self.path, self.input_side = kind, path, int(input_side)
        try:
            if kind == "db":
                model = cv2.dnn_TextDetectionModel_DB(str(path))
                model.setBinaryThreshold(binary_threshold)
                model.setPolygonThreshold(polygon_threshold)
                model.setUnclipRatio(unclip_ratio)
                model.setMaxCandidates(200)
            else:
                model = cv2.dnn_TextDetectionModel_EAST(str(path))
                model.setConfidenceThreshold(confidence)
                model.setNMSThreshold(nms)
        except (cv2.error, SystemError) as exc:
            raise CheckpointError(
                f"OpenCV could not load {path} as a {kind.upper()} text-detection network: {_first_line(exc)}"
            ) from None
        scale, mean, swap_rb = _DNN_INPUT[kind]
        model.setInputScale(scale)
        model.setInputMean(mean)
        model.setInputSwapRB(swap_rb)
        self._model = model

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input (width, height): long side `input_side`, aspect kept, both multiples of 32."""
        scale = self.input_side / max(height, width)
        return max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32)

    def detect(self, rgb: np.ndarray) -> list[Box]:
        rgb = check_rgb(rgb)
        height, width = rgb.shape[:2]
        self._model.setInputSize(self.input_size(height, width))
        try:
            quads, _ = self._model.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        except (cv2.error, SystemError) as exc:
            raise CheckpointError(
                f"{self.path.name} ran but its output does not fit OpenCV's {self.kind.upper()} decoder "
                f"({_first_line(exc)}); DB needs one (H, W) probability map, EAST a (1, 5, h, w) geometry and a "
                "(1, 1, h, w) score output"
            ) from None
        boxes = []
        for quad in quads:
            pts = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
            x0, y0 = np.floor(pts.min(0)).astype(int)
            x1, y1 = np.ceil(pts.max(0)).astype(int)
            boxes.append((max(0, x0), max(0, y0), min(width, x1), min(height, y1)))
        return [b for b in boxes if b[2] > b[0] and b[3] > b[1]]


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
