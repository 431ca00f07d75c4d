"""Long videos: segment overrides, frame accounting, extend end to end on a tiny SVD checkpoint (package and
node), progress per segment, interruption, drift correction wiring, the loop path, and error messages."""

from __future__ import annotations

import pytest
import torch
from train_support import one_thread_fixture

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, bridge
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.media.colour import lab_stats, srgb_to_lab
from comfyui_svd_lab.svd_model.pipelines import keyframes
from comfyui_svd_lab.svd_model.pipelines.extend import (
    Segment,
    build_segments,
    extend_video,
    extended_length,
    parse_segment_overrides,
)
from comfyui_svd_lab.svd_model.pipelines.image_to_video import VideoParams
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

H, W, F = 32, 48, 3  # tiny segments: 3 frames at 48x32


#: Tiny models: one intra-op thread is several times faster than two on a loaded machine (and changes no
#: assertion: every comparison is between runs with the same setting).
_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "svd.safetensors", seed=9))


def _clip(t: int = 2) -> torch.Tensor:
    """(1, t, 3, H, W) in [-1, 1]: a smooth coloured gradient moving sideways."""
    y, x = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    frames = [torch.stack([0.6 * x.roll(2 * i, 1), 0.4 + 0.3 * y, 0.5 * (1 - x)]) for i in range(t)]
    return torch.stack(frames)[None] * 2 - 1


def _params(**kw) -> VideoParams:
    return VideoParams.for_variant("svd", **{"num_frames": F, "width": W, "height": H, "steps": 2, **kw})


def _segments(n: int = 2, **kw) -> list[Segment]:
    return build_segments(_params(**kw), 5, [{}] * n)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- planning


def test_segment_overrides_are_parsed_and_applied():
    text = "motion_bucket_id=180 seed=7\n\nframes=5, max_cfg=2.0; cond_aug=0.05"
    over = parse_segment_overrides(text, 3)
    assert over == [{"motion_bucket_id": 180, "seed": 7}, {}, {"frames": 5, "max_cfg": 2.0, "cond_aug": 0.05}]
    segs = build_segments(_params(), 10, over)
    assert [s.params.num_frames for s in segs] == [F, F, 5] and segs[0].params.motion_bucket_id == 180
    assert segs[2].params.max_cfg == 2.0 and segs[1].params == _params()
    draws = [torch.randn(1, generator=s.generator).item() for s in segs]  # seeds 7, 10 + 1, 10 + 2
    assert draws == [torch.randn(1, generator=torch.Generator().manual_seed(s)).item() for s in (7, 11, 12)]
    assert parse_segment_overrides("", 2) == [{}, {}]


@pytest.mark.parametrize(("text", "message"), [
    ("speed=3", "cannot read 'speed=3'"),
    ("fps", "cannot read 'fps'"),
    ("fps=fast", "fps='fast' is not a number"),
    ("seed=1.5", "seed must be a whole number"),
    ("\n\nfps=3", "3 lines but there are 2 segments"),
])
def test_segment_override_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_segment_overrides(text, 2)


def test_invalid_segment_values_name_the_segment():
    with pytest.raises(InputError, match="segment 2: num_frames must be in"):
        build_segments(_params(), 0, [{}, {"frames": 0}])


def test_extended_length():
    assert extended_length(14, [14, 14], 1) == 14 + 13 + 13
    assert extended_length(14, [14, 25], 2, loop_frames=14) == 14 + 12 + 23 + 12
    assert extended_length(1, [], 1, loop_frames=5) == 4


# ------------------------------------------------------------------------------------------ end to end


def test_extend_end_to_end_keeps_the_clip_and_reports_each_segment(bundle):
    clip = _clip(2)
    reports, steps = [], []
    out = extend_video(bundle, clip, _segments(2), overlap=1, step_callback=steps.append,
                       segment_callback=lambda d, t: reports.append((d, t)))
    assert out.shape == (1, extended_length(2, [F, F], 1), 3, H, W) == (1, 6, 3, H, W)
    assert torch.equal(out[:, :1], clip[:, :1])  # frames before the overlap are untouched
    assert not torch.equal(out[:, 1], clip[:, 1])  # the overlap frame is cross-faded
    assert reports == [(1, 2), (2, 2)] and len(steps) == 2 * 2
    assert out.min() >= -1 and out.max() <= 1
    again = extend_video(bundle, clip, _segments(2), overlap=1)
    assert torch.equal(out, again)  # same seeds, same video
    longer = extend_video(bundle, _clip(3), build_segments(_params(), 5, [{"frames": 5}]), overlap=2)
    assert longer.shape[1] == extended_length(3, [5], 2) == 6


def test_drift_correction_anchors_new_frames_to_the_clip(bundle):
    clip = _clip(2)
    reference = lab_stats((clip[0] + 1) / 2)

    def distance(video: torch.Tensor) -> float:
        new = srgb_to_lab((video[0, 2:] + 1) / 2)  # the appended frames
        return float((new.mean((0, 2, 3)) - reference.mean).norm())

    off = extend_video(bundle, clip, _segments(1), drift_correction=0.0)
    on = extend_video(bundle, clip, _segments(1), drift_correction=1.0)
    assert distance(on) < distance(off) / 3, (distance(on), distance(off))  # random weights drift a lot


