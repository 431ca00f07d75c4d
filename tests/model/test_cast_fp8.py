"""Cast-on-use layers (svd_model.nn.cast): identical to the plain torch layers while they do not cast, the
ComfyUI partial-loading protocol (flag, weight / bias functions), and fp8 weight storage of the UNet."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comfyui_svd_lab.svd_model.config import UNetConfig
from comfyui_svd_lab.svd_model.errors import ConfigError
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


# ------------------------------------------------------------------------------------------ fp8 storage


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("storage, bound", [("fp8_e4m3fn", 0.08), ("fp8_e5m2", 0.15)])
def test_fp8_storage_halves_the_weights_and_stays_close_to_bf16(storage, bound):
    unet = cast.convert(_randomize(VideoUNet(UNET))).to(torch.bfloat16)
    norms = {n: p.dtype for n, p in unet.named_parameters() if "norm" in n}
    args = _unet_inputs()
    with torch.no_grad():
        plain = unet(*args)
        before = sum(p.numel() * p.element_size() for p in unet.parameters())
        count = cast.store_fp8(unet, storage)
        unet.compute_dtype = torch.bfloat16
        after = sum(p.numel() * p.element_size() for p in unet.parameters())
        stored = unet(*args)
    fp8 = cast.FP8_STORAGE[storage]
    layers = [m for m in unet.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv3d | nn.Conv1d)]
    assert count == len(layers) and all(m.weight.dtype == fp8 and m.comfy_cast_weights for m in layers)
    assert all(m.bias is None or m.bias.dtype == torch.bfloat16 for m in layers)
    assert {n: p.dtype for n, p in unet.named_parameters() if "norm" in n} == norms  # norms keep bf16
    assert after < 0.6 * before and stored.dtype == plain.dtype == torch.float32
    assert 0 < _rel(stored, plain) < bound


def test_fp8_storage_refuses_unknown_names_and_modules_without_weights():
    with pytest.raises(ConfigError, match="unknown weight storage 'fp4'.*fp8_e4m3fn, fp8_e5m2"):
        cast.store_fp8(cast.convert(nn.Linear(2, 2)), "fp4")
    with pytest.raises(ConfigError, match="no cast-on-use Linear or Conv"):
        cast.store_fp8(cast.convert(nn.LayerNorm(4)))


def test_fp8_weights_load_save_as_fp8_and_reload_exactly(tmp_path):
    from safetensors import safe_open

    from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle

    source = save_bundle(make_tiny_model(), tmp_path / "tiny.safetensors")
    bundle = load_bundle(source, dtype="bf16", weight_storage="fp8_e4m3fn")
    unet = bundle.model.unet
    assert bundle.dtype == unet.dtype == torch.bfloat16 and unet.input_blocks[0][0].weight.dtype == torch.float8_e4m3fn
    assert bundle.model.image_encoder.dtype == torch.bfloat16  # only the UNet is stored in fp8
    saved = save_bundle(bundle, tmp_path / "fp8.safetensors")
    with safe_open(str(saved), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if k.startswith("model.diffusion_model.")}
    assert dtypes == {"F8_E4M3", "BF16"}
    assert saved.stat().st_size < 0.6 * source.stat().st_size
    again = load_bundle(saved, dtype="bf16", weight_storage="fp8_e4m3fn")  # fp8 -> bf16 -> fp8: lossless
    expected = unet.state_dict()
    assert all(torch.equal(v, expected[k]) and v.dtype == expected[k].dtype
               for k, v in again.model.unet.state_dict().items())
    upcast = load_bundle(saved, dtype="fp16")  # without the option the fp8 file is upcast, values kept
    assert upcast.model.unet.input_blocks[0][0].weight.dtype == torch.float16
    assert torch.equal(upcast.model.unet.input_blocks[0][0].weight, unet.input_blocks[0][0].weight.half())
    with pytest.raises(ConfigError, match="unknown weight storage"):
        load_bundle(source, weight_storage="int4")


def test_streamed_fp8_weights_travel_as_fp8(tmp_path):
    from comfyui_svd_lab.svd_model.nn import streaming
    from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle

    bundle = load_bundle(save_bundle(make_tiny_model(), tmp_path / "t.safetensors"), dtype="bf16",
                         weight_storage="fp8_e5m2")
    unet = bundle.model.unet
    args = tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a
                 for a in _unet_inputs(unet.config, size=8))
    with torch.inference_mode():
        plain = unet(*args[:4], args[4])
    streaming.attach(unet, "cpu")
    dtypes: set[torch.dtype] = set()
    hook = unet.out.register_forward_pre_hook(lambda m, a: dtypes.update(p.dtype for p in m.parameters()))
    try:
        with torch.inference_mode():
            streamed = unet(*args[:4], args[4])
    finally:
        hook.remove()
        streaming.detach(unet)
    assert torch.float8_e5m2 in dtypes
    torch.testing.assert_close(streamed, plain, rtol=1e-2, atol=1e-2)


def test_fp8_error_on_the_golden_model(golden_dir, golden):
    """fp8 storage against bf16 on the reference's tiny model (the closing note reports these numbers)."""
    from comfyui_svd_lab.svd_model.weights.loader import load_bundle

    args = (golden["unet.x"], golden["unet.timesteps"], golden["unet.context"], golden["unet.y"],
            int(golden["unet.num_video_frames"]), golden["unet.image_only_indicator"])
    outs = {}
    for name, storage in [("bf16", None), ("fp8_e4m3fn", "fp8_e4m3fn"), ("fp8_e5m2", "fp8_e5m2")]:
        bundle = load_bundle(golden_dir / "checkpoint.safetensors", dtype="bf16", weight_storage=storage)
        with torch.inference_mode():
            outs[name] = bundle.model.unet(*args)
    expected = golden["unet.out"]
    errors = {name: _rel(out, expected) for name, out in outs.items()}
    vs_bf16 = {name: _rel(outs[name], outs["bf16"]) for name in ("fp8_e4m3fn", "fp8_e5m2")}
    print("relative L2 error of unet.out: vs the fp32 reference", errors, "; vs bf16", vs_bf16)
    # Measured: bf16 0.014, e4m3 0.094 (0.095 vs bf16), e5m2 0.175: one bit less mantissa, about twice the error.
    assert errors["bf16"] < 0.02
    assert errors["bf16"] < errors["fp8_e4m3fn"] < 0.12 and errors["fp8_e4m3fn"] < errors["fp8_e5m2"] < 0.25
    assert vs_bf16["fp8_e4m3fn"] < vs_bf16["fp8_e5m2"]


