"""Flow-based frame interpolation: accuracy on synthetic motion and real video, occlusions, retiming,
streaming in bounded memory, the tensor wrapper, the node, and bad inputs."""

from __future__ import annotations

import weakref
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from comfyui_svd_lab.nodes.interpolation_nodes import FlowInterpolate
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.pipelines.flow_interp import (
    FlowSettings,
    PairMotion,
    interpolate_at,
    interpolate_images,
    interpolate_pair,
    interpolate_stream,
    occlusion,
    output_count,
    output_positions,
    pair_motion,
    resample_step,
)
from conftest import SHARED

VIDEO = SHARED / "data" / "issue-195-aspect-ratio.mp4"
#: Measured: flow 38.4 dB vs blend 33.4 dB on this window at 256x144 (+5.1 dB); the bench shows +3 dB over
#: six windows at 1024x576. The test asks for a fixed margin well inside that.
REAL_VIDEO_MARGIN_DB = 2.0


def psnr(a: np.ndarray, b: np.ndarray, margin: int = 0) -> float:
    if margin:
        a, b = a[margin:-margin, margin:-margin], b[margin:-margin, margin:-margin]
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def blend(a: np.ndarray, b: np.ndarray, t: float = 0.5) -> np.ndarray:
    return ((1 - t) * a.astype(np.float32) + t * b.astype(np.float32) + 0.5).astype(np.uint8)