def test_extend_node_progress_and_interruption(bundle, monkeypatch):
    images = ((_clip(2)[0].permute(0, 2, 3, 1) + 1) / 2).contiguous()  # IMAGE (2, H, W, 3)
    args = dict(segments=2, frames=F, overlap=1, fps=7, motion_bucket_id=127, cond_aug=0.02, seed=3, steps=2,
                min_cfg=1.0, max_cfg=2.5, drift_correction=True, loop=False)
    extend = NODE_CLASS_MAPPINGS["SVDLab_ExtendVideo"]()
    reports = []
    with bridge.headless_run(reporter=lambda v, t: reports.append((v, t))):
        frames, info, _ = extend.extend(bundle, images, **args, per_segment="\nmotion_bucket_id=30")
    assert frames.shape == (6, H, W, 3) and reports == [(1, 2), (2, 2)]
    assert "2 input frames + 2 segments" in info and "= 6 frames" in info

    class Stop(Exception):
        pass

    def interrupt_after_the_first_segment():
        if reports:  # the user cancels once segment 1 is reported: segment 2 must stop inside
            raise Stop("Processing interrupted")

    monkeypatch.setattr(bridge, "check_interrupt", interrupt_after_the_first_segment)
    monkeypatch.setattr(bridge.progress, "check_interrupt", interrupt_after_the_first_segment)
    reports.clear()
    with bridge.headless_run(reporter=lambda v, t: reports.append((v, t))), pytest.raises(Stop):
        extend.extend(bundle, images, **args)
    assert reports == [(1, 2)]  # segment 1 finished and reported, segment 2 stopped inside


def test_extend_errors(bundle, tmp_path):
    sv3d = load_bundle(write_tiny_checkpoint(tmp_path / "sv3d_u.safetensors", Family.SV3D_U, seed=1))
    node = NODE_CLASS_MAPPINGS["SVDLab_ExtendVideo"]
    images = torch.rand(2, H, W, 3)
    args = dict(segments=1, frames=F, overlap=1, fps=7, motion_bucket_id=127, cond_aug=0.02, seed=0, steps=2,
                min_cfg=1.0, max_cfg=2.5, drift_correction=False, loop=False)
    with pytest.raises(InputError, match="sv3d_u is an SV3D .* extending a video needs an SVD"):
        node().extend(sv3d, images, **args)
    with pytest.raises(InputError, match="not a multiple of 16"):
        node().extend(bundle, torch.rand(2, H, 40, 3), **args)
    with pytest.raises(InputError, match="overlap 3 needs at least 3 input frames, the clip has 2"):
        node().extend(bundle, images, **{**args, "overlap": 3, "frames": 5})
    with pytest.raises(InputError, match="segment 1 has 3 frames, which must exceed the overlap"):
        extend_video(bundle, _clip(4), _segments(1), overlap=3)
    with pytest.raises(InputError, match="segment 1 is set to 64x32 but the clip is 48x32"):
        extend_video(bundle, _clip(2), _segments(1, width=64))
    with pytest.raises(InputError, match="nothing to do"):
        extend_video(bundle, _clip(2), [])
    with pytest.raises(InputError, match="segment 2 has no generator"):  # refused before segment 1 runs
        extend_video(bundle, _clip(2), [*_segments(1), Segment(_params())])
    with pytest.raises(InputError, match="loop=True needs loop_generator"):
        extend_video(bundle, _clip(2), _segments(1), loop=True, loop_params=_params(num_frames=4))
    assert "must exceed overlap" in node.VALIDATE_INPUTS(1, 2, 2)
    assert "above the maximum" in node.VALIDATE_INPUTS(1000, 0, 1)
    assert "cannot read" in node.VALIDATE_INPUTS(2, 0, 1, "nonsense")
    assert node.VALIDATE_INPUTS(2, 0, 1, "seed=4", images=None) is True
    assert node.VALIDATE_INPUTS(None, None, None, images=None) is True  # images linked


# ------------------------------------------------------------------------------------------------ loop


def test_loop_closes_the_video_through_keyframe_interpolation(bundle, monkeypatch):
    calls = []

    def fake_interpolate(b, first, last, params, *, generator=None, callback=None):
        calls.append((first.clone(), last.clone(), params.num_frames))
        return torch.zeros(first.shape[0], params.num_frames, 4, H // 8, W // 8)

    monkeypatch.setattr(keyframes, "interpolate_keyframes", fake_interpolate)
    reports = []
    loop_params = _params(num_frames=5)
    out = extend_video(bundle, _clip(2), _segments(1), loop=True, loop_params=loop_params, loop_generator=_gen(),
                       segment_callback=lambda d, t: reports.append((d, t)))
    assert out.shape[1] == extended_length(2, [F], 1, loop_frames=5) == 2 + 2 + 3
    first, last, t = calls[0]
    assert t == 5 and torch.equal(last, out[:, 0]) and torch.equal(first, out[:, 3])  # last frame -> first frame
    assert reports == [(1, 2), (2, 2)]
    only_loop = extend_video(bundle, _clip(2), [], loop=True, loop_params=loop_params, loop_generator=_gen())
    assert only_loop.shape[1] == 2 + 3
    with pytest.raises(InputError, match="at least 3 frames"):
        extend_video(bundle, _clip(2), [], loop=True, loop_params=_params(num_frames=2), loop_generator=_gen())


def test_loop_with_the_real_keyframe_interpolation(bundle):
    clip = _clip(2)
    out = extend_video(bundle, clip, _segments(1), loop=True, loop_params=_params(num_frames=4),
                       loop_generator=_gen())
    assert out.shape == (1, extended_length(2, [F], 1, loop_frames=4), 3, H, W)
    assert torch.isfinite(out).all() and torch.equal(out[:, 0], clip[:, 0])
