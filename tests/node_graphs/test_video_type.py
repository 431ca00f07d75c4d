"""ComfyUI's VIDEO type in the pack (ComfyUI absent): conversions both ways, the nodes that take frames give the same
result from a VIDEO as from IMAGE frames at the VIDEO's rate, exactly one of the two inputs, Decode / Save Video's
VIDEO outputs with their frame rate, and a headless workflow that passes VIDEO links between pack nodes."""

from __future__ import annotations

import inspect
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, extend_nodes
from comfyui_svd_lab.nodes.bridge import video as bridge_video
from comfyui_svd_lab.nodes.bridge.video import (
    LATENT_FPS,
    UNSET,
    FramesVideo,
    frames_from_video,
    video_from_frames,
)
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.media.video import probe_video, read_video
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint
from comfyui_svd_lab.workflow import execute, validate

T, H, W = 3, 16, 16
FRAME_NODES = ["SVDLab_SaveVideo", "SVDLab_PreviewVideo", "SVDLab_EncodeFrames", "SVDLab_FlowInterpolate",
               "SVDLab_ExtendVideo"]


def node(node_id: str):
    return NODE_CLASS_MAPPINGS[node_id]()


def _frames(t: int = T, c: int = 3) -> torch.Tensor:
    return torch.rand(t, H, W, c, generator=torch.Generator().manual_seed(t))  # IMAGE (t, H, W, c) in [0, 1]


class ComfyLikeVideo:
    """What core Load Video / Create Video hand over, as far as the pack reads it (get_components)."""

    def __init__(self, images, frame_rate, error: Exception | None = None):
        self.images, self.frame_rate, self.error = images, frame_rate, error

    def get_components(self):
        if self.error is not None:
            raise self.error
        return SimpleNamespace(images=self.images, frame_rate=self.frame_rate, audio=None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder / "tiny.safetensors", seed=3)
    return folder


@pytest.fixture(scope="module")
def model(models):
    return load_bundle(models / "tiny.safetensors")


# ------------------------------------------------------------------------------------------ conversions


def test_frames_to_video_and_back():
    images = _frames()
    video = video_from_frames(images, 7.5)
    assert isinstance(video, FramesVideo)  # ComfyUI absent: the pack's own value
    parts = video.get_components()
    assert parts.images is images and parts.frame_rate == Fraction(15, 2) and parts.audio is None
    assert video.get_dimensions() == (W, H) and video.get_frame_count() == T
    assert video.get_frame_rate() == Fraction(15, 2) and video.get_duration() == pytest.approx(T / 7.5)
    back, fps = frames_from_video(video)
    assert torch.equal(back, images) and back.dtype == torch.float32 and fps == 7.5 and isinstance(fps, float)


def test_frame_rates_become_exact_fractions():
    assert video_from_frames(_frames(), 30000 / 1001).get_frame_rate() == Fraction(30000, 1001)
    assert video_from_frames(_frames(), 29.97).get_frame_rate() == Fraction(2997, 100)
    assert video_from_frames(_frames(), Fraction(24000, 1001)).get_frame_rate() == Fraction(24000, 1001)
    for bad in (0, -1.0, float("nan"), float("inf"), "24", True):
        with pytest.raises(InputError, match="positive frame rate"):
            video_from_frames(_frames(), bad)


