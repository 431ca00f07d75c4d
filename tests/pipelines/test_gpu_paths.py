"""The pipelines and the trainer on CUDA, with tiny checkpoints (marked `gpu`: deselected by default, run with
``pytest -m gpu`` on a CUDA machine). The CPU suite covers their numerics; these catch device placement bugs:
orbits (SV3D_u, SV3D_p), keyframe interpolation (fusion, bidirectional, 12-channel concat), extend + loop, the
CLIP scorer, and training (LoRA in bf16 and the keyframe mode in fp16, gradient checkpointing, EMA, validation).
"""

from __future__ import annotations

import pytest
import torch
from keyframe_support import write_tiny_keyframe_checkpoint

from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.pipelines.decode import decode_latents
from comfyui_svd_lab.svd_model.pipelines.extend import build_segments, extend_video, extended_length
from comfyui_svd_lab.svd_model.pipelines.image_to_video import VideoParams
from comfyui_svd_lab.svd_model.pipelines.keyframes import interpolate_keyframes
from comfyui_svd_lab.svd_model.pipelines.multiview import orbit_cameras, orbit_video
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = "cuda"


def _gen() -> torch.Generator:
    return torch.Generator(DEV).manual_seed(0)


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    return load_bundle(write_tiny_checkpoint(tmp_path_factory.mktemp("gpu") / "svd.safetensors"), device=DEV)


@pytest.mark.parametrize(("family", "preset"), [(Family.SV3D_U, "static"), (Family.SV3D_P, "dynamic")])
def test_orbit_on_cuda(tmp_path, family, preset):
    bundle = load_bundle(write_tiny_checkpoint(tmp_path / f"{family.value}.safetensors", family), device=DEV)
    params = VideoParams(num_frames=5, width=64, height=64, steps=3, guidance="triangle")
    latents = orbit_video(bundle, _image(), orbit_cameras(preset, 5, 10.0, rng=0), params, generator=_gen())
    frames = decode_latents(bundle, latents, chunk_size=5)
    assert latents.device.type == "cuda" and frames.shape[:2] == (1, 5) and torch.isfinite(frames).all()


@pytest.mark.parametrize("method", ["fusion", "bidirectional"])
def test_keyframe_interpolation_on_cuda(svd, method):
    params = VideoParams(num_frames=5, width=64, height=64, steps=3)
    latents = interpolate_keyframes(svd, _image(0), _image(1), params, generator=_gen(), method=method)
    assert latents.device.type == "cuda" and latents.shape == (1, 5, 4, 8, 8) and torch.isfinite(latents).all()


def test_keyframe_checkpoint_and_extend_loop_on_cuda(svd, tmp_path):
    keyframe = load_bundle(write_tiny_keyframe_checkpoint(tmp_path / "kf.safetensors"), device=DEV)
    params = VideoParams(num_frames=5, width=64, height=64, steps=3)
    assert torch.isfinite(interpolate_keyframes(keyframe, _image(0), _image(1), params, generator=_gen())).all()
    seg = VideoParams(num_frames=4, width=64, height=64, steps=3)
    clip = torch.rand(1, 4, 3, 64, 64) * 2 - 1
    out = extend_video(svd, clip, build_segments(seg, 0, [{}, {}]), overlap=1, loop=True, loop_params=seg,
                       loop_generator=_gen())
    assert out.shape[:2] == (1, extended_length(4, [4, 4], 1, loop_frames=4)) and torch.isfinite(out).all()


def test_clip_scorer_on_cuda(tmp_path):
    pytest.importorskip("cv2")
    from comfyui_svd_lab.svd_model.curation.clip_scores import ClipScorer

    scorer = ClipScorer.from_checkpoint(write_tiny_checkpoint(tmp_path / "svd.safetensors"), device=DEV)
    emb = scorer.embed([(torch.rand(48, 64, 3) * 255).byte().numpy() for _ in range(3)])
    assert emb.device.type == "cuda" and emb.shape[0] == 3


@pytest.mark.parametrize(("mode", "precision"), [("image_to_video", "bf16"), ("keyframes", "fp16")])
def test_training_on_cuda(tmp_path, mode, precision):
    import train_support as ts

    from comfyui_svd_lab.svd_model.training.run import run_training

    ckpt = ts.write_micro_checkpoint(tmp_path / "micro.safetensors")
    ts.write_clips(tmp_path / "clips", count=3)
    config = ts.train_config(tmp_path, ckpt, tmp_path / "clips", device=DEV, precision=precision, steps=4,
                             gradient_checkpointing=True, ema_decay=0.9, validation__every=2, validation__steps=2,
                             mode=mode)
    result = run_training(config)
    assert result.step == 4 and len(result.validation) == 2 and result.weights_path.is_file()
