"""A separate VAE file replaces a bundle's first stage: the three key namings, a full checkpoint's first stage, a
decoder-only file, and the errors (not a VAE, another latent space, damaged files, NaN). Tiny random models; the
replaced first stage must decode (and encode) as the donor's own, to float32 rounding (atol 1e-5)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, bridge
from comfyui_svd_lab.svd_model.config import VAEConfig
from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.nn.vae import AutoencoderKL
from comfyui_svd_lab.svd_model.weights.checkpoint import save_checkpoint
from comfyui_svd_lab.svd_model.weights.detect import FIRST_STAGE_PREFIX
from comfyui_svd_lab.svd_model.weights.diffusers_vae_keys import vae_sgm_to_diffusers
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, write_tiny_checkpoint
from comfyui_svd_lab.svd_model.weights.vae_file import replace_vae
from comfyui_svd_lab.workflow import validate

ATOL = 1e-5
T = 2  # frames of the test latents


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", seed=3)


@pytest.fixture(scope="module")
def donor():
    return make_tiny_model(seed=5)


@pytest.fixture(scope="module")
def donor_out(donor):
    """The donor's own first stage: (decoded test latents, encoded test frames)."""
    with torch.no_grad():
        return donor.first_stage.decode(_latents(), T), donor.first_stage.encode_mode(_frames())


def _latents() -> torch.Tensor:
    return torch.randn(T, 4, 2, 3, generator=torch.Generator().manual_seed(0))  # (frames, z, h, w), unscaled


def _frames() -> torch.Tensor:
    return torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (n, 3, H, W)


def _namings(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    return {"prefixed": {FIRST_STAGE_PREFIX + k: v for k, v in state.items()},
            "sgm": dict(state),  # ComfyUI's models/vae files
            "diffusers": vae_sgm_to_diffusers(state)}


@pytest.mark.parametrize("naming", ["prefixed", "sgm", "diffusers"])
def test_each_naming_replaces_decoder_and_encoder(checkpoint, donor, donor_out, tmp_path, naming):
    vae = save_checkpoint(tmp_path / f"vae_{naming}.safetensors", _namings(donor.first_stage.state_dict())[naming])
    bundle = load_bundle(checkpoint, vae=vae)
    first = bundle.model.first_stage
    assert first.config.temporal_decoder and first.config.has_encoder
    assert bundle.config.first_stage == first.config  # the bundle's config describes the new network
    assert first.config.has_quant_conv is (naming == "diffusers")  # diffusers adds an identity quant_conv
    with torch.no_grad():
        assert torch.allclose(first.decode(_latents(), T), donor_out[0], atol=ATOL)
        assert torch.allclose(first.encode_mode(_frames()), donor_out[1], atol=ATOL)
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in first.parameters())


def test_fp16_file_is_upcast_and_summary_names_what_was_done(checkpoint, donor, donor_out, tmp_path):
    half = {k: v.half() for k, v in donor.first_stage.state_dict().items()}
    bundle = load_bundle(checkpoint)
    with torch.no_grad():  # the donor is another model, so a replaced first stage is visible
        before = bundle.model.first_stage.decode(_latents(), T)
        assert not torch.allclose(before, donor_out[0], atol=1e-2)
    done = replace_vae(bundle, save_checkpoint(tmp_path / "vae_fp16.safetensors", half))
    with torch.no_grad():  # fp16 weights, fp32 compute: close to the donor's fp32 decoding
        after = bundle.model.first_stage.decode(_latents(), T)
        assert torch.allclose(after, donor_out[0], atol=5e-2)
    assert all(p.dtype == torch.float32 for p in bundle.model.first_stage.parameters())
    assert done.summary() == ("VAE vae_fp16.safetensors: temporal decoder, with its encoder (official names without "
                              "prefix (encoder.*, decoder.*, as in ComfyUI's models/vae))")


