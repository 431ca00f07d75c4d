"""SV3D orbits: the reference's camera formulas and vector conditioning, triangle guidance, object image
preparation, orbit runs on tiny SV3D_u / SV3D_p checkpoints (package and nodes), and the error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from train_support import one_thread_fixture

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, bridge
from comfyui_svd_lab.nodes import video_nodes as video_nodes_module
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.diffusion.guidance import frame_scales
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.pipelines.multiview import (
    OrbitCameras,
    custom_orbit,
    dynamic_orbit,
    orbit_cameras,
    orbit_condition,
    orbit_params,
    orbit_video,
    parse_angles,
    static_orbit,
    with_input_view,
)
from comfyui_svd_lab.svd_model.pipelines.object_image import prepare_object_image
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

S, T = 32, 3  # tiny orbit: 32x32, 3 views


#: Tiny models: one intra-op thread is several times faster than two on a loaded machine (and changes no
#: assertion: every comparison is between runs with the same setting).
_one_thread = one_thread_fixture()


def node(node_id: str):
    return NODE_CLASS_MAPPINGS[node_id]()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder / "sv3d_u.safetensors", Family.SV3D_U, seed=5)
    write_tiny_checkpoint(folder / "sv3d_p.safetensors", Family.SV3D_P, seed=6)
    write_tiny_checkpoint(folder / "svd.safetensors", seed=7)
    return folder


@pytest.fixture(scope="module")
def sv3d_u(models):
    return load_bundle(models / "sv3d_u.safetensors")


@pytest.fixture(scope="module")
def sv3d_p(models):
    return load_bundle(models / "sv3d_p.safetensors")


@pytest.fixture(scope="module")
def svd(models):
    return load_bundle(models / "svd.safetensors")


def _object(size: int = S) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: a disc on white."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = (x**2 + y**2 < 0.4).float()
    rgb = torch.stack([0.2 + 0.6 * x.abs(), 0.3 * disc, 0.8 - 0.5 * y.abs()]) * disc + (1 - disc)
    return (rgb * 2 - 1)[None]


# ------------------------------------------------------------------------------------- camera formulas


def test_static_orbit_matches_the_reference_formulas():
    cams = static_orbit(21, 10.0)
    # hand-computed: polar = 90 - 10 = 80 degrees; azimuths 360/21 * (1..20) then 0 (mod 360), relative to the last
    assert torch.allclose(cams.polars_rad(), torch.full((21,), 1.3962634015954636, dtype=torch.float64))
    assert cams.azimuths_deg[0] == pytest.approx(17.142857142857142)
    assert cams.azimuths_deg[9] == pytest.approx(171.42857142857142)
    assert cams.azimuths_deg[-1] == 0.0 and cams.relative_azimuths_deg == cams.azimuths_deg
    assert cams.azimuths_rad()[0].item() == pytest.approx(0.29919930034188508)
    assert cams.azimuths_rad()[-1].item() == 0.0
    assert cams.azimuths_rad().dtype == torch.float64 and cams.is_static()


def test_custom_azimuths_are_taken_relative_to_the_last_frame():
    cams = custom_orbit([5.0, 10.0, 15.0, 20.0], [10.0, 20.0, 30.0, 350.0], 4)
    assert cams.relative_azimuths_deg == pytest.approx((20.0, 30.0, 40.0, 0.0))  # (a - 350) mod 360
    assert cams.polars_rad().tolist() == pytest.approx([math.radians(d) for d in (85, 80, 75, 70)])
    neg = custom_orbit([0.0], [-30.0, 0.0, 30.0, 60.0], 4)
    assert neg.relative_azimuths_deg == pytest.approx((270.0, 300.0, 330.0, 0.0))
    assert neg.elevations_deg == (0.0,) * 4 and not neg.is_static()
    assert custom_orbit([10.0], None, 21).is_static()  # no azimuths: the evenly spaced orbit


def test_dynamic_orbit_follows_the_reference_procedure():
    a = dynamic_orbit(21, 10.0, rng=np.random.default_rng(3))
    b = dynamic_orbit(21, 10.0, rng=np.random.default_rng(3))
    c = dynamic_orbit(21, 10.0, rng=np.random.default_rng(4))
    assert a == b and a != c and a.preset == "dynamic" and a.num_frames == 21
    assert a.azimuths_deg[-1] == 0.0  # the input view, rolled to the end
    assert a.elevations_deg[-1] == pytest.approx(10.0)  # odd sinusoids around sample 0, symmetric smoothing
    az = np.array(a.azimuths_deg[:-1])
    assert (np.diff(az) > 0).all() and 0 < az[0] and az[-1] < 360  # one turn, increasing
    assert max(map(abs, a.elevations_deg)) < 90 and np.std(a.elevations_deg) > 1.0  # it moves
    assert not a.is_static()
    small = orbit_cameras("dynamic", 5, 0.0, rng=11)
    assert small.num_frames == 5 and small == orbit_cameras("dynamic", 5, 0.0, rng=11)


def test_camera_json_for_reconstruction():
    cams = custom_orbit([0.0, 30.0, 90.0], [90.0, 180.0, 0.0], 3)
    data = json.loads(cams.to_json("sv3d_p"))
    assert data["model"] == "sv3d_p" and data["num_frames"] == 3 and data["input_view_frame"] == 2
    first, top = data["frames"][0], data["frames"][2]
    assert (first["elevation_deg"], first["azimuth_deg"]) == (0.0, 90.0)
    assert first["position"] == pytest.approx([0.0, 1.0, 0.0], abs=1e-12)  # azimuth 90: +y
    assert top["position"] == pytest.approx([0.0, 0.0, 1.0], abs=1e-12) and top["polar_rad"] == 0.0
    assert data["frames"][1]["position"] == pytest.approx([-math.cos(math.radians(30)), 0, 0.5], abs=1e-12)


def test_camera_list_errors_are_specific():
    with pytest.raises(InputError, match="elevations has 2 values but the orbit has 21 frames"):
        custom_orbit([10.0, 20.0], None, 21)
    with pytest.raises(InputError, match="azimuths has 3 values but the orbit has 4 frames"):
        custom_orbit([10.0], [1.0, 2.0, 3.0], 4)
    with pytest.raises(InputError, match=r"elevation 95 degrees \(frame 1\) is outside \[-90, 90\]"):
        custom_orbit([0.0, 95.0], [10.0, 0.0], 2)
    with pytest.raises(InputError, match=r"azimuth 400 degrees \(frame 0\) is outside \[-360, 360\]"):
        custom_orbit([0.0], [400.0, 0.0], 2)
    with pytest.raises(InputError, match="finite"):
        OrbitCameras((0.0, float("nan")), (0.0, 0.0))
    with pytest.raises(InputError, match=r"item 2 \('ten'\) is not a number"):
        parse_angles("10, ten", "elevations")
    with pytest.raises(ConfigError, match="unknown orbit preset"):
        orbit_cameras("spiral")
    with pytest.raises(InputError, match="1..128 frames"):
        static_orbit(0)
    assert parse_angles("[10, 12.5;\n15 -3]") == [10.0, 12.5, 15.0, -3.0] and parse_angles("  ") == []
    cls = NODE_CLASS_MAPPINGS["SVDLab_OrbitCameras"]
    assert "azimuths has 2 values" in cls.VALIDATE_INPUTS("custom", 3, "10", "1, 2")
    assert "above the maximum" in cls.VALIDATE_INPUTS("static", 500, "", "")
    assert cls.VALIDATE_INPUTS("custom", 3, "10, 20, 30", "") is True
    assert "not one of static, dynamic, custom" in cls.VALIDATE_INPUTS("spiral", 3, "", "")
    assert cls.VALIDATE_INPUTS("static", 21, "junk", "") is True  # lists only matter for custom


# ------------------------------------------------------------------------- conditioning and guidance


def _embedding(values, dim: int) -> np.ndarray:
    """The reference's timestep embedding, written out: cos-first, max period 10000, float32 values."""
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    args = np.asarray(values, dtype=np.float32).astype(np.float64)[:, None] * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def test_sv3d_p_vector_is_the_embedding_of_the_camera_angles(sv3d_p):
    cams = custom_orbit([0.0, 20.0, 10.0], [120.0, 240.0, 0.0], 3)
    params = orbit_params(sv3d_p, cams, width=S, height=S, steps=2)
    cond, uncond = orbit_condition(sv3d_p, _object(), cams, params, generator=torch.Generator().manual_seed(0))
    vec = cond.vector[0].double().numpy()  # (3, 1280) = cond_aug 256 | polar 512 | azimuth 512
    assert vec.shape == (3, 1280) and torch.equal(cond.vector, uncond.vector)  # same vector in both branches
    assert np.allclose(vec[:, :256], _embedding([1e-5] * 3, 256), atol=1e-6)
    polars = [math.radians(90.0 - e) for e in (0.0, 20.0, 10.0)]
    azimuths = [math.radians(a) for a in (120.0, 240.0, 0.0)]
    assert np.allclose(vec[:, 256:768], _embedding(polars, 512), atol=1e-5)
    assert np.allclose(vec[:, 768:], _embedding(azimuths, 512), atol=1e-5)


