"""VideoUNet: key layout against the official list, golden parity with sgm, and behaviour on a tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_svd_lab.svd_model.config import UNetConfig
from comfyui_svd_lab.svd_model.errors import ShapeError
from comfyui_svd_lab.svd_model.nn import attention as attention_module
from comfyui_svd_lab.svd_model.nn.attention import attention
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from conftest import assert_golden

PREFIX = "model.diffusion_model."
GOLDEN_CONFIG = UNetConfig(
    model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, False), context_dim=64
)
TINY = UNetConfig(
    in_channels=8,
    out_channels=4,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_levels=(True, False),
    context_dim=16,
    adm_in_channels=24,
    num_head_channels=32,
)
T = 3


# ---------------------------------------------------------------------------------------------- layout


def test_full_size_keys_and_shapes_match_official(reference_dir: Path) -> None:
    official = json.loads((reference_dir / "svd_keys.json").read_text())
    expected = {k[len(PREFIX) :]: tuple(v) for k, v in official.items() if k.startswith(PREFIX)}
    with torch.device("meta"):
        unet = VideoUNet(UNetConfig())
    actual = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == [], "keys missing from VideoUNet"
    assert sorted(set(actual) - set(expected)) == [], "keys VideoUNet has but the official file lacks"
    wrong = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert wrong == {}


# ---------------------------------------------------------------------------------------------- golden


@pytest.fixture(scope="module")
def golden_unet(golden_dir: Path) -> VideoUNet:
    from safetensors.torch import load_file

    state = load_file(str(golden_dir / "checkpoint.safetensors"))
    sub = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    unet = VideoUNet(GOLDEN_CONFIG).eval()
    unet.load_state_dict(sub, strict=True)
    return unet


@torch.no_grad()
def test_golden_unet_two_videos(golden_unet: VideoUNet, golden: dict[str, torch.Tensor]) -> None:
    frames = int(golden["unet.num_video_frames"])
    out = golden_unet(
        golden["unet.x"],
        golden["unet.timesteps"],
        golden["unet.context"],
        golden["unet.y"],
        frames,
        golden["unet.image_only_indicator"],
    )
    assert_golden(out, golden["unet.out"], "unet.out")


@torch.no_grad()
def test_golden_unet_one_video(golden_unet: VideoUNet, golden: dict[str, torch.Tensor]) -> None:
    frames = int(golden["unet.num_video_frames"])
    rows = slice(0, frames)
    out = golden_unet(
        golden["unet.x"][rows],
        golden["unet.timesteps"][rows],
        golden["unet.context"][rows],
        golden["unet.y"][rows],
        frames,
        torch.zeros(1, frames),
    )
    assert_golden(out, golden["unet_b1.out"], "unet_b1.out")


@pytest.mark.gpu
@torch.no_grad()
def test_golden_unet_cuda(golden_unet: VideoUNet, golden: dict[str, torch.Tensor]) -> None:
    """fp32 parity on CUDA needs TF32 off (TF32 convs alone give ~8e-4 relative); fp16 stays within 1e-2."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    frames = int(golden["unet.num_video_frames"])
    keys = ("unet.x", "unet.timesteps", "unet.context", "unet.y")
    inputs = [golden[k].cuda() for k in keys]
    indicator = golden["unet.image_only_indicator"].cuda()
    expected = golden["unet.out"]
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        unet = VideoUNet(GOLDEN_CONFIG).eval().cuda()
        unet.load_state_dict(golden_unet.state_dict())
        assert_golden(unet(*inputs, frames, indicator).cpu(), expected, "unet.out (cuda fp32)")
        half = unet.half()(*inputs, frames, indicator).cpu()
        assert half.dtype == torch.float32
        assert ((half - expected).abs().max() / expected.abs().max()).item() < 1e-2
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


# ---------------------------------------------------------------------------------------------- tiny


def make_unet(seed: int = 0) -> VideoUNet:
    torch.manual_seed(seed)
    unet = VideoUNet(TINY).eval()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("mix_factor"):
                param.normal_()  # alpha away from 0.5 so both branches matter
    return unet


def make_inputs(videos: int = 2, h: int = 4, w: int = 6, seed: int = 1) -> dict[str, torch.Tensor | int]:
    g = torch.Generator().manual_seed(seed)
    rows = videos * T
    return {
        "x": torch.randn(rows, TINY.in_channels, h, w, generator=g),
        "timesteps": torch.rand(rows, generator=g),
        "context": torch.randn(rows, 1, TINY.context_dim, generator=g),
        "y": torch.randn(rows, TINY.adm_in_channels, generator=g),
        "num_video_frames": T,
        "image_only_indicator": torch.zeros(videos, T),
    }


