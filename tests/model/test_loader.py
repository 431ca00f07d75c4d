"""Loading through the user-facing loader: round trips, detection, dtypes, diffusers folders, bad files."""

from __future__ import annotations

import pytest
import torch

from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError
from comfyui_svd_lab.svd_model.nn.model import SVDModel
from comfyui_svd_lab.svd_model.weights.checkpoint import CheckpointReader, save_checkpoint
from comfyui_svd_lab.svd_model.weights.detect import guess_variant, infer_config
from comfyui_svd_lab.svd_model.weights.diffusers_keys import (
    clip_vision_openclip_to_hf,
    unet_sgm_to_diffusers,
    vae_sgm_to_diffusers,
)
from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, tiny_config, write_tiny_checkpoint

CASES = [(Family.SVD, False), (Family.SVD, True), (Family.SV3D_U, False), (Family.SV3D_P, False)]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_svd_xt.safetensors", seed=3)


@pytest.mark.parametrize(("family", "image_decoder"), CASES)
def test_config_round_trip(family, image_decoder):
    config = tiny_config(family, image_decoder=image_decoder)
    with torch.device("meta"):
        model = SVDModel(config)
    assert infer_config(model.official_shapes()) == config


@pytest.mark.parametrize(("family", "image_decoder"), CASES)
def test_load_save_load_is_lossless(tmp_path, family, image_decoder):
    path = write_tiny_checkpoint(tmp_path / "a.safetensors", family, seed=1, image_decoder=image_decoder)
    bundle = load_bundle(path)
    assert bundle.family is family and bundle.config == tiny_config(family, image_decoder=image_decoder)
    original = CheckpointReader(path)
    saved = save_bundle(bundle, tmp_path / "b.safetensors")
    again = CheckpointReader(saved)
    assert set(again) == set(original)
    for key in original:
        assert again[key].dtype == original[key].dtype and torch.equal(again[key], original[key]), key
    assert load_bundle(saved).config == bundle.config


def test_variant_and_dtypes(tiny_path):
    bundle = load_bundle(tiny_path, dtype="bf16")
    assert bundle.variant == "svd_xt"  # from the file name; svd and svd_xt have identical shapes
    assert bundle.defaults.num_frames == 25
    assert bundle.model.unet.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert bundle.model.image_encoder.conv1.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bundle.model.first_stage.parameters())  # VAEs stay fp32
    assert all(p.dtype == torch.float32 for p in bundle.model.cond_vae.parameters())
    assert load_bundle(tiny_path, variant="svd").defaults.num_frames == 14  # explicit override
    assert not any(p.requires_grad for p in bundle.model.parameters())
    with pytest.raises(ConfigError, match="does not fit"):
        load_bundle(tiny_path, variant="sv3d_p")
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_bundle(tiny_path, dtype="fp8")


def test_same_dtype_load_is_zero_copy(tiny_path):
    bundle = load_bundle(tiny_path, dtype=torch.float32)
    reader = CheckpointReader(tiny_path)
    base = reader._mmap  # the file mapping: weights must live inside it, not in copies
    weight = bundle.model.unet.out[2].weight
    # A fresh mapping gives other addresses, so compare against the values and check the storage is not owned.
    assert torch.equal(weight, reader["model.diffusion_model.out.2.weight"])
    assert base is not None and not weight.untyped_storage().resizable()


def test_guess_variant():
    assert guess_variant(Family.SVD, "svd.safetensors") == "svd"
    assert guess_variant(Family.SVD, "svd_xt.safetensors") == "svd_xt"
    assert guess_variant(Family.SVD, "svd_xt_1_1.safetensors") == "svd_xt_1_1"
    assert guess_variant(Family.SVD, "AnimateLCM-SVD-xt-1.1.safetensors") == "animatelcm_svd_xt"  # few-step
    assert guess_variant(Family.SV3D_P, "anything.safetensors") == "sv3d_p"


def _write(path, shapes):
    save_checkpoint(path, {k: torch.zeros(s) for k, s in shapes.items()})
    return path


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"cond_stage_model.transformer.x": (2,), "model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3)},
         "Stable Diffusion 1.x/2.x"),
        ({"conditioner.embedders.1.model.ln_final.weight": (4,), "model.diffusion_model.out.2.weight": (4,)},
         "SDXL"),
        ({"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "Flux"),
        ({"down_blocks.0.resnets.0.conv1.weight": (4, 4, 3, 3)}, "diffusers-format"),
        ({"foo.bar": (1,)}, "unknown model"),
    ],
)
def test_foreign_checkpoints_are_named(tmp_path, keys, message):
    path = _write(tmp_path / "other.safetensors", keys)
    with pytest.raises(CheckpointError, match=f"not an SVD-family checkpoint.*{message}"):
        load_bundle(path)


def _tiny_tensors():
    return make_tiny_model(seed=2).official_state_dict()