def test_sv3d_params_and_triangle_guidance_follow_the_reference(sv3d_p):
    params = orbit_params(sv3d_p, static_orbit())
    assert (params.num_frames, params.width, params.height, params.steps) == (21, 576, 576, 50)
    assert (params.guidance, params.min_cfg, params.max_cfg, params.cond_aug) == ("triangle", 1.0, 2.5, 1e-5)
    scales = frame_scales(params.guidance, params.min_cfg, params.max_cfg, params.num_frames)
    v = np.linspace(0, 1, 21)
    expected = 1.0 + 1.5 * 2 * np.abs(v - np.floor(v + 0.5))  # sgm TrianglePredictionGuider, period 1
    assert np.allclose(scales.numpy(), expected, atol=1e-6)
    assert scales[0] == scales[-1] == 1.0 and scales[10] == pytest.approx(2.5) and scales[1] == pytest.approx(1.15)


def test_sampler_auto_guidance_is_the_triangle_for_an_orbit(sv3d_u, monkeypatch):
    cams = node("SVDLab_OrbitCameras").make("static", T, 10.0, 0, "", "")[0]
    cond = node("SVDLab_OrbitConditioning").encode(sv3d_u, _image_hwc(), cams, S, 1)[0]
    seen = {}

    def fake_sample_video(bundle, c, u, params, **kw):
        seen["guidance"] = params.guidance
        raise RuntimeError("stop")

    monkeypatch.setattr(video_nodes_module, "sample_video", fake_sample_video)
    sampler = node("SVDLab_Sampler")
    for choice, expected in (("auto", "triangle"), ("linear", "linear")):
        with pytest.raises(RuntimeError, match="stop"):
            sampler.sample(sv3d_u, cond, "euler", "karras", 2, 1.0, 2.5, choice, 0, 1.0)
        assert seen["guidance"] == expected
    assert NODE_CLASS_MAPPINGS["SVDLab_Sampler"].INPUT_TYPES()["required"]["guidance"][1]["default"] == "auto"