@torch.no_grad()
def test_output_shape_and_determinism() -> None:
    unet, inputs = make_unet(), make_inputs()
    first = unet(**inputs)
    assert first.shape == (2 * T, TINY.out_channels, 4, 6)
    assert first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, unet(**inputs))


@torch.no_grad()
def test_batch_of_two_equals_two_batches_of_one() -> None:
    unet, inputs = make_unet(), make_inputs()
    inputs["image_only_indicator"] = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    both = unet(**inputs)
    for v in range(2):
        rows = slice(v * T, (v + 1) * T)
        single = {k: (val[rows] if isinstance(val, torch.Tensor) else val) for k, val in inputs.items()}
        single["image_only_indicator"] = inputs["image_only_indicator"][v : v + 1]
        torch.testing.assert_close(unet(**single), both[rows], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bf16_close_to_fp32() -> None:
    unet, inputs = make_unet(), make_inputs()
    ref = unet(**inputs)
    out = unet.to(torch.bfloat16)(**inputs)
    assert out.dtype == torch.float32  # returned in the input dtype
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < 0.05, f"bf16 relative error {err:.3g}"


def _perturb_temporal(unet: VideoUNet) -> None:
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".time_stack." in name or ".time_pos_embed." in name or name.endswith("mix_factor"):
                param.add_(torch.randn_like(param))


@torch.no_grad()
def test_image_only_frames_ignore_temporal_layers() -> None:
    unet, inputs = make_unet(), make_inputs()
    inputs["image_only_indicator"] = torch.ones(2, T)
    before = unet(**inputs)
    _perturb_temporal(unet)
    assert torch.equal(unet(**inputs), before)


@torch.no_grad()
def test_video_frames_use_temporal_layers() -> None:
    unet, inputs = make_unet(), make_inputs()
    before = unet(**inputs)
    _perturb_temporal(unet)
    assert not torch.allclose(unet(**inputs), before)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    inputs = make_inputs(videos=1)
    grads = []
    for use_checkpoint in (False, True):
        unet = make_unet().train()
        unet.gradient_checkpointing = use_checkpoint
        unet(**inputs).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(make_unet().parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_shape_errors() -> None:
    unet, inputs = make_unet(), make_inputs()
    with pytest.raises(ShapeError, match="num_video_frames"):
        unet(**{**inputs, "num_video_frames": 4})
    with pytest.raises(ShapeError, match="image_only_indicator"):
        unet(**{**inputs, "image_only_indicator": torch.zeros(1, 2 * T)})
    with pytest.raises(ShapeError, match="multiple"):
        unet(**{**inputs, "x": torch.randn(2 * T, TINY.in_channels, 5, 6)})


# ---------------------------------------------------------------------------------------------- attention


def test_attention_matches_naive_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 2 * 8, generator=g) for n in (5, 7, 7))
    qh, kh, vh = (t.view(3, -1, 2, 8).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / 8**0.5, dim=-1)
    expected = (weights @ vh).transpose(1, 2).reshape(3, 5, 16)
    torch.testing.assert_close(attention(q, k, v, heads=2), expected)


def test_attention_fp16_is_upcast() -> None:
    g = torch.Generator().manual_seed(0)
    # logits of ~1e6 overflow float16 (max 65504); the float32 computation does not.
    q, k, v = (300 * torch.randn(2, 4, 64, generator=g) for _ in range(3))
    out = attention(q.half(), k.half(), v.half(), heads=1)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    ref = attention(q.half().float(), k.half().float(), v.half().float(), heads=1)
    torch.testing.assert_close(out.float(), ref, rtol=2e-3, atol=0.5)


def test_attention_batch_chunking_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 3, 4 * 8, generator=g) for _ in range(3))
    whole = attention(q, k, v, heads=4)
    monkeypatch.setattr(attention_module, "MAX_BATCH_HEADS", 8)  # chunks of 2 batches
    torch.testing.assert_close(attention(q, k, v, heads=4), whole, rtol=0, atol=0)


def test_single_token_cross_attention_shortcut_is_exact():
    from comfyui_svd_lab.svd_model.nn.attention import CrossAttention

    torch.manual_seed(0)
    attn = CrossAttention(64, heads=2, dim_head=32, context_dim=48)
    x, ctx = torch.randn(6, 10, 64), torch.randn(2, 1, 48)  # one context row per 3 query rows
    with torch.no_grad():
        fast = attn(x, ctx)  # inference: to_out(to_v(ctx)) broadcast
    full = attn(x, ctx.repeat_interleave(3, dim=0))  # autograd on: the full attention path
    assert torch.allclose(fast, full, atol=1e-6)