def test_image_decoder_from_a_full_checkpoint(checkpoint, tmp_path):
    full = write_tiny_checkpoint(tmp_path / "tiny_image_decoder.safetensors", seed=6, image_decoder=True)
    image_model = make_tiny_model(seed=6, image_decoder=True)
    bundle = load_bundle(checkpoint)
    done = replace_vae(bundle, full)
    assert done.layout == "checkpoint" and done.ignored > 0 and "first stage of a full checkpoint" in done.summary()
    first = bundle.model.first_stage
    assert not first.config.temporal_decoder and first.config.has_post_quant_conv
    with torch.no_grad():
        assert torch.allclose(first.decode(_latents()), image_model.first_stage.decode(_latents()), atol=ATOL)


def test_decoder_only_file_keeps_the_checkpoint_encoder(checkpoint, donor, donor_out, tmp_path):
    decoder = {k: v for k, v in donor.first_stage.state_dict().items() if k.startswith("decoder.")}
    bundle = load_bundle(checkpoint)
    encoder_before = bundle.model.first_stage.encoder.conv_in.weight.clone()
    done = replace_vae(bundle, save_checkpoint(tmp_path / "decoder.safetensors", decoder))
    first = bundle.model.first_stage
    assert done.encoder == "kept" and "the checkpoint's encoder is kept" in done.summary()
    assert torch.equal(first.encoder.conv_in.weight, encoder_before)
    with torch.no_grad():
        assert torch.allclose(first.decode(_latents(), T), donor_out[0], atol=ATOL)


def test_decoder_only_file_of_another_width_drops_the_encoder(checkpoint, tmp_path):
    wide = AutoencoderKL(VAEConfig(ch=64, ch_mult=(1, 1, 1, 1), num_res_blocks=1, has_encoder=False))
    bundle = load_bundle(checkpoint)
    done = replace_vae(bundle, save_checkpoint(tmp_path / "wide.safetensors", wide.state_dict()))
    assert done.encoder == "none" and bundle.model.first_stage.encoder is None
    assert "encoding uses the conditioning VAE" in done.summary()


def _vae(**config) -> dict[str, torch.Tensor]:
    base = {"ch": 32, "ch_mult": (1, 1, 1, 1), "num_res_blocks": 1}
    return AutoencoderKL(VAEConfig(**{**base, **config})).state_dict()


def test_mismatches_are_named(checkpoint, donor, tmp_path):
    bundle = load_bundle(checkpoint)
    unet = {k: v for k, v in bundle.model.official_state_dict().items() if k.startswith("model.diffusion_model.")}
    cases = [
        (unet, r"unet\.safetensors is not a VAE file: it looks like a UNet"),
        ({"foo.bar": torch.zeros(2)}, r"is not a VAE file: it looks like an unknown model"),
        (_vae(z_channels=16), r"a VAE for another latent space: 16 latent channels, the checkpoint's UNet works on 4"),
        (_vae(ch_mult=(1, 1, 1)), r"scales images by 4 \(3 levels\), the checkpoint's VAE by 8"),
        ({k: v for k, v in _vae().items() if not k.startswith("decoder.")}, r"has no decoder"),
        ({k: v for k, v in donor.first_stage.state_dict().items() if k != "decoder.mid.attn_1.q.weight"},
         r"VAE file does not match .*1 missing key\(s\): decoder\.mid\.attn_1\.q\.weight"),
    ]
    for i, (state, message) in enumerate(cases):
        path = save_checkpoint(tmp_path / ("unet.safetensors" if i == 0 else f"case{i}.safetensors"), state)
        with pytest.raises(CheckpointError, match=message):
            replace_vae(bundle, path)
    assert bundle.model.first_stage.config.z_channels == 4  # a refused file leaves the bundle as it was


def test_damaged_files(checkpoint, donor, tmp_path):
    bundle = load_bundle(checkpoint)
    state = donor.first_stage.state_dict()
    good = save_checkpoint(tmp_path / "good.safetensors", state)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors is truncated"):
        replace_vae(bundle, truncated)
    bad = {**state, "decoder.conv_out.weight": state["decoder.conv_out.weight"].clone()}
    bad["decoder.conv_out.weight"].view(-1)[0] = float("nan")
    nan = save_checkpoint(tmp_path / "nan.safetensors", bad)
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: 1 tensor\(s\) hold NaN.*allow_non_finite"):
        replace_vae(bundle, nan)
    replace_vae(bundle, nan, allow_non_finite=True)
    assert bundle.model.first_stage.decoder.conv_out.weight.isnan().sum() == 1