# ----------------------------------------------------------------------------------------- end to end


def _image_hwc(size: int = S) -> torch.Tensor:
    return ((_object(size)[0].permute(1, 2, 0) + 1) / 2)[None]  # IMAGE (1, H, W, 3)


@pytest.mark.parametrize("family", ["sv3d_u", "sv3d_p"])
def test_orbit_video_end_to_end_and_deterministic(family, sv3d_u, sv3d_p):
    bundle = {"sv3d_u": sv3d_u, "sv3d_p": sv3d_p}[family]
    cams = static_orbit(T, 10.0) if family == "sv3d_u" else orbit_cameras("dynamic", T, 5.0, rng=1)
    params = orbit_params(bundle, cams, width=S, height=S, steps=2)
    steps = []
    a = orbit_video(bundle, _object(), cams, params, generator=torch.Generator().manual_seed(4), callback=steps.append)
    b = orbit_video(bundle, _object(), cams, params, generator=torch.Generator().manual_seed(4))
    c = orbit_video(bundle, _object(), cams, params, generator=torch.Generator().manual_seed(5))
    assert a.shape == (1, T, 4, S // 8, S // 8) and torch.isfinite(a).all() and len(steps) == 2
    assert torch.equal(a, b) and not torch.equal(a, c)
    frames = torch.rand(1, T, 3, S, S)
    replaced = with_input_view(frames, _object())
    assert torch.equal(replaced[:, -1], _object()) and torch.equal(replaced[:, :-1], frames[:, :-1])


def test_sv3d_p_output_depends_on_the_cameras(sv3d_p):
    noise = torch.randn(1, T, 4, S // 8, S // 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for elevation in (0.0, 30.0):
        cams = static_orbit(T, elevation)
        params = orbit_params(sv3d_p, cams, width=S, height=S, steps=2)
        outs.append(orbit_video(sv3d_p, _object(), cams, params, generator=torch.Generator().manual_seed(1),
                                noise=noise))
    assert not torch.allclose(outs[0], outs[1])


def test_orbit_nodes_end_to_end(models, tmp_path):
    bridge.configure(models_dirs=[models], output_dir=tmp_path / "out")
    try:
        model, _ = node("SVDLab_CheckpointLoader").load("sv3d_p.safetensors", "fp32", "auto", "none")
        rgba = torch.zeros(1, 40, 60, 4)
        rgba[:, 10:30, 35:55, :3] = torch.tensor([0.9, 0.2, 0.1])
        rgba[:, 10:30, 35:55, 3] = 1.0  # an opaque red box off-centre, transparent elsewhere
        image = node("SVDLab_PrepareObjectImage").prepare(rgba, 64, 0.5)[0]
        assert image.shape == (1, 64, 64, 3)
        cams, text = node("SVDLab_OrbitCameras").make("custom", T, 10.0, 0, "0, 10, 20", "60, 120, 0")
        assert [f["azimuth_deg"] for f in json.loads(text)["frames"]] == [60.0, 120.0, 0.0]
        cond, latent, info = node("SVDLab_OrbitConditioning").encode(model, image, cams, S, 3)
        assert latent["samples"].shape == (T, 4, S // 8, S // 8) and "sv3d_p orbit: 3 frames" in info
        assert "triangle" in info and cond.params.guidance == "triangle"
        sampled = node("SVDLab_Sampler").sample(model, cond, "euler", "karras", 2, 1.0, 2.5, "auto", 0, 1.0)[0]
        frames = node("SVDLab_Decode").decode(model, sampled, 14, 0)[0]
        assert frames.shape == (T, S, S, 3) and 0 <= frames.min() and frames.max() <= 1
        pasted = node("SVDLab_Decode").decode(model, sampled, 14, 0, cond)[0]  # the reference's input view at the end
        assert torch.equal(pasted[:-1], frames[:-1]) and not torch.equal(pasted[-1], frames[-1])
        view = (cond.input_view[0].permute(1, 2, 0) + 1) / 2  # the prepared image at the orbit's size
        assert cond.input_view.shape == (1, 3, S, S) and torch.allclose(pasted[-1], view, atol=1e-6)
        saved = node("SVDLab_SaveCameras").save(cams, "orbits/run")
        path = tmp_path / "out" / saved["ui"]["text"][0]
        assert json.loads(path.read_text())["frames"][1]["elevation_deg"] == 10.0
    finally:
        bridge.reset()


def test_wrong_checkpoint_and_camera_mismatch_errors(svd, sv3d_u, sv3d_p):
    cams = static_orbit(T, 10.0)
    with pytest.raises(InputError, match="svd is an SVD .image-to-video. checkpoint; orbits need an SV3D"):
        node("SVDLab_OrbitConditioning").encode(svd, _image_hwc(), cams, S, 0)
    with pytest.raises(InputError, match="orbits need an SV3D"):
        orbit_video(svd, _object(), cams)
    with pytest.raises(InputError, match="sv3d_u cannot follow a camera path"):
        node("SVDLab_OrbitConditioning").encode(sv3d_u, _image_hwc(), orbit_cameras("dynamic", T, rng=0), S, 0)
    params = orbit_params(sv3d_p, static_orbit(5), width=S, height=S, steps=2)
    with pytest.raises(InputError, match="camera list has 3 frames but the run is set to 5"):
        orbit_condition(sv3d_p, _object(), cams, params)
    with pytest.raises(InputError, match="not a multiple of 16"):
        node("SVDLab_OrbitConditioning").encode(sv3d_p, _image_hwc(), cams, 40, 0)
    assert "multiple of 8" in NODE_CLASS_MAPPINGS["SVDLab_OrbitConditioning"].VALIDATE_INPUTS(100)
    with pytest.raises(InputError, match="multi-view node"):
        node("SVDLab_ImageToVideoConditioning").encode(sv3d_p, _image_hwc(), S, S, T, 7, 127, 0.02, 0)


# ---------------------------------------------------------------------------------- object preparation


def _centroid(dark: torch.Tensor) -> tuple[float, float]:
    ys, xs = dark.nonzero(as_tuple=True)
    return ys.float().mean().item(), xs.float().mean().item()


def test_prepare_rgba_centres_the_object_on_white():
    rgb = torch.full((1, 3, 60, 80), -1.0)  # black where transparent: must not show
    rgb[:, 0, 5:25, 50:70] = 0.6
    alpha = torch.zeros(1, 60, 80)
    alpha[:, 5:25, 50:70] = 1.0  # 20x20 object near the top-right corner
    out = prepare_object_image(rgb, 64, 0.5, alpha=alpha)
    assert out.shape == (1, 3, 64, 64)
    assert torch.allclose(out[0, :, :6, :6], torch.ones(3, 6, 6), atol=1e-3)  # white background
    obj = (out[0] < 0.9).any(0)
    assert _centroid(obj) == pytest.approx((31.5, 31.5), abs=1.0)  # centred
    rows = obj.any(1).nonzero()
    assert 30 <= int(rows[-1] - rows[0] + 1) <= 34  # object_ratio 0.5: ~half the frame
    framed = prepare_object_image(rgb, 64, alpha=alpha)  # no ratio: the input's framing (side 80)
    rows = (framed[0] < 0.9).any(0).any(1).nonzero()
    assert 14 <= int(rows[-1] - rows[0] + 1) <= 18  # 20 px of 80 -> 16 of 64
    with pytest.raises(InputError, match="fully transparent"):
        prepare_object_image(rgb, 64, alpha=torch.zeros(60, 80))
    with pytest.raises(InputError, match="object_ratio"):
        prepare_object_image(rgb, 64, 1.5)
    with pytest.raises(InputError, match="must have the image's size"):
        prepare_object_image(rgb, 64, alpha=torch.ones(1, 10, 10))


def test_prepare_rgb_pads_with_the_estimated_background():
    grey = 0.2  # a plain grey background in [-1, 1]
    rgb = torch.full((1, 3, 50, 90), grey)
    rgb[:, :, 30:46, 4:20] = torch.tensor([0.9, -0.5, -0.5])[:, None, None]  # object at the bottom left
    out = prepare_object_image(rgb, 48, 0.5)
    assert out.shape == (1, 3, 48, 48)
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), grey), atol=1e-3)  # background kept
    obj = (out[0] - grey).abs().amax(0) > 0.2
    assert _centroid(obj) == pytest.approx((23.5, 23.5), abs=1.0)
    plain = prepare_object_image(torch.full((2, 3, 20, 40), grey), 32)  # nothing to find: padded square
    assert plain.shape == (2, 3, 32, 32) and torch.allclose(plain, torch.full_like(plain, grey), atol=1e-4)


def test_prepare_node_uses_the_mask_like_load_image_gives_it():
    image = torch.zeros(1, 30, 30, 3)  # black everywhere
    mask = torch.ones(1, 30, 30)  # LoadImage: 1 = transparent
    mask[:, 2:12, 2:12] = 0.0
    image[:, 2:12, 2:12] = torch.tensor([0.1, 0.8, 0.1])
    out = node("SVDLab_PrepareObjectImage").prepare(image, 64, 0.5, mask, "background")[0]
    assert out.shape == (1, 64, 64, 3) and torch.allclose(out[0, 0, 0], torch.ones(3), atol=1e-3)
    obj = (out[0] < 0.9).any(-1)
    assert _centroid(obj) == pytest.approx((31.5, 31.5), abs=1.0)
    inverted = node("SVDLab_PrepareObjectImage").prepare(image, 64, 0.5, 1 - mask, "object")[0]
    assert torch.allclose(out, inverted)
