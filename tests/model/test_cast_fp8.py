"""Cast-on-use layers (svd_model.nn.cast): identical to the plain torch layers while they do not cast, the
ComfyUI partial-loading protocol (flag, weight / bias functions), and fp8 weight storage of the UNet."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comfyui_svd_lab.svd_model.config import UNetConfig
from comfyui_svd_lab.svd_model.nn import cast
from comfyui_svd_lab.svd_model.nn.layers import GroupNorm32
from comfyui_svd_lab.svd_model.nn.text_encoder import OpenCLIPTextTower, TextEncoderConfig
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.nn.vae import AutoencoderKL
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, tiny_config

UNET = UNetConfig(in_channels=8, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(True, False), context_dim=16, adm_in_channels=24, num_head_channels=32)
T = 3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim < 2 else p[0].numel() ** -0.5))
    return module.eval()


def _unet_inputs(config: UNetConfig = UNET, b: int = 2, size: int = 8) -> tuple:
    g = _gen(1)
    rows = b * T
    return (torch.randn(rows, config.in_channels, size, size, generator=g), torch.rand(rows, generator=g),
            torch.randn(rows, 2, config.context_dim, generator=g),
            torch.randn(rows, config.adm_in_channels, generator=g), T, torch.zeros(b, T))


def _layers() -> list[nn.Module]:
    return [nn.Linear(6, 5), nn.Conv1d(4, 5, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1), nn.Conv3d(4, 5, 3),
            GroupNorm32(2, 4), nn.GroupNorm(2, 4), nn.LayerNorm(6), nn.Embedding(10, 6)]


def _input(layer: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = _gen(2)
    if isinstance(layer, nn.Embedding):
        return torch.randint(0, 10, (3, 4), generator=g)
    shape = {nn.Linear: (3, 6), nn.LayerNorm: (3, 6), nn.Conv1d: (2, 4, 7), nn.Conv3d: (2, 4, 3, 5, 5)}
    kind = next((k for k in shape if isinstance(layer, k)), None)
    return torch.randn(shape.get(kind, (2, 4, 5, 5)), generator=g).to(dtype)


# ------------------------------------------------------------------------------------------ inactive layers


@pytest.mark.parametrize("index", range(8))
def test_each_converted_layer_is_the_plain_layer_bit_for_bit(index):
    layer = _randomize(_layers()[index])
    x = _input(layer)
    with torch.no_grad():
        plain = layer(x)
    params = {k: id(v) for k, v in layer.named_parameters()}
    cast.convert(layer)
    assert isinstance(layer, cast.CastLayer) and isinstance(layer, type(_layers()[index]))
    assert {k: id(v) for k, v in layer.named_parameters()} == params  # the same Parameter objects
    with torch.no_grad():
        assert torch.equal(layer(x), plain)


def test_converted_unet_vae_and_text_tower_compute_exactly_what_the_plain_ones_do():
    unet = _randomize(VideoUNet(UNET))
    vae = _randomize(AutoencoderKL(tiny_config().first_stage), 3)
    text = _randomize(OpenCLIPTextTower(TextEncoderConfig(vocab_size=50, context_length=8, width=64, layers=1,
                                                          mlp_width=128, embed_dim=32)), 4)
    z = torch.randn(T, 4, 4, 4, generator=_gen(5))
    tokens = torch.tensor([[0, 5, 7, 49, 0, 0], [0, 3, 49, 0, 0, 0]])
    with torch.no_grad():
        before = (unet(*_unet_inputs()), vae.decode(z, T), text(tokens))
        keys = [list(m.state_dict()) for m in (unet, vae, text)]
        for module in (unet, vae, text):
            cast.convert(module)
            cast.convert(module)  # idempotent
        after = (unet(*_unet_inputs()), vae.decode(z, T), text(tokens))
    assert [list(m.state_dict()) for m in (unet, vae, text)] == keys
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert type(vae.decoder.conv_out).__name__ == "CastAE3DConv"  # a subclass of Conv2d with its own forward
    assert isinstance(text.token_embedding, cast.CastEmbedding)


def test_svd_model_builds_cast_layers_for_every_network():
    model = make_tiny_model()
    kinds = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)
    layers = [(p, m) for p, m in model.named_modules() if isinstance(m, kinds)]
    assert {p.split(".")[0] for p, _ in layers} == {"unet", "first_stage", "cond_vae", "image_encoder"}
    assert all(isinstance(m, cast.CastLayer) and not m.casts() for _, m in layers)
    lists = [m.weight_function for _, m in layers]
    assert len({id(x) for x in lists}) == len(lists)  # a patcher appends to them: one list per layer


# ------------------------------------------------------------------------------------------ casting


@pytest.mark.parametrize("index", range(8))
def test_flag_casts_weights_to_the_input_dtype(index):
    """Weights in fp32, input in bf16: with the flag the layer computes with bf16 weights (GroupNorm32: in fp32).
    The result equals the plain layer holding those cast weights exactly (the same kernel on the same values)."""
    layer = cast.convert(_randomize(_layers()[index]))
    wide = not isinstance(layer, GroupNorm32 | nn.Embedding)
    x = _input(layer, torch.bfloat16 if wide else torch.float32)
    reference = copy.deepcopy(layer).to(torch.bfloat16 if wide else torch.float32)
    with torch.no_grad():
        expected = reference(x)
        if isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            with pytest.raises(RuntimeError):
                layer(x)  # the plain path does not cast: dtypes differ
        layer.comfy_cast_weights = True
        out = layer(x)
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    assert layer.weight.dtype == torch.float32  # the stored weight is untouched


def test_weight_and_bias_functions_apply_to_a_copy_and_wiping_restores_the_plain_layer():
    layer = cast.convert(_randomize(nn.Linear(6, 5)))
    x = _input(layer)
    stored_w, stored_b = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer.weight_function.append(lambda w: w.mul_(2.0))  # in place, as LoRA patches may be
    layer.bias_function.append(lambda b: b + 1.0)
    with torch.no_grad():
        out = layer(x)
    assert torch.equal(out, F.linear(x, 2.0 * stored_w, stored_b + 1.0))
    assert torch.equal(layer.weight, stored_w) and torch.equal(layer.bias, stored_b)
    # What ComfyUI's wipe_lowvram_weight does: restore the flag, empty the lists.
    layer.prev_comfy_cast_weights = layer.comfy_cast_weights
    layer.comfy_cast_weights = True
    layer.comfy_cast_weights = layer.prev_comfy_cast_weights
    del layer.prev_comfy_cast_weights
    layer.weight_function, layer.bias_function = [], []
    assert not layer.casts()
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, stored_w, stored_b))


def test_functions_run_in_the_derived_conv_and_norm32():
    vae = cast.convert(_randomize(AutoencoderKL(tiny_config().first_stage), 3))
    z = torch.randn(T, 4, 4, 4, generator=_gen(5))
    conv, norm = vae.decoder.conv_out, vae.decoder.norm_out
    with torch.no_grad():
        plain = vae.decode(z, T)
        conv.weight_function, conv.bias_function = [torch.zeros_like], [torch.zeros_like]
        zeroed = vae.decode(z, T)  # the 2-D conv of AE3DConv outputs zeros: only time_mix_conv's bias remains
        conv.weight_function, conv.bias_function = [], []
        norm.bias_function = [lambda b: b + 1.0]
        shifted = vae.decode(z, T)
    bias = conv.time_mix_conv.bias.view(1, -1, 1, 1).expand_as(zeroed)
    assert torch.equal(zeroed, bias.to(zeroed.dtype))
    assert not torch.equal(shifted, plain)
    assert norm.cast_weight_bias(z.half(), torch.float32)[1].dtype == torch.float32


def test_whole_unet_casting_with_identity_functions_is_exact():
    unet = cast.convert(_randomize(VideoUNet(UNET)))
    with torch.no_grad():
        plain = unet(*_unet_inputs())
        for _, layer in cast.cast_layers(unet):
            layer.comfy_cast_weights = True
            layer.weight_function = [lambda w: w]
        assert torch.equal(unet(*_unet_inputs()), plain)