def blobs(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Smooth random RGB texture in [0, 1] (trackable, not periodic)."""
    n = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    return (n - n.min()) / (n.max() - n.min())


def object_scene(seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """(background (96, 128, 3), object (size, size, 3)) uint8 textures of different contrast."""
    rng = np.random.default_rng(seed)
    background = ((0.15 + 0.5 * blobs(rng, 96, 128, 4)) * 255).astype(np.uint8)
    return background, ((0.35 + 0.65 * blobs(rng, size, size, 2)) * 255).astype(np.uint8)


def place(background: np.ndarray, obj: np.ndarray, x: int, y: int = 34) -> np.ndarray:
    frame = background.copy()
    frame[y : y + obj.shape[0], x : x + obj.shape[1]] = obj
    return frame


# ------------------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize(("dx", "dy"), [(6, 2), (10, -4)])
def test_translating_texture_is_rebuilt_nearly_exactly(dx, dy):
    texture = (blobs(np.random.default_rng(0), 160, 200, 3) * 255).astype(np.uint8)

    def crop(x: int, y: int) -> np.ndarray:
        return texture[20 + y : 116 + y, 20 + x : 148 + x]

    f0, f1, truth = crop(0, 0), crop(dx, dy), crop(dx // 2, dy // 2)
    (mid,) = interpolate_pair(f0, f1, [0.5])
    assert mid.dtype == np.uint8 and mid.shape == f0.shape
    assert psnr(mid, truth, margin=12) > 50  # measured: pixel-exact away from the borders
    assert psnr(mid, truth) > psnr(blend(f0, f1), truth) + 15
    # float input stays float, in [0, 1]
    (mid_f,) = interpolate_pair(f0 / np.float32(255), f1 / np.float32(255), [0.5])
    assert mid_f.dtype == np.float32 and np.abs(mid_f * 255 - mid).max() < 1.5


def test_occlusion_aware_blend_recovers_a_moving_object_given_exact_flows():
    """The blend logic alone: with true flows, a moving object over a static background comes out almost
    exactly, while the same warps averaged without occlusion weights smear its edges."""
    background, obj = object_scene(0)
    settings = FlowSettings()
    for d in (3, 6):
        f0, f1, truth = place(background, obj, 30), place(background, obj, 30 + 2 * d), place(background, obj, 30 + d)
        f01 = np.zeros((96, 128, 2), np.float32)
        f01[34:62, 30:58, 0] = 2 * d
        f10 = np.zeros((96, 128, 2), np.float32)
        f10[34:62, 30 + 2 * d : 58 + 2 * d, 0] = -2 * d
        exact = PairMotion(f01, f10, occlusion(f01, f10, settings), occlusion(f10, f01, settings), 1.0)
        blind = PairMotion(f01, f10, np.zeros((96, 128), np.float32), np.zeros((96, 128), np.float32), 1.0)
        aware = psnr(interpolate_at(f0, f1, exact, 0.5, settings), truth)
        unaware = psnr(interpolate_at(f0, f1, blind, 0.5, settings), truth)
        assert aware > 60 and aware > unaware + 20, (d, aware, unaware)


def test_moving_object_with_estimated_flow_beats_blending():
    gains = []
    for seed in (0, 1):
        background, obj = object_scene(seed)
        for d in (3, 4, 5, 6):  # the object (28 px) moves 6..12 px per source frame
            f0, f1 = place(background, obj, 30), place(background, obj, 30 + 2 * d)
            truth = place(background, obj, 30 + d)
            (mid,) = interpolate_pair(f0, f1, [0.5])
            gains.append(psnr(mid, truth) - psnr(blend(f0, f1), truth))
    assert np.mean(gains) > 10 and min(gains) > 6, gains  # measured: mean +15.5 dB, min +10.8 dB


def test_real_video_flow_beats_blending_by_a_fixed_margin():
    if not VIDEO.is_file():
        pytest.skip(f"shared test video not found at {VIDEO} (it lives in ../shared/data)")
    from comfyui_svd_lab.svd_model.media.video import iter_frames

    # frames 540..560 lie inside the shot [484, 627] (cuts at 70, 170, 301, 421, 484)
    frames = list(iter_frames(VIDEO, skip_first=540, frame_cap=21, size=(256, 144)))
    kept, dropped = frames[0::2], frames[1::2]
    rebuilt = list(interpolate_stream(iter(kept), Fraction(1, 2)))
    assert len(rebuilt) == 2 * len(kept) - 1
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt[0::2], kept, strict=True))
    flow_db = np.mean([psnr(r, t) for r, t in zip(rebuilt[1::2], dropped, strict=True)])
    blend_db = np.mean([psnr(blend(a, b), t) for a, b, t in zip(kept, kept[1:], dropped, strict=False)])
    assert flow_db >= blend_db + REAL_VIDEO_MARGIN_DB, (flow_db, blend_db)


# ------------------------------------------------------------------------------------------- timing


def test_factor_and_target_fps_timestamps():
    assert resample_step(factor=2) == (Fraction(1, 2), None)
    assert resample_step(factor=4, source_fps=8) == (Fraction(1, 4), 32.0)
    assert resample_step(factor=2.5, source_fps=10) == (Fraction(2, 5), 25.0)
    assert resample_step(source_fps=25, target_fps=30) == (Fraction(5, 6), 30.0)
    assert output_count(3, Fraction(1, 4)) == 9  # x4: (n - 1) * 4 + 1, ends on the last frame
    assert output_positions(3, Fraction(1, 2)) == [0, Fraction(1, 2), 1, Fraction(3, 2), 2]
    assert output_positions(7, Fraction(5, 6)) == [Fraction(5 * j, 6) for j in range(8)]  # 25 -> 30 fps
    assert output_positions(7, Fraction(3)) == [0, 3, 6]  # 30 -> 10 fps: whole positions, no flow needed
    frames = [np.full((8, 10, 3), 40 * i, np.uint8) for i in range(7)]  # smaller than DIS allows
    out = list(interpolate_stream(frames, Fraction(3)))
    assert len(out) == 3 and all(np.array_equal(o, frames[3 * i]) for i, o in enumerate(out))
    out = list(interpolate_stream(frames, Fraction(5, 6)))
    assert len(out) == 8 and np.array_equal(out[6], frames[5])  # position 5 is a source frame


def test_stream_is_incremental_and_holds_two_source_frames():
    rng = np.random.default_rng(1)
    texture = (blobs(rng, 64, 400, 3) * 255).astype(np.uint8)
    pulled, alive = [], []

    def source():  # a one-shot iterator, like a decoder
        for i in range(60):
            frame = np.ascontiguousarray(texture[:, 2 * i : 2 * i + 48])
            pulled.append(i)
            alive.append(weakref.ref(frame))
            yield frame

    stream = interpolate_stream(source(), Fraction(1, 2))
    for j, frame in enumerate(stream):
        assert frame.shape == (64, 48, 3)
        assert len(pulled) <= j // 2 + 2  # never reads ahead more than the current pair
        assert sum(ref() is not None for ref in alive) <= 3  # earlier source frames were released
    assert j == 2 * 59 and len(pulled) == 60


def test_tensor_wrapper_and_node():
    images = torch.from_numpy(blobs(np.random.default_rng(2), 24, 64, 2)).float()  # (24, 64, 3)
    video = torch.stack([images[:, 2 * i : 2 * i + 32] for i in range(5)])  # (5, 24, 32, 3) panning
    seen = []
    out, fps = interpolate_images(video, factor=2, source_fps=8, callback=lambda d, n: seen.append((d, n)))
    assert out.shape == (9, 24, 32, 3) and out.dtype == torch.float32 and fps == 16.0
    assert torch.equal(out[0::2], video) and seen[-1] == (9, 9) and len(seen) == 9
    node = FlowInterpolate()
    images, fps, count, _ = node.interpolate(video, 2.0, 0.0, 8.0, "dis_fast", 0)
    assert images.shape == (9, 24, 32, 3) and fps == 16.0 and count == 9
    images, fps, count, _ = node.interpolate(video, 2.0, 12.0, 8.0, "farneback", 640)  # target fps wins
    assert fps == 12.0 and count == output_count(5, Fraction(8, 12)) == 7
    assert FlowInterpolate.VALIDATE_INPUTS(2.0, 0.0, 8.0, 640, images=None) is True  # images linked
    assert "below the minimum" in FlowInterpolate.VALIDATE_INPUTS(0.5, 0.0, 8.0, 640)
    assert "at least 16" in FlowInterpolate.VALIDATE_INPUTS(2.0, 0.0, 8.0, 4)
    with pytest.raises(InputError, match="at least two"):
        node.interpolate(video[:1], 2.0, 0.0, 8.0, "dis_fast", 640)


# ----------------------------------------------------------------------------------------- bad input


def test_bad_inputs_say_what_is_wrong():
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(InputError, match="only one frame"):
        list(interpolate_stream([frame], 0.5))
    with pytest.raises(InputError, match="no frames"):
        list(interpolate_stream([], 0.5))
    with pytest.raises(InputError, match="at least two frames, got 1"):
        interpolate_images(torch.zeros(1, 16, 16, 3), factor=2)
    with pytest.raises(InputError, match="frames 1 and 2 differ: 16x16 uint8 vs 24x16"):
        list(interpolate_stream([frame, frame, np.zeros((16, 24, 3), np.uint8)], 0.5))
    with pytest.raises(InputError, match=r"numpy \(H, W, 3\)"):
        list(interpolate_stream([frame, np.zeros((16, 16), np.uint8)], 0.5))
    with pytest.raises(InputError, match="outside"):
        interpolate_pair(frame, frame, [1.5])
    with pytest.raises(ConfigError, match="not both or neither"):
        resample_step(factor=2, source_fps=8, target_fps=24)
    with pytest.raises(ConfigError, match="needs the source frame rate"):
        resample_step(target_fps=24)
    with pytest.raises(ConfigError, match="factor must be > 0"):
        resample_step(factor=0)
    with pytest.raises(ConfigError, match="unknown flow method"):
        FlowSettings(method="raft")
    with pytest.raises(ConfigError, match="max_flow_side"):
        FlowSettings(max_flow_side=8)


def test_pair_motion_downscales_flow_estimation():
    texture = (blobs(np.random.default_rng(3), 200, 300, 3) * 255).astype(np.uint8)
    f0, f1 = texture[:160, :240], texture[4:164, 8:248]  # content moves by (-8, -4)
    motion = pair_motion(f0, f1, FlowSettings(max_flow_side=120))
    assert motion.f01.shape == (80, 120, 2) and motion.scale == pytest.approx(0.5)
    assert np.median(motion.f01[20:60, 20:100], axis=(0, 1)) == pytest.approx([-4, -2], abs=0.3)  # flow pixels
    (mid,) = interpolate_pair(f0, f1, [0.5], FlowSettings(max_flow_side=120))
    assert psnr(mid, texture[2:162, 4:244], margin=16) > 35