def test_missing_component(tmp_path):
    sd = {k: v for k, v in _tiny_tensors().items() if not k.startswith("first_stage_model.")}
    with pytest.raises(CheckpointError, match="first-stage VAE"):
        load_bundle(save_checkpoint(tmp_path / "x.safetensors", sd))
    sd = {k: v for k, v in _tiny_tensors().items() if not k.startswith("conditioner.embedders.3.")}
    with pytest.raises(CheckpointError, match="conditioning VAE"):
        load_bundle(save_checkpoint(tmp_path / "y.safetensors", sd))


def test_missing_unexpected_and_mismatched_keys(tmp_path):
    sd = _tiny_tensors()
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    del sd[key]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): " + key.replace(".", r"\.")):
        load_bundle(save_checkpoint(tmp_path / "m.safetensors", sd))
    sd = _tiny_tensors()
    sd["model_ema.decay"] = torch.tensor(0.999)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): model_ema\.decay"):
        load_bundle(save_checkpoint(tmp_path / "u.safetensors", sd))
    sd = _tiny_tensors()
    sd[key] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*file \[64, 32\], model \[64, 64\]"):
        load_bundle(save_checkpoint(tmp_path / "s.safetensors", sd))


def test_text_tower_leftovers_are_ignored(tmp_path):
    sd = _tiny_tensors()
    sd["conditioner.embedders.0.open_clip.model.token_embedding.weight"] = torch.zeros(8, 4)
    sd["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.tensor(4.6)
    bundle = load_bundle(save_checkpoint(tmp_path / "t.safetensors", sd))
    assert "conditioner.embedders.0.open_clip.model.logit_scale" not in bundle.model.official_state_dict()


def _save_diffusers_folder(model, root):
    sd = model.official_state_dict()

    def part(prefix):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    save_checkpoint(root / "unet" / "diffusion_pytorch_model.safetensors",
                    unet_sgm_to_diffusers(part("model.diffusion_model.")))
    save_checkpoint(root / "vae" / "diffusion_pytorch_model.fp16.safetensors",
                    {k: v.half() for k, v in vae_sgm_to_diffusers(part("first_stage_model.")).items()})
    save_checkpoint(root / "image_encoder" / "model.safetensors",
                    clip_vision_openclip_to_hf(part("conditioner.embedders.0.open_clip.model.visual.")))


def test_diffusers_folder_loads(tmp_path):
    model = make_tiny_model(seed=5)
    _save_diffusers_folder(model, tmp_path / "svd_diffusers")
    bundle = load_bundle(tmp_path / "svd_diffusers")
    ours = model.official_state_dict()
    loaded = bundle.model.official_state_dict()
    for key, value in ours.items():
        if key.startswith(("model.diffusion_model.", "conditioner.embedders.0.")):
            assert torch.equal(loaded[key], value), key
        elif key.startswith("first_stage_model.decoder."):  # written as the fp16 variant, loaded as fp32
            assert torch.equal(loaded[key], value.half().float()), key
    # The concat-path encoder is the diffusers VAE encoder (+ its quant_conv); it has no decoder.
    assert bundle.model.cond_vae.decoder is None
    shared = bundle.model.cond_vae.encoder.conv_in.weight, bundle.model.first_stage.encoder.conv_in.weight
    assert shared[0].data_ptr() == shared[1].data_ptr()  # one tensor serves both, converted once
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model.first_stage.encode_mode(x)  # the identity quant_conv keeps the encoder's output
        assert torch.allclose(bundle.model.first_stage.encode_mode(x), expected, atol=2e-2)


def test_not_a_diffusers_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(CheckpointError, match="missing the 'vae' subfolder"):
        load_bundle(tmp_path)


def test_integer_weight_and_relaid_shape_are_named(tmp_path):
    sd = _tiny_tensors()
    key = "model.diffusion_model.out.2.weight"
    sd[key] = sd[key].to(torch.int32)
    with pytest.raises(CheckpointError, match=r"^i\.safetensors: tensor '.*out\.2\.weight' is I32, expected a float"):
        load_bundle(save_checkpoint(tmp_path / "i.safetensors", sd))
    sd = _tiny_tensors()
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"
    sd[key] = sd[key].t().contiguous()
    with pytest.raises(CheckpointError, match="same number of elements in another layout"):
        load_bundle(save_checkpoint(tmp_path / "t.safetensors", sd))


def test_non_finite_weights_are_refused_unless_allowed(tmp_path):
    sd = _tiny_tensors()
    key = "model.diffusion_model.out.2.weight"
    sd[key].view(-1)[:3] = float("nan")
    path = save_checkpoint(tmp_path / "nan.safetensors", sd)
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) hold NaN or Inf values: '.*out\.2\.weight' \(3 of "):
        load_bundle(path)
    assert torch.isnan(load_bundle(path, allow_non_finite=True).model.unet.out[2].weight).sum() == 3


def test_huge_finite_weights_are_not_called_non_finite(tmp_path):
    sd = _tiny_tensors()
    key = "model.diffusion_model.out.2.weight"
    sd[key] = torch.full_like(sd[key], 3e38)  # finite, but their sum overflows float32: the exact count decides
    load_bundle(save_checkpoint(tmp_path / "big.safetensors", sd))
