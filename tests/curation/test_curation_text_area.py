"""Per-clip curation scores, text area: the classic detector measured on synthetic frames with known text boxes,
on textless textures and on real footage; the text-area API (union of boxes, clip reductions, key frames)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from comfyui_svd_lab.svd_model.curation.text import (
    ClassicTextConfig,
    ClassicTextDetector,
    TextDetector,
    boxes_area_ratio,
    clip_text_score,
    key_frame_indices,
    merge_boxes,
    text_area_ratio,
)
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from conftest import SHARED

VIDEO = SHARED / "data" / "issue-195-aspect-ratio.mp4"
H, W = 576, 1024

# ---------------------------------------------------------------------------------------------------------------
# Synthetic frames: textless backgrounds / textures, and rendered text with known ink boxes
# ---------------------------------------------------------------------------------------------------------------

WORDS = (
    "the quick brown fox jumps over lazy dog news today live sale open coffee shop river city breaking "
    "weather report music night road hotel station market street garden welcome summer winter final"
).split()


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth 1/f-like noise, zero mean, unit std."""
    out = np.zeros((h, w), np.float32)
    for octave in range(5):
        cells = 4 * 2**octave
        small = rng.standard_normal((cells, cells * w // h + 1)).astype(np.float32)
        out += 0.55**octave * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / (out.std() + 1e-6)


def background(rng: np.random.Generator, kind: str, h: int = H, w: int = W) -> np.ndarray:
    """(h, w, 3) uint8 textless image."""
    img = np.zeros((h, w, 3), np.float32)
    if kind == "gradient":
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 1), np.float32)
        img = rng.uniform(0, 255, 3) + (rng.uniform(0, 255, 3) - rng.uniform(0, 255, 3)) * t
    elif kind == "clouds":
        img = rng.uniform(40, 215, 3) + 35 * np.stack([_noise(rng, h, w) for _ in range(3)], -1)
    elif kind == "foliage":  # dense random leaves
        img += rng.uniform(20, 80, 3)
        for _ in range(h * w // 250):
            color = (rng.uniform(20, 110), rng.uniform(70, 200), rng.uniform(10, 90))
            cv2.ellipse(
                img,
                (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
                (int(rng.uniform(3, 18)), int(rng.uniform(2, 9))),
                rng.uniform(0, 180),
                0,
                360,
                color,
                -1,
            )
        img = cv2.GaussianBlur(img, (0, 0), 0.8)
    elif kind == "branches":  # thin random lines
        img += rng.uniform(120, 220, 3) + 20 * _noise(rng, h, w)[..., None]
        for _ in range(h * w // 900):
            x, y, a, n = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, np.pi), rng.uniform(8, 60)
            cv2.line(
                img,
                (int(x), int(y)),
                (int(x + n * np.cos(a)), int(y + n * np.sin(a))),
                tuple(float(v) for v in rng.uniform(10, 90, 3)),
                int(rng.integers(1, 4)),
                cv2.LINE_AA,
            )
    elif kind == "gravel":
        img += rng.uniform(90, 160)
        for _ in range(h * w // 120):
            g = rng.uniform(40, 230)
            cv2.circle(
                img,
                (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
                int(rng.uniform(2, 7)),
                (g, g * rng.uniform(0.85, 1), g * rng.uniform(0.7, 1)),
                -1,
            )
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
    elif kind == "windows":  # a facade: rows of identical dark windows
        img += rng.uniform(90, 200, 3) + 12 * _noise(rng, h, w)[..., None]
        ww, wh = rng.uniform(6, 30), rng.uniform(8, 36)
        sx, sy = ww * rng.uniform(1.3, 2.5), wh * rng.uniform(1.3, 2.5)
        color = tuple(float(v) for v in rng.uniform(10, 80, 3))
        for y in np.arange(rng.uniform(0, sy), h, sy):
            for x in np.arange(rng.uniform(0, sx), w, sx):
                if rng.random() < 0.85:
                    cv2.rectangle(img, (int(x), int(y)), (int(x + ww), int(y + wh)), color, -1)
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
    else:
        raise ValueError(kind)
    return np.clip(img, 0, 255).astype(np.uint8)


def _luma(c: tuple[int, ...] | np.ndarray) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrasting(rng: np.random.Generator, ref: tuple[int, ...] | np.ndarray) -> tuple[int, int, int]:
    while True:
        c = tuple(int(v) for v in rng.uniform(0, 255, 3))
        if abs(_luma(c) - _luma(ref)) >= 90:
            return c  # type: ignore[return-value]


def _ink_box(text: str, xy: tuple[int, int], font: ImageFont.ImageFont, stroke: int) -> tuple[int, int, int, int]:
    layer = Image.new("L", (W, H), 0)
    ImageDraw.Draw(layer).text(xy, text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    ys, xs = np.nonzero(np.asarray(layer) > 96)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


SIZES = {"subtitle": (18, 40), "boxed": (14, 34), "title": (40, 110), "plain": (14, 30)}


def text_frame(rng: np.random.Generator, kind: str, items: int = 2) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """A background with `items` text lines (outlined subtitles, text on a sign, titles, plain text in a
    contrasting colour) in PIL's default font at several sizes; returns (rgb, ink box of every line)."""
    img = Image.fromarray(background(rng, kind))
    draw = ImageDraw.Draw(img, "RGBA")
    truth: list[tuple[int, ...]] = []
    taken = np.zeros((H, W), bool)
    while len(truth) < items:
        style = str(rng.choice(list(SIZES)))
        size = int(rng.uniform(*SIZES[style]))
        font = ImageFont.load_default(size=size)
        text = " ".join(str(rng.choice(WORDS)) for _ in range(int(rng.integers(1, 3 if style == "title" else 5))))
        text = text.upper() if rng.random() < 0.3 else text
        stroke = max(1, size // 14) if style == "subtitle" else 0
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        if len(text.replace(" ", "")) < 4 or right - left > W - 20:
            continue
        x = int(rng.integers(10, W - (right - left) - 10)) - left
        y = int(rng.integers(10, H - (bottom - top) - 10)) - top
        box = _ink_box(text, (x, y), font, stroke)
        pad = size // 2
        region = np.s_[max(0, box[1] - pad) : box[3] + pad, max(0, box[0] - pad) : box[2] + pad]
        if taken[region].any():
            continue
        taken[region] = True
        under = np.asarray(img)[box[1] : box[3], box[0] : box[2]].reshape(-1, 3).mean(0)
        if style == "subtitle":
            fill = (255, 255, 255) if rng.random() < 0.6 else (255, 230, 40)
            draw.text((x, y), text, font=font, fill=fill, stroke_width=stroke, stroke_fill=(0, 0, 0))
        elif style == "boxed":
            board = tuple(int(v) for v in rng.uniform(0, 255, 3))
            m = size // 3
            draw.rectangle((box[0] - m, box[1] - m, box[2] + m, box[3] + m), fill=board)
            draw.text((x, y), text, font=font, fill=_contrasting(rng, board))
        else:
            draw.text((x, y), text, font=font, fill=_contrasting(rng, under))
        truth.append(box)
    return np.asarray(img.convert("RGB")).copy(), truth


def _needs_freetype() -> None:
    from PIL import features

    if not features.check("freetype2"):
        pytest.skip("Pillow without FreeType cannot render scalable text")


@pytest.fixture(scope="module")
def detector() -> ClassicTextDetector:
    return ClassicTextDetector()


@pytest.fixture(scope="module")
def synthetic_results(detector: ClassicTextDetector) -> list[tuple[float, float, float, float]]:
    """(true ratio, detected ratio, pixel precision, pixel recall) for 16 synthetic text frames."""
    _needs_freetype()
    out = []
    for seed in range(16):
        rng = np.random.default_rng(100 + seed)
        rgb, truth = text_frame(rng, ("clouds", "gradient", "foliage", "clouds")[seed % 4], items=1 + seed % 3)
        boxes = detector.detect(rgb)
        true_mask = np.zeros((H, W), bool)
        det_mask = np.zeros((H, W), bool)
        for x0, y0, x1, y1 in truth:
            true_mask[y0:y1, x0:x1] = True
        for x0, y0, x1, y1 in boxes:
            det_mask[y0:y1, x0:x1] = True
        inter = (true_mask & det_mask).sum()
        out.append((true_mask.mean(), det_mask.mean(), inter / max(det_mask.sum(), 1), inter / true_mask.sum()))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Text area: classic detector accuracy
# ---------------------------------------------------------------------------------------------------------------


def test_text_area_ratio_close_to_truth(synthetic_results: list[tuple[float, float, float, float]]) -> None:
    truth, ratio, precision, recall = (np.array(c) for c in zip(*synthetic_results, strict=True))
    error = np.abs(ratio - truth)
    # Stated tolerance: |ratio - truth| <= 0.3 * truth + 0.003 on at least 14 of 16 frames.
    within = error <= 0.3 * truth + 0.003
    assert within.sum() >= 14, f"ratios {np.round(ratio, 4)} vs truth {np.round(truth, 4)}"
    assert np.median(error) <= 0.004, f"median abs error {np.median(error):.4f}"
    assert recall.mean() >= 0.85, f"mean pixel recall {recall.mean():.3f}"
    assert precision.mean() >= 0.8, f"mean pixel precision {precision.mean():.3f}"


def test_paper_threshold_separates_heavy_text(detector: ClassicTextDetector) -> None:
    _needs_freetype()
    img = Image.fromarray(background(np.random.default_rng(7), "clouds"))
    draw = ImageDraw.Draw(img)
    draw.text((60, 120), "BREAKING NEWS", font=ImageFont.load_default(size=110), fill=(255, 255, 255))
    draw.text((60, 300), "live from the city", font=ImageFont.load_default(size=70), fill=(250, 240, 40))
    heavy = text_area_ratio(np.asarray(img), detector)
    small, truth = text_frame(np.random.default_rng(8), "clouds", items=1)
    light = text_area_ratio(small, detector)
    assert heavy > 0.07 > light  # App. C drops clips whose text boxes cover more than 7% of the frame
    assert light == pytest.approx(boxes_area_ratio(truth, H, W), rel=0.3, abs=0.003)


def test_large_frames_are_scored_at_working_size(detector: ClassicTextDetector) -> None:
    _needs_freetype()
    rgb, truth = text_frame(np.random.default_rng(11), "gradient", items=2)
    big = cv2.resize(rgb, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC)  # detected at 1024 px, boxes scaled back
    boxes = detector.detect(big)
    assert all(0 <= x0 < x1 <= 2 * W and 0 <= y0 < y1 <= 2 * H for x0, y0, x1, y1 in boxes)
    assert text_area_ratio(big, detector) == pytest.approx(boxes_area_ratio(truth, H, W), rel=0.3, abs=0.003)


@pytest.mark.parametrize("kind", ["gradient", "clouds", "foliage", "branches", "gravel", "windows"])
def test_textless_textures_give_low_ratios(detector: ClassicTextDetector, kind: str) -> None:
    ratios = [text_area_ratio(background(np.random.default_rng(900 + seed), kind), detector) for seed in range(2)]
    assert max(ratios) <= 0.02, f"{kind}: {ratios}"


def test_real_footage_gives_low_ratios(detector: ClassicTextDetector) -> None:
    if not VIDEO.is_file():
        pytest.skip(f"shared sample video not found at {VIDEO}")
    av = pytest.importorskip("av")
    ratios = []
    with av.open(str(VIDEO)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 50 == 0:
                ratios.append(text_area_ratio(frame.to_ndarray(format="rgb24"), detector))
    assert len(ratios) >= 10
    assert max(ratios) < 0.05 and float(np.mean(ratios)) < 0.01, np.round(ratios, 4)


# ---------------------------------------------------------------------------------------------------------------
# Text area: API
# ---------------------------------------------------------------------------------------------------------------


class _FixedBoxes:
    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        self.boxes = boxes

    def detect(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        return self.boxes


def test_ratio_is_union_of_boxes() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    overlapping = _FixedBoxes([(0, 0, 100, 50), (50, 0, 150, 50), (190, 90, 300, 300)])  # last one is clipped
    assert isinstance(overlapping, TextDetector)
    assert text_area_ratio(frame, overlapping) == pytest.approx((150 * 50 + 10 * 10) / 20000)
    assert boxes_area_ratio([], 10, 10) == 0.0


def test_clip_text_score_reductions() -> None:
    frames = [np.zeros((10, 10, 3), np.uint8)] * 2

    class PerFrame:
        calls = 0

        def detect(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
            PerFrame.calls += 1
            return [(0, 0, 10, 5)] if PerFrame.calls % 2 else []

    assert clip_text_score(frames, PerFrame(), reduce="max") == pytest.approx(0.5)
    assert clip_text_score(frames, PerFrame(), reduce="mean") == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="median"):
        clip_text_score(frames, PerFrame(), reduce="median")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least one frame"):
        clip_text_score([], PerFrame())


def test_key_frame_indices() -> None:
    assert key_frame_indices(1) == [0]
    assert key_frame_indices(2) == [0, 1]
    assert key_frame_indices(5) == [0, 2, 4]
    assert key_frame_indices(100) == [0, 50, 99]
    assert key_frame_indices(9, k=1) == [4]
    with pytest.raises(InputError):
        key_frame_indices(0)


def test_detector_rejects_bad_frames(detector: ClassicTextDetector) -> None:
    with pytest.raises(InputError, match="uint8"):
        detector.detect(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        detector.detect(np.zeros((32, 32), np.uint8))
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == []  # too small for any pyramid level: no text
    with pytest.raises(ConfigError, match="odd"):
        ClassicTextConfig(stroke_kernel=10)


def test_merge_boxes_joins_duplicates_only() -> None:
    merged = merge_boxes([(10, 10, 50, 20), (11, 9, 51, 21), (100, 100, 120, 110)])
    assert merged == [(10, 9, 51, 21), (100, 100, 120, 110)]