def test_comfyui_video_values_by_duck_typing():
    rgba = torch.linspace(-0.5, 1.5, T * H * W * 4, dtype=torch.float64).reshape(T, H, W, 4)  # alpha, out of range
    images, fps = frames_from_video(ComfyLikeVideo(rgba, Fraction(30000, 1001)))
    assert images.shape == (T, H, W, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.min() == 0.0 and images.max() == 1.0 and fps == pytest.approx(29.97003, abs=1e-5)
    assert torch.equal(images, rgba[..., :3].float().clamp(0, 1))
    grey, _ = frames_from_video(ComfyLikeVideo(_frames(c=1), 8))
    assert grey.shape == (T, H, W, 3) and torch.equal(grey[..., 0], grey[..., 2])


def test_bad_video_values_are_named():
    with pytest.raises(InputError, match="video must be a VIDEO .* got Tensor"):
        frames_from_video(_frames())
    with pytest.raises(InputError, match=r"could not be decoded \(OSError: 'moov atom not found'\)"):
        frames_from_video(ComfyLikeVideo(None, 8, OSError("moov atom not found")))
    with pytest.raises(InputError, match="the VIDEO's frame rate must be a positive frame rate, got 0"):
        frames_from_video(ComfyLikeVideo(_frames(), Fraction(0)))
    with pytest.raises(InputError, match=r"the VIDEO's frames: .*\(batch, height, width, channels"):
        frames_from_video(ComfyLikeVideo(torch.rand(H, W, 3), 8))


def test_inside_comfyui_outputs_are_comfyuis_video_type(monkeypatch):
    class Components(SimpleNamespace):
        pass

    class FromComponents:
        def __init__(self, components):
            self.components = components

    monkeypatch.setattr(bridge_video, "_video_types", lambda: (FromComponents, Components))
    images = _frames()
    video = video_from_frames(images, 12)
    assert isinstance(video, FromComponents) and isinstance(video.components, Components)
    assert video.components.images is images and video.components.frame_rate == Fraction(12)
    assert video.components.audio is None


# ------------------------------------------------------------------------- nodes: VIDEO equals IMAGE


def test_save_and_preview_take_a_video_and_its_rate(folders):
    images = _frames()
    save = node("SVDLab_SaveVideo")
    by_images = save.save(images=images, fps=10.0, format="mp4", quality=80, filename_prefix="a")
    by_video = save.save(video=video_from_frames(images, 10), fps=7.0, format="mp4", quality=80, filename_prefix="b")
    (a_frames, a_fps), (b_frames, b_fps) = (read_video(folders / "out" / o["ui"]["images"][0]["filename"])
                                            for o in (by_images, by_video))
    assert a_fps == b_fps == pytest.approx(10.0) and torch.equal(a_frames, b_frames)  # the fps widget is ignored
    passed = by_video["result"][0]
    assert passed.get_frame_rate() == 10  # a connected VIDEO is passed on unchanged
    made = by_images["result"][0]
    assert made.get_components().images is images and made.get_frame_rate() == 10
    preview = node("SVDLab_PreviewVideo").preview(video=video_from_frames(images, 5), fps=7.0, format="webp")
    written = folders / "temp" / preview["ui"]["images"][0]["filename"]
    assert probe_video(written).fps == pytest.approx(5.0)


def test_encode_frames_from_a_video_keeps_its_rate_in_the_latent(model):
    images = _frames()
    by_images = node("SVDLab_EncodeFrames").encode(model, images=images)[0]
    by_video = node("SVDLab_EncodeFrames").encode(model, video=video_from_frames(images, 12))[0]
    assert torch.equal(by_images["samples"], by_video["samples"])
    assert LATENT_FPS not in by_images and by_video[LATENT_FPS] == 12.0


def test_flow_interpolate_takes_the_videos_rate_and_gives_a_video():
    images = _frames()
    args = {"factor": 2.0, "target_fps": 0.0, "flow": "dis_fast", "flow_max_side": 0}
    out_i, fps_i, n_i, video_i = node("SVDLab_FlowInterpolate").interpolate(images=images, source_fps=12.0, **args)
    out_v, fps_v, n_v, video_v = node("SVDLab_FlowInterpolate").interpolate(
        video=video_from_frames(images, 12), source_fps=8.0, **args)  # the widget's 8 is replaced by 12
    assert torch.equal(out_i, out_v) and fps_i == fps_v == 24.0 and n_i == n_v == 2 * T - 1
    assert video_v.get_frame_rate() == 24 and video_v.get_components().images is out_v
    assert video_i.get_frame_count() == n_i


def test_extend_takes_the_video_rate_as_fps_conditioning(model, monkeypatch):
    seen = []

    def fake_extend(bundle, clip, plan, **kw):  # the node's wiring, not the pipeline (tested in test_extend)
        seen.append((clip, [s.params.fps for s in plan]))
        return clip

    monkeypatch.setattr(extend_nodes, "extend_video", fake_extend)
    images = _frames()
    args = {"segments": 1, "frames": 3, "steps": 1}
    by_images, _, _ = node("SVDLab_ExtendVideo").extend(model, images=images, fps=24, **args)
    by_video, info, video = node("SVDLab_ExtendVideo").extend(model, video=video_from_frames(images, 23.976), fps=7,
                                                               **args)
    assert torch.equal(seen[0][0], seen[1][0]) and seen[0][1] == seen[1][1] == [24]  # 23.976 rounded
    assert torch.equal(by_images, by_video) and "fps 24 (from the VIDEO)" in info
    assert video.get_frame_rate() == Fraction(2997, 125)  # the output keeps the VIDEO's exact rate


def _call(node_id: str, model, **frames):
    """Run a frame-taking node with the given frames inputs and otherwise default widgets."""
    cls = NODE_CLASS_MAPPINGS[node_id]
    if node_id in ("SVDLab_EncodeFrames", "SVDLab_ExtendVideo"):
        return getattr(cls(), cls.FUNCTION)(model, **frames)
    return getattr(cls(), cls.FUNCTION)(**frames)


@pytest.mark.parametrize("node_id", FRAME_NODES)
def test_exactly_one_of_images_and_video(node_id, model, folders):
    images = _frames()
    with pytest.raises(InputError, match=r"connect the frames: images \(IMAGE\) or video \(VIDEO\)"):
        _call(node_id, model)
    with pytest.raises(InputError, match=r"both images \(IMAGE\) and video \(VIDEO\) are connected"):
        _call(node_id, model, images=images, video=video_from_frames(images, 8))
    cls = NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()["optional"]
    assert spec["images"][0] == "IMAGE" and spec["video"][0] == "VIDEO" and "video" in spec["images"][1]["tooltip"]
    assert "connect the frames" in _validate(cls)  # neither connected: refused before the run
    assert _validate(cls, images=None) is True and _validate(cls, video=None) is True  # linked
    assert _validate(cls, images=UNSET, video=None) is True


def _validate(cls: type, **frames) -> bool | str:
    """VALIDATE_INPUTS as ComfyUI calls it for a node with unknown (None) widget values and these frames inputs."""
    params = inspect.signature(cls.VALIDATE_INPUTS).parameters.values()
    unknown = {p.name: None for p in params if p.default is inspect.Parameter.empty}
    return cls.VALIDATE_INPUTS(**unknown, **frames)


# ----------------------------------------------------------------------------------- decode and workflows


def test_decode_gives_a_video_at_the_rate_the_latent_was_made_for(model):
    latent = {"samples": torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))}
    images, video = node("SVDLab_Decode").decode(model, {**latent, LATENT_FPS: 9.0}, 14, 0)
    assert video.get_components().images is images and video.get_frame_rate() == 9
    _, default = node("SVDLab_Decode").decode(model, latent, 14, 0)
    assert default.get_frame_rate() == model.defaults.fps  # nothing says: the variant's default


