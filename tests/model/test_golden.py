"""Numerical parity with the reference implementation (sgm), through the loader users use.

Run against another folder in the golden_tiny format with ``pytest tests/test_golden.py --golden-dir DIR``.
Every tensor is checked with |a - b| <= 1e-4 * max|ref| + 1e-5 (the golden README's bound, fp32 CPU).
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from comfyui_svd_lab.svd_model.api import VideoParams, decode_latents, encode_condition, encode_frames, sample_video
from comfyui_svd_lab.svd_model.conditioning import Cond, augment, vector_conditioning
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.diffusion.denoiser import make_model_fn
from comfyui_svd_lab.svd_model.diffusion.guidance import linear_frame_scales
from comfyui_svd_lab.svd_model.diffusion.schedules import karras_sigmas
from comfyui_svd_lab.svd_model.nn.image_encoder import encode_image, preprocess
from comfyui_svd_lab.svd_model.training.losses import diffusion_loss, edm_loss, edm_weighting
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from conftest import assert_golden


@pytest.fixture(scope="module")
def bundle(golden_dir):
    return load_bundle(golden_dir / "checkpoint.safetensors", dtype=torch.float32, variant="svd")


@pytest.fixture(scope="module")
def params(golden):
    t = int(golden["unet.num_video_frames"].item())
    h, w = golden["cond.image"].shape[-2:]
    fps_id = int(golden["cond.fps_id"][0])
    return VideoParams(
        num_frames=t, width=w, height=h, fps=fps_id + 1, motion_bucket_id=int(golden["cond.motion_bucket_id"][0]),
        cond_aug=float(golden["cond.cond_aug"][0]), steps=golden["sample.sigmas"].numel() - 1,
        min_cfg=1.0, max_cfg=float(golden["sample.guider_scale"].max()), guidance="linear",
    )


@pytest.fixture(scope="module")
def conds(bundle, params, golden):
    return encode_condition(bundle, golden["cond.image"], params, aug_noise=golden["cond.aug_noise"])


def test_conditioner(bundle, conds, golden, params):
    cond, uncond = conds
    assert_golden(augment(golden["cond.image"], params.cond_aug, noise=golden["cond.aug_noise"]),
                  golden["cond.cond_frames"], "cond.cond_frames")
    assert_golden(preprocess(golden["cond.image"]), golden["cond.clip_preprocessed"], "cond.clip_preprocessed")
    assert_golden(cond.crossattn, golden["cond.c_crossattn"], "cond.c_crossattn")
    assert_golden(cond.concat, golden["cond.c_concat"], "cond.c_concat")
    assert_golden(cond.vector[0], golden["cond.c_vector"], "cond.c_vector")
    assert_golden(uncond.vector[0], golden["cond.uc_vector"], "cond.uc_vector")
    assert torch.count_nonzero(uncond.crossattn) == 0 and torch.count_nonzero(uncond.concat) == 0


def test_unet_forward(bundle, golden):
    t = int(golden["unet.num_video_frames"].item())
    unet = bundle.model.unet
    args = (golden["unet.x"], golden["unet.timesteps"])
    kw = {"context": golden["unet.context"], "y": golden["unet.y"], "num_video_frames": t}
    with torch.no_grad():
        out = unet(*args, **kw, image_only_indicator=golden["unet.image_only_indicator"])
        out_b1 = unet(*(a[:t] for a in args), context=kw["context"][:t], y=kw["y"][:t], num_video_frames=t,
                      image_only_indicator=torch.zeros(1, t))
    assert_golden(out, golden["unet.out"], "unet.out")
    assert_golden(out_b1, golden["unet_b1.out"], "unet_b1.out")


def test_denoiser(bundle, conds, golden):
    cond, _ = conds
    x = golden["denoiser.x"][None]  # (1, t, c, h, w)
    sigma = golden["denoiser.sigma"][:1]  # one sigma per video (all rows are equal)
    with torch.no_grad():
        out = make_model_fn(bundle.model.unet)(x, sigma, cond)
        per_row = make_model_fn(bundle.model.unet)(x, golden["denoiser.sigma"][None], cond)
    assert_golden(out[0], golden["denoiser.out"], "denoiser.out")
    assert_golden(per_row[0], golden["denoiser.out"], "denoiser.out (per-frame sigma)")


def test_vae(bundle, golden):
    clip = golden["vae.encode_in"]  # (n, 3, H, W): n frames of one clip
    with torch.no_grad():
        assert_golden(bundle.model.cond_vae.encode_mode(clip), golden["vae.cond_encoder_mode"], "vae.cond_encoder_mode")
        assert_golden(bundle.model.first_stage.encode_moments(clip), golden["vae.first_stage_moments"],
                      "vae.first_stage_moments")
    assert_golden(encode_frames(bundle, clip[None])[0], golden["vae.first_stage_mode_scaled"],
                  "vae.first_stage_mode_scaled")
    chunk = int(golden["vae.decoding_t"].item())
    latents = golden["vae.decode_in"][None]
    assert_golden(decode_latents(bundle, latents, chunk_size=chunk)[0], golden["vae.decode_out"], "vae.decode_out")
    assert_golden(decode_latents(bundle, latents, chunk_size=latents.shape[1])[0],
                  golden["vae.decode_out_unchunked"], "vae.decode_out_unchunked")


def test_guided_sampling_run(bundle, conds, golden, params):
    cond, uncond = conds
    steps = []
    latents = sample_video(bundle, cond, uncond, params, noise=golden["sample.init_noise"][None],
                           callback=lambda info: steps.append(info))
    assert_golden(karras_sigmas(params.steps), golden["sample.sigmas"], "sample.sigmas")
    assert_golden(linear_frame_scales(params.min_cfg, params.max_cfg, params.num_frames)[None],
                  golden["sample.guider_scale"], "sample.guider_scale")
    assert_golden(torch.stack([torch.as_tensor(s.sigma, dtype=torch.float32) for s in steps]),
                  golden["sample.step_sigma"], "sample.step_sigma")
    assert_golden(torch.stack([s.x[0] for s in steps]), golden["sample.step_x"], "sample.step_x")
    assert_golden(torch.stack([s.denoised[0] for s in steps]), golden["sample.step_denoised"], "sample.step_denoised")
    assert_golden(latents[0], golden["sample.final_latents"], "sample.final_latents")
    chunk = int(golden["vae.decoding_t"].item())
    assert_golden(decode_latents(bundle, latents, chunk_size=chunk)[0], golden["sample.decoded"], "sample.decoded")


def test_training_loss(bundle, golden):
    t = int(golden["unet.num_video_frames"].item())
    b = golden["loss.image"].shape[0]
    model = bundle.model
    with torch.no_grad():
        crossattn = encode_image(model.image_encoder, golden["loss.image"])[:, None]  # (b, 1, ctx)
        noisy = augment(golden["loss.image"], float(golden["loss.cond_aug"][0]), noise=golden["loss.aug_noise"])
        concat = model.cond_vae.encode_mode(noisy)
    values = {
        "fps_id": golden["loss.fps_id"].reshape(b, t),
        "motion_bucket_id": golden["loss.motion_bucket_id"].reshape(b, t),
        "cond_aug": golden["loss.cond_aug"].reshape(b, t),
    }
    cond = Cond(crossattn, concat, vector_conditioning(Family.SVD, values, b, t))
    assert_golden(rearrange(cond.vector, "b t d -> (b t) d"), golden["loss.c_vector"], "loss.c_vector")
    assert_golden(cond.crossattn.repeat_interleave(t, 0), golden["loss.c_crossattn"], "loss.c_crossattn")
    assert_golden(cond.concat.repeat_interleave(t, 0), golden["loss.c_concat"], "loss.c_concat")

    def video(x):
        return rearrange(x, "(b t) ... -> b t ...", b=b)

    def flatten(x):
        return rearrange(x, "b t ... -> (b t) ...")

    sigma = video(golden["loss.sigma"])  # (b, t): the reference draws one sigma per frame row
    x0, noise = video(golden["loss.x0"]), video(golden["loss.noise"])
    model_fn = make_model_fn(model.unet)
    with torch.no_grad():
        denoised = model_fn(x0 + sigma[..., None, None, None] * noise, sigma, cond)
        per_video = edm_loss(model_fn, x0, sigma, noise, cond)  # (b,): mean over the frames of each clip
    flat_sigma = golden["loss.sigma"]
    per_row = diffusion_loss(flatten(denoised), golden["loss.x0"], edm_weighting(flat_sigma))
    assert_golden(flatten(denoised), golden["loss.denoised"], "loss.denoised")
    assert_golden(per_row, golden["loss.per_row"], "loss.per_row")
    assert_golden(per_row.mean().reshape(1), golden["loss.mean"], "loss.mean")
    assert_golden(per_video, golden["loss.per_row"].reshape(b, t).mean(1), "loss.per_video")
    assert torch.allclose(edm_weighting(flat_sigma), (flat_sigma**2 + 1) / flat_sigma**2)
