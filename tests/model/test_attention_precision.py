"""Attention precision modes (svd_model.nn.attention): agreement with float32, per-model selection, the logit
measurement hook, auto's float32 layers, and the loader's bf16 default on GPUs with native bf16."""

from __future__ import annotations

import copy

import pytest
import torch

from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.nn.attention import (
    ATTENTION_PRECISIONS,
    CrossAttention,
    attention,
    attention_layers,
    attention_precision,
    overflow_layers,
    record_attention_stats,
    set_attention_precision,
)
from comfyui_svd_lab.svd_model.weights import loader
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model


def _qkv(scale: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(2, 6, 2 * 64, generator=g) for _ in range(3))  # 2 heads of 64


@pytest.mark.parametrize("mode", ATTENTION_PRECISIONS)
def test_fp16_modes_agree_with_fp32(mode: str) -> None:
    # logits up to ~1e5: a float16 q @ k.T would overflow; no mode may
    q, k, v = (t.half() for t in _qkv(40.0))
    expected = attention(q.float(), k.float(), v.float(), heads=2)
    out = attention(q, k, v, heads=2, precision=mode)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    rel = float((out.float() - expected).norm() / expected.norm())
    assert rel < (1e-6 if mode == "fp32" else 2e-3), rel


def test_bf16_and_fp32_inputs_are_computed_as_they_are() -> None:
    q, k, v = _qkv(1.0)
    for mode in ATTENTION_PRECISIONS:
        torch.testing.assert_close(attention(q, k, v, heads=2, precision=mode), attention(q, k, v, heads=2))
        b = [t.bfloat16() for t in (q, k, v)]
        assert torch.equal(attention(*b, heads=2, precision=mode), attention(*b, heads=2, precision="half"))


def test_precision_is_chosen_per_model() -> None:
    unet, other = make_tiny_model().unet, make_tiny_model().unet
    assert attention_precision(unet) == "fp32"
    layers = set_attention_precision(unet, "prescale")
    assert layers == len(list(attention_layers(unet))) > 0
    assert attention_precision(unet) == "prescale" and attention_precision(other) == "fp32"
    assert {layer.precision for _, layer in attention_layers(unet)} == {"prescale"}
    assert {layer.precision for _, layer in attention_layers(other)} == {"fp32"}
    assert CrossAttention.precision == "fp32"
    with pytest.raises(ConfigError, match="unknown attention precision"):
        set_attention_precision(unet, "fp8")
    with pytest.raises(ConfigError, match="no attention layer"):
        set_attention_precision(unet, "auto", ["input_blocks.9.attn1"])
    with pytest.raises(ConfigError, match="only apply to attention precision 'auto'"):
        set_attention_precision(unet, "half", [next(attention_layers(unet))[0]])


def test_modes_give_the_unet_output_in_fp16_within_tolerance() -> None:
    base = make_tiny_model().unet
    g = torch.Generator().manual_seed(0)
    c, t = base.config, 3
    args = (torch.randn(t, c.in_channels, 16, 16, generator=g), torch.rand(t, generator=g),
            torch.randn(t, 1, c.context_dim, generator=g), torch.randn(t, c.adm_in_channels, generator=g), t)
    with torch.no_grad():
        reference = base(*args)
        half = copy.deepcopy(base).half()
        outs = {}
        for mode in ATTENTION_PRECISIONS:
            set_attention_precision(half, mode)
            outs[mode] = half(*args)
    for mode, out in outs.items():
        rel = float((out - reference).norm() / reference.norm())
        assert rel < 1e-2, (mode, rel)  # fp16 weights and activations dominate; the mode adds little
    assert not torch.equal(outs["fp32"], outs["half"])  # the modes do compute differently


def test_record_attention_stats_measures_the_logits() -> None:
    unet = make_tiny_model().unet
    path, layer = next(attention_layers(unet))  # input_blocks.1.1.transformer_blocks.0.attn1: spatial self
    with torch.no_grad():
        layer.to_q.weight.mul_(30.0)  # large logits in one layer
    g = torch.Generator().manual_seed(0)
    c, t = unet.config, 2
    args = (torch.randn(t, c.in_channels, 8, 8, generator=g), torch.rand(t, generator=g),
            torch.randn(t, 1, c.context_dim, generator=g), torch.randn(t, c.adm_in_channels, generator=g), t)
    seen = {}
    layer.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0].clone()))
    hooks = [len(m._forward_pre_hooks) for _, m in attention_layers(unet)]
    with torch.no_grad(), record_attention_stats(unet) as stats:
        out = unet(*args)
    with torch.no_grad():
        plain = unet(*args)
    torch.testing.assert_close(out, plain)  # measuring changes nothing
    assert [s.path for s in stats] == [p for p, _ in attention_layers(unet)]
    assert [len(m._forward_pre_hooks) for _, m in attention_layers(unet)] == hooks  # removed on exit
    first = stats[0]
    assert first.kind == "spatial self" and first.calls == 1 and first.tokens == 64
    x = seen["x"]
    q = layer.to_q(x).view(t, 64, 1, 64).transpose(1, 2)
    k = layer.to_k(x).view(t, 64, 1, 64).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)).detach()
    assert first.max_abs_qk == pytest.approx(float(logits.abs().max()), rel=1e-4)
    assert first.max_abs_logit == pytest.approx(float(logits.abs().max()) / 8, rel=1e-4)
    assert first.max_logit == pytest.approx(float(logits.max()) / 8, rel=1e-4)
    cross = [s for s in stats if s.kind.endswith("cross")]
    assert cross and all(s.calls == 0 for s in cross)  # one context token: the softmax is 1, nothing to measure
    assert first.max_abs_logit > 10 * max(s.max_abs_logit for s in stats[1:])
    just_past = 65504.0 / (0.9 * first.max_abs_logit)  # a margin that puts the first layer past the limit
    assert overflow_layers(stats, margin=just_past) == [path]
    assert overflow_layers(stats) == []  # nothing near float16's range in the tiny model


def test_auto_upcasts_only_the_named_layers() -> None:
    unet = make_tiny_model().unet.half()
    names = [p for p, _ in attention_layers(unet)]
    set_attention_precision(unet, "auto", names[:1])
    modes = {p: layer.precision for p, layer in attention_layers(unet)}
    assert modes[names[0]] == "fp32" and set(modes[n] for n in names[1:]) == {"auto"}
    assert attention_precision(unet) == "auto"


def test_dtype_auto_prefers_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    assert loader.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d=None: (8, 0))
    assert loader.resolve_dtype(None, cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d=None: (7, 5))
    assert loader.resolve_dtype("auto", cuda) == torch.float16
    assert loader.resolve_dtype("fp32", cuda) == torch.float32


@pytest.mark.gpu
def test_prescale_runs_the_flash_kernel_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (t.half().cuda() for t in _qkv(40.0))
    expected = attention(q.float(), k.float(), v.float(), heads=2)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for mode in ("prescale", "half", "auto"):
            out = attention(q, k, v, heads=2, precision=mode)
            assert torch.isfinite(out).all()
            assert float((out.float() - expected).norm() / expected.norm()) < 2e-3
        with pytest.raises(RuntimeError):  # fp32 inputs: no flash kernel
            attention(q, k, v, heads=2, precision="fp32")