def test_the_denoiser_feeds_an_fp8_unet_in_its_compute_dtype(tmp_path):
    """The inputs go to the UNet in bf16 (its compute dtype), never narrowed to the fp8 of its first weight."""
    from comfyui_svd_lab.svd_model.conditioning import Cond
    from comfyui_svd_lab.svd_model.diffusion.denoiser import make_model_fn
    from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle

    bundle = load_bundle(save_bundle(make_tiny_model(), tmp_path / "t.safetensors"), dtype="bf16",
                         weight_storage="fp8_e4m3fn")
    unet, config = bundle.model.unet, bundle.config.unet
    seen: list[torch.dtype] = []
    hook = unet.register_forward_pre_hook(lambda _m, args, kwargs: seen.extend(
        [args[0].dtype, kwargs["context"].dtype, kwargs["y"].dtype]), with_kwargs=True)
    g = _gen(3)
    b, t, h = 1, T, 8
    cond = Cond(crossattn=torch.randn(b, 1, config.context_dim, generator=g),
                concat=torch.randn(b, config.in_channels - config.out_channels, h, h, generator=g),
                vector=torch.randn(b, t, config.adm_in_channels, generator=g))
    try:
        with torch.inference_mode():
            out = make_model_fn(unet)(torch.randn(b, t, config.out_channels, h, h, generator=g), torch.ones(b), cond)
    finally:
        hook.remove()
    assert seen == [torch.bfloat16] * 3 and out.dtype == torch.float32 and torch.isfinite(out).all()
