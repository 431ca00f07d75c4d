"""Brief transitions (issue 15): dips to black or white of one or two frames, flashes between shots and fades over
slowly changing brightness are found and localised; slow brightness changes and flashes inside one shot are not cuts.

The videos come from ``synthetic.make_video`` with exact truth: each transition is ``(first, last, kind)``; a
detection matches when both of its ends are within one frame of the truth's. Every shot's brightness ramps
(``gain``), the slow change a dip or a fade must be told apart from.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_svd_lab.svd_model.curation.annotate import annotate_video
from comfyui_svd_lab.svd_model.curation.cuts import CascadeDetector, CutConfig
from comfyui_svd_lab.svd_model.curation.synthetic import make_video
from comfyui_svd_lab.svd_model.curation.transitions import dissolve_fit

SIZE = (192, 108)
#: Per shot brightness factor at its first and last frame: about half or double over 2 s.
RAMPS = ((1.0, 0.5), (0.5, 1.0), (1.0, 0.55), (0.6, 1.0), (1.2, 0.7))
#: What the detector calls each synthetic kind: a brief excursion through black is a fade, one through white a flash.
KIND = {"dip_black": "fade", "dip_white": "flash", "flash": "flash", "fade": "fade", "fade_white": "fade",
        "dissolve": "dissolve", "hard": "hard"}  # fmt: skip

CASES = {
    "dips 1 frame": dict(shots=(50, 50, 50, 50), transitions=("dip_black", "dip_white", "dip_black"), dip_frames=1,
                         gain=RAMPS[:4], motion=(0.5, 1.0, 0.3, 0.5), seed=21),
    "dips 2 frames 30 fps": dict(shots=(55, 60, 50, 60), transitions=("dip_white", "dip_black", "dip_white"),
                                 dip_frames=2, fps=30, gain=RAMPS[1:], motion=(1.0, 0.5, 2.0, 0.3), seed=22),
    "flashes between shots": dict(shots=(50, 50, 50), transitions=("flash", "flash"), dip_frames=1, gain=RAMPS[:3],
                                  motion=(1.0, 0.5, 2.0), seed=23),
    "2-frame flashes, fast pan": dict(shots=(50, 50, 50), transitions=("flash", "flash"), dip_frames=2,
                                      motion=(1.0, 6.0, 2.0), seed=24),
    "fades over ramps": dict(shots=(60, 60, 60), transitions=("fade", "fade"), transition_frames=16, gain=RAMPS[:3],
                             motion=(0.3, 0.5, 0.3), seed=25),
    "fades over ramps 50 fps": dict(shots=(100, 100, 100), transitions=("fade", "fade"), transition_frames=30,
                                    fps=50, gain=RAMPS[2:], motion=(0.5, 1.0, 0.5), seed=26),
    "fades through white over ramps": dict(shots=(60, 60, 60, 60), transitions=("fade_white", "fade", "fade_white"),
                                          transition_frames=12, gain=RAMPS[:4], motion=(0.5, 1.0, 0.3, 1.0), seed=28),
    "mixed": dict(shots=(45, 50, 40, 55, 45), transitions=("hard", "dip_black", "dissolve", "flash"), dip_frames=1,
                  gain=RAMPS, motion=(0.5, 2.0, 0.3, 1.0, 4.0), seed=27),
}  # fmt: skip

NEGATIVES = {
    "darkening to near black, flashes": dict(shots=(150,), gain=((1.0, 0.2),), motion=(0.5,), flashes=(40, 41, 100),
                                             seed=31),
    "brightening": dict(shots=(120,), gain=((0.25, 1.3),), motion=(1.0,), seed=32),
    "fast ramp while panning": dict(shots=(60,), gain=((1.0, 0.3),), motion=(3.0,), flashes=(30,), seed=33),
    "overexposed, flashes": dict(shots=(120,), gain=((1.0, 1.9),), motion=(1.0,), flashes=(30, 31, 80), seed=54),
}  # fmt: skip


def _match(cuts, truth, tol: int = 1):
    """(matched pairs, extra detections, missed truths): a cut matches a truth whose first and last frames are both
    within ``tol`` of its own."""
    pairs, left = [], list(truth)
    for cut in cuts:
        hit = next((t for t in left if abs(cut.frame - t[0]) <= tol and abs(cut.end_frame - t[1]) <= tol), None)
        if hit is not None:
            pairs.append((cut, hit))
            left.remove(hit)
    return pairs, [c for c in cuts if all(c is not p[0] for p in pairs)], left


@pytest.mark.parametrize("name", list(CASES))
def test_brief_transitions_are_found_and_localised(tmp_path, name):
    path = tmp_path / "v.mp4"
    truth = make_video(path, size=SIZE, preset="ultrafast", **CASES[name])
    cuts = annotate_video(path, motion=None).cuts
    pairs, extra, missed = _match(cuts, truth.transitions)
    assert not extra and not missed, (cuts, truth.transitions)  # F1 = 1 with both ends within one frame
    assert [c.kind for c, _ in pairs] == [KIND[t[2]] for _, t in pairs]


@pytest.mark.parametrize("name", list(NEGATIVES))
def test_slow_brightness_changes_and_flashes_inside_a_shot_are_not_cuts(tmp_path, name):
    path = tmp_path / "v.mp4"
    truth = make_video(path, size=SIZE, preset="ultrafast", **NEGATIVES[name])
    assert truth.cuts == ()
    assert annotate_video(path, motion=None).cuts == ()


def test_a_flash_is_a_cut_only_between_different_shots(tmp_path):
    """The same overexposed frame: inside one shot the picture comes back (no cut); between two shots it is the cut."""
    inside = make_video(tmp_path / "in.mp4", size=SIZE, shots=(100,), motion=(1.0,), flashes=(50,), seed=41,
                        preset="ultrafast")  # fmt: skip
    between = make_video(tmp_path / "between.mp4", size=SIZE, shots=(50, 49), transitions=("flash",), dip_frames=1,
                         motion=(1.0, 1.0), seed=41, preset="ultrafast")  # fmt: skip
    assert inside.num_frames == between.num_frames and between.transitions == ((50, 50, "flash"),)
    assert annotate_video(tmp_path / "in.mp4", motion=None).cuts == ()
    cuts = annotate_video(tmp_path / "between.mp4", motion=None).cuts
    assert [(c.frame, c.end_frame, c.kind) for c in cuts] == [(50, 50, "flash")]


def _texture(rng: np.random.Generator, h: int = 27, w: int = 48) -> np.ndarray:
    """A smooth random picture: float32 (3, h, w) Y, U, V (0..255)."""
    img = cv2.resize(rng.random((6, 10)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.stack([60 + 120 * img, 128 + 20 * (img - 0.5), 128 - 20 * (img - 0.5)])


def test_a_brightness_step_inside_a_shot_is_not_a_cut():
    """Frames 60.. are frames ..59 25% brighter (an exposure jump, or a fast decode's drift reset at a keyframe):
    no cut there at any level; the change to another picture at 120 is still a hard cut."""
    rng = np.random.default_rng(0)
    first, second = _texture(rng), _texture(rng)
    gain, offset = np.array([1.25, 1.0, 1.0])[:, None, None], np.array([8.0, 0.0, 0.0])[:, None, None]
    pictures = [first] * 60 + [first * gain + offset] * 60 + [second] * 60
    frames = np.clip(np.stack([p + rng.normal(0, 1.5, p.shape) for p in pictures]), 0, 255).astype(np.float32)
    detector = CascadeDetector(CutConfig(), 25.0, frames.shape[1:])
    detector.push(frames)  # (180, 3, 27, 48)
    cuts = detector.finish(np.arange(180) / 25.0)
    assert [(c.frame, c.end_frame, c.kind) for c in cuts] == [(120, 120, "hard")]


def test_a_change_on_the_last_frame_has_no_dissolve_span():
    """A one-frame change at the very end of the video (the confirmation window's last frame): no fit, no error."""
    rng = np.random.default_rng(1)
    first, second = _texture(rng), _texture(rng)
    frames = np.stack([first] * 9 + [second]).astype(np.float32)  # (10, 3, 27, 48)
    sd = frames[:, 0].reshape(10, -1).std(1)
    assert dissolve_fit(frames, sd, 8, 9, 0, 10) is None
