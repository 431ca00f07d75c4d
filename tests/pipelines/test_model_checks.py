"""Package policy (svd_model.pipelines.checks): which checkpoint image-to-video takes and the input-view size check;
a library caller (api.image_to_video) and the nodes get the same errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from keyframe_support import write_tiny_keyframe_checkpoint

from comfyui_svd_lab.nodes.video_nodes import Decode, ImageToVideoConditioning
from comfyui_svd_lab.svd_model.api import VideoParams, image_to_video
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.pipelines.checks import check_input_view, require_image_to_video_model
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

S = 64
SV3D = r"sv3d_p is an SV3D \(multi-view\) model; {what} needs an SVD / SVD-XT checkpoint.*multi-view node"
KEYFRAMES = r"is a keyframe-interpolation checkpoint \(UNet input 12 channels.*Keyframe Interpolate"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    return {
        "svd": load_bundle(write_tiny_checkpoint(root / "svd.safetensors")),
        "sv3d": load_bundle(write_tiny_checkpoint(root / "sv3d_p.safetensors", Family.SV3D_P)),
        "keyframes": load_bundle(write_tiny_keyframe_checkpoint(root / "keyframes.safetensors")),
    }


def test_an_svd_model_passes(bundles):
    require_image_to_video_model(bundles["svd"])


@pytest.mark.parametrize(("kind", "expect"), [("sv3d", SV3D.format(what="image_to_video")), ("keyframes", KEYFRAMES)])
def test_library_and_node_refuse_the_same_way(bundles, kind, expect):
    bundle = bundles[kind]
    params = VideoParams.for_variant("svd", num_frames=2, width=S, height=S, steps=1)
    with pytest.raises(InputError, match=expect):
        image_to_video(bundle, torch.zeros(1, 3, S, S), params, generator=torch.Generator())
    node_expect = expect.replace("image_to_video", "SVD Lab Image To Video Conditioning")
    with pytest.raises(InputError, match=node_expect):
        ImageToVideoConditioning().encode(bundle, torch.rand(1, S, S, 3), S, S, 2, 7, 127, 0.02, 0)


@pytest.mark.parametrize(("frames", "view"), [
    ((1, 3, 3, 64, 64), (1, 3, 64, 48)),  # other width
    ((1, 3, 3, 64, 64), (1, 3, 32, 64)),  # other height
    ((2, 3, 3, 64, 64), (1, 3, 64, 64)),  # two videos, one view
], ids=["width", "height", "batch"])
def test_input_view_must_fit_the_frames(frames, view):
    with pytest.raises(InputError, match="input view is .* the decoded frames .*: link the conditioning"):
        check_input_view(torch.zeros(frames), torch.zeros(view))
    check_input_view(torch.zeros(1, 3, 3, 64, 64), torch.zeros(1, 3, 64, 64))


def test_decode_node_refuses_a_view_of_another_size(bundles):
    conditioning = SimpleNamespace(input_view=torch.zeros(1, 3, 48, 64))
    latent = {"samples": torch.zeros(2, 4, S // 8, S // 8)}
    with pytest.raises(InputError, match="input view is 64x48, the decoded frames 64x64"):
        Decode().decode(bundles["sv3d"], latent, 2, 0, conditioning)