@pytest.mark.parametrize("naming", ["prefixed", "sgm", "diffusers"])
def test_a_vae_only_file_given_as_the_checkpoint_says_so(donor, tmp_path, naming):
    path = save_checkpoint(tmp_path / "vae.safetensors", _namings(donor.first_stage.state_dict())[naming])
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: this is a VAE-only file .*vae=path.*vae_name"):
        load_bundle(path)


# ------------------------------------------------------------------------------------------ the loader node


@pytest.fixture
def vae_folders(checkpoint, donor, tmp_path):
    """A headless model folder with the checkpoint and a VAE file in a subfolder."""
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "tiny.safetensors").write_bytes(checkpoint.read_bytes())
    save_checkpoint(models / "vae" / "donor.safetensors", donor.first_stage.state_dict())
    (tmp_path / "outside.safetensors").write_bytes(b"")
    bridge.configure(models_dirs=[models])
    yield models
    bridge.reset()


def test_loader_node_vae_name(vae_folders, donor_out):
    loader = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]
    choices, options = loader.INPUT_TYPES()["optional"]["vae_name"]
    assert choices == ["none", "tiny.safetensors", "vae/donor.safetensors"] and options["default"] == "none"
    prompt = {"1": {"class_type": "SVDLab_CheckpointLoader", "inputs": {
        "ckpt_name": "tiny.safetensors", "dtype": "fp32", "variant": "auto", "offload": "none",
        "vae_name": "gone.safetensors"}}, "2": {"class_type": "SVDLab_SaveVideo", "inputs": {
        "images": ["1", 0], "fps": 7.0, "format": "mp4", "quality": 80, "filename_prefix": "x"}}}
    problems = [str(p) for p in validate(prompt, NODE_CLASS_MAPPINGS) if p.node_id == "1"]
    assert problems == ["node 1 (SVDLab_CheckpointLoader) input 'vae_name': value 'gone.safetensors' is not one of "
                        "the choices: 'none', 'tiny.safetensors', 'vae/donor.safetensors'"]
    with pytest.raises(CheckpointError, match="VAE 'gone.safetensors' not found; looked in"):
        loader().load("tiny.safetensors", "fp32", "auto", "none", vae_name="gone.safetensors")
    assert bridge.find_vae("../outside.safetensors") is None  # names stay inside their model folder
    bundle, info = loader().load("tiny.safetensors", "fp32", "auto", "none", vae_name="vae/donor.safetensors")
    assert "; VAE donor.safetensors: temporal decoder, with its encoder" in info
    with torch.no_grad():
        assert torch.allclose(bundle.model.first_stage.decode(_latents(), T), donor_out[0], atol=ATOL)
    _, plain = loader().load("tiny.safetensors", "fp32", "auto", "none")
    assert "VAE" not in plain


def test_vae_list_inside_comfyui_puts_the_vae_folder_first(vae_folders, tmp_path, monkeypatch):
    comfy_vae = tmp_path / "comfy_vae"
    comfy_vae.mkdir()
    (comfy_vae / "sd_vae.safetensors").write_bytes(b"")
    fp = types.ModuleType("folder_paths")
    fp.folder_names_and_paths = {"vae": ([str(comfy_vae)], {".safetensors"})}
    fp.get_folder_paths = lambda key: [str(vae_folders)] if key == "svd" else fp.folder_names_and_paths[key][0]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    assert bridge.models.list_vaes() == ["sd_vae.safetensors", "tiny.safetensors", "vae/donor.safetensors"]
    assert bridge.models.find_vae("sd_vae.safetensors") == comfy_vae / "sd_vae.safetensors"
    assert bridge.models.find_vae(str(comfy_vae / "sd_vae.safetensors")) is None  # no absolute paths in ComfyUI
    assert "models/vae" in bridge.models.missing_vae_message("x.safetensors")