def _workflow() -> dict:
    return {
        "1": {"class_type": "SVDLab_CheckpointLoader", "inputs": {
            "ckpt_name": "tiny.safetensors", "dtype": "fp32", "variant": "auto", "offload": "none"}},
        "2": {"class_type": "SVDLab_LoadImage", "inputs": {"image": "still.png"}},
        "3": {"class_type": "SVDLab_ImageToVideoConditioning", "inputs": {
            "model": ["1", 0], "image": ["2", 0], "width": W, "height": H, "frames": T, "fps": 9,
            "motion_bucket_id": 127, "cond_aug": 0.02, "seed": 1}},
        "4": {"class_type": "SVDLab_Sampler", "inputs": {
            "model": ["1", 0], "conditioning": ["3", 0], "sampler": "euler", "schedule": "karras", "steps": 1,
            "min_cfg": 1.0, "max_cfg": 2.5, "guidance": "linear", "seed": 2, "denoise": 1.0}},
        "5": {"class_type": "SVDLab_Decode", "inputs": {"model": ["1", 0], "latent": ["4", 0], "chunk_size": 14,
                                                        "overlap": 0}},
        "6": {"class_type": "SVDLab_FlowInterpolate", "inputs": {
            "video": ["5", 1], "factor": 2.0, "target_fps": 0.0, "source_fps": 8.0, "flow": "dis_fast",
            "flow_max_side": 0}},
        "7": {"class_type": "SVDLab_SaveVideo", "inputs": {
            "video": ["6", 3], "fps": 7.0, "format": "mp4", "quality": 80, "filename_prefix": "chain"}},
    }


def test_headless_workflow_passes_video_between_pack_nodes(folders):
    Image.new("RGB", (W, H), (200, 120, 40)).save(folders / "in" / "still.png")
    prompt = _workflow()
    assert validate(prompt, NODE_CLASS_MAPPINGS) == []
    results = execute(prompt, NODE_CLASS_MAPPINGS)
    assert results["5"].result[1].get_frame_rate() == 9  # the conditioning's fps, carried by the latent
    saved = results["7"].ui["images"][0]
    info = probe_video(folders / "out" / saved["filename"], count_frames=True)
    assert info.fps == pytest.approx(18.0) and info.frame_count == 2 * T - 1  # x2 of the VIDEO's 9, not the 7 or 8
    assert results["7"].result[0] is results["6"].result[3]


def test_headless_validation_of_video_links(folders):
    Image.new("RGB", (W, H), (200, 120, 40)).save(folders / "in" / "still.png")
    prompt = _workflow()
    prompt["7"]["inputs"] = {**prompt["7"]["inputs"], "images": ["6", 3]}
    del prompt["7"]["inputs"]["video"]
    problems = [str(p) for p in validate(prompt, NODE_CLASS_MAPPINGS)]
    assert problems == ["node 7 (SVDLab_SaveVideo) input 'images': expects IMAGE but is linked to output 3 of node 6 "
                        "(SVDLab_FlowInterpolate), which is VIDEO"]
    del prompt["7"]["inputs"]["images"]
    problems = [str(p) for p in validate(prompt, NODE_CLASS_MAPPINGS)]
    assert len(problems) == 1 and "connect the frames: images (IMAGE) or video (VIDEO)" in problems[0]
