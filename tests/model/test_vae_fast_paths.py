"""The temporal decoder's fast paths give the reference's values: channels-last, in-place under no-grad, bf16.

The blocks write into their own fresh intermediates when autograd is off and the decoder runs channels-last on
the CPU (bench/decode_vs_comfyui.py measures the speed); these tests pin that the values do not change, that
the caller's tensors are never written, that autograd still works, and what the opt-in bf16 decode costs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from test_vae import images, latents, random_vae

from comfyui_svd_lab.svd_model.nn.vae import decode_chunked
from comfyui_svd_lab.svd_model.nn.vae_blocks import VideoResnetBlock


def reference_video_block(block: VideoResnetBlock, x: torch.Tensor, t: int) -> torch.Tensor:
    """sgm's VideoResBlock written out plainly: out-of-place, contiguous, blend alpha * temporal + (1 - alpha) * x."""
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(F.silu(block.norm2(h)))
    spatial = (x if block.nin_shortcut is None else block.nin_shortcut(x)) + h
    video = rearrange(spatial, "(b t) c h w -> b c t h w", t=t).contiguous()
    stack = block.time_stack
    h = stack.in_layers[2](F.silu(stack.in_layers[0](video)))
    temporal = video + stack.out_layers[3](F.silu(stack.out_layers[0](h)))
    alpha = torch.sigmoid(block.mix_factor)
    return rearrange(alpha * temporal + (1.0 - alpha) * video, "b c t h w -> (b t) c h w")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("width_change", [False, True])
def test_video_block_matches_plain_reference(memory_format: torch.memory_format, width_change: bool) -> None:
    vae = random_vae()
    level = vae.decoder.up[0] if width_change else vae.decoder.up[1]  # up.0's first block: 64 -> 32 channels
    block = level.block[0]
    assert (block.nin_shortcut is not None) == width_change
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, block.norm1.num_channels, 8, 8, generator=gen).contiguous(memory_format=memory_format)
    x_before = x.clone()
    with torch.inference_mode():
        fast = block(x, 3)  # two videos of 3 frames
        expected = reference_video_block(block, x.contiguous(), 3)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, x_before), "the block wrote into its input"


def test_channels_last_decode_equals_contiguous_decode() -> None:
    vae = random_vae()
    z = latents(5)
    with torch.inference_mode():
        vae.channels_last = False
        plain = vae.decode(z, 5)
        vae.channels_last = True
        fast = vae.decode(z, 5)
        vae.channels_last = None  # the default: channels-last on the CPU
        default = vae.decode(z, 5)
    assert fast.is_contiguous() and fast.dtype == torch.float32
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(default, fast, rtol=0, atol=0)


def test_no_grad_path_equals_autograd_path_and_keeps_inputs() -> None:
    """Under no-grad the blocks update in place; with autograd on they must not (and gradients must flow)."""
    vae = random_vae()
    z = latents(4).contiguous(memory_format=torch.channels_last)  # already in the decoder's layout: no copy
    z_before = z.clone()
    with torch.no_grad():
        in_place = vae.decode(z, 4)
    assert torch.equal(z, z_before), "decode wrote into the caller's latents"
    with torch.enable_grad():
        out_of_place = vae.decode(z, 4)
        out_of_place.square().mean().backward()
    torch.testing.assert_close(in_place, out_of_place.detach(), rtol=1e-5, atol=1e-5)  # float32 rounding order
    grads = [p.grad for name, p in vae.named_parameters() if name.endswith("mix_factor")]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_encoder_keeps_its_input_under_no_grad() -> None:
    vae = random_vae()
    x = images(2)
    x_before = x.clone()
    with torch.no_grad():
        moments = vae.encode_moments(x)
    with torch.enable_grad():
        again = vae.encode_moments(x)
    assert torch.equal(x, x_before)
    torch.testing.assert_close(moments, again.detach(), rtol=1e-6, atol=1e-6)


def test_bf16_decode_is_opt_in_and_close() -> None:
    """compute_dtype=bf16 returns float32 frames within a bf16-sized error of the float32 decode."""
    vae = random_vae()
    z = latents(4)
    with torch.inference_mode():
        exact = vae.decode(z, 4)
        half = vae.decode(z, 4, compute_dtype=torch.bfloat16)
        chunked = decode_chunked(vae, z, 2, num_frames_per_video=4, compute_dtype=torch.bfloat16)
        per_chunk = torch.cat([vae.decode(z[:2], 2, compute_dtype=torch.bfloat16),
                               vae.decode(z[2:], 2, compute_dtype=torch.bfloat16)])
    assert half.dtype == torch.float32 and vae.dtype == torch.float32
    rel = ((half - exact).norm() / exact.norm()).item()
    assert 0 < rel < 2e-2, rel  # > 0: it really ran in bf16; bf16 has 8 significant bits
    torch.testing.assert_close(chunked, per_chunk, rtol=0, atol=0)


def test_decode_latents_passes_compute_dtype(tmp_path) -> None:
    """The pipeline's decode_latents takes the opt-in dtype through to every chunk; None stays the reference."""
    from comfyui_svd_lab.svd_model.api import decode_latents, load_bundle
    from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

    bundle = load_bundle(write_tiny_checkpoint(tmp_path / "svd.safetensors", seed=5))
    scaled = latents(4)[None] * bundle.config.scale_factor  # (1, 4, 4, 8, 8)
    vae = bundle.model.first_stage
    with torch.inference_mode():
        exact = decode_latents(bundle, scaled, chunk_size=2)
        half = decode_latents(bundle, scaled, chunk_size=2, compute_dtype=torch.bfloat16)
        direct = decode_chunked(vae, scaled[0] / bundle.config.scale_factor, 2, num_frames_per_video=4,
                                compute_dtype=torch.bfloat16)
    torch.testing.assert_close(half[0], direct, rtol=0, atol=0)
    assert not torch.equal(half, exact) and half.dtype == exact.dtype == torch.float32
