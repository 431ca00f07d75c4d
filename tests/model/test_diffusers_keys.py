"""Key conversion sgm <-> diffusers / transformers (svd_model.diffusers_keys)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch

from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.weights.diffusers_keys import (
    SGM_FIRST_STAGE_PREFIX,
    SGM_UNET_PREFIX,
    SGM_VISUAL_PREFIX,
    clip_vision_hf_to_openclip,
    clip_vision_openclip_to_hf,
    diffusers_pipeline_to_sgm,
    unet_diffusers_to_sgm,
    unet_sgm_to_diffusers,
    vae_diffusers_to_sgm,
    vae_sgm_to_diffusers,
)

Shapes = dict[str, list[int]]
StateDict = dict[str, torch.Tensor]
COND_VAE_PREFIX = "conditioner.embedders.3.encoder."

# ---------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def sgm_shapes(reference_dir: Path) -> Shapes:
    return json.loads((reference_dir / "svd_keys.json").read_text())


@pytest.fixture(scope="module")
def diffusers_shapes(reference_dir: Path) -> dict[str, Shapes]:
    data = json.loads((reference_dir / "diffusers_svd_components_keys.json").read_text())
    assert {"unet", "vae", "image_encoder"} <= set(data)
    return data


def _strip(shapes: Shapes, prefix: str) -> Shapes:
    return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}


def _meta(shapes: Shapes) -> StateDict:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _small(shapes: Shapes, seed: int = 0) -> StateDict:
    """Real random tensors with the same rank; dims shrink to 1 (kept), 3 (multiples of 3) or 2."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn([d if d == 1 else 3 if d % 3 == 0 else 2 for d in v], generator=gen) for k, v in shapes.items()
    }


def _shapes(sd: Mapping[str, torch.Tensor]) -> Shapes:
    return {k: list(v.shape) for k, v in sd.items()}


def _renames(sd: StateDict, convert: Callable[[StateDict], StateDict]) -> dict[str, str]:
    """old key -> new key, for the tensors that the conversion passed through unchanged."""
    by_id = {id(v): k for k, v in sd.items()}
    return {by_id[id(v)]: k for k, v in convert(sd).items() if id(v) in by_id}


def _assert_identity(before: StateDict, after: StateDict) -> None:
    assert set(after) == set(before)
    for key, tensor in before.items():
        assert after[key].shape == tensor.shape, key
        assert torch.equal(after[key], tensor), key
        assert after[key].untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr(), f"{key} was copied"


# ---------------------------------------------------------------------------------------------------
# full-size layouts against the reference key lists


def test_unet_full_size_matches_diffusers_list(sgm_shapes: Shapes, diffusers_shapes: dict[str, Shapes]) -> None:
    sgm = _strip(sgm_shapes, SGM_UNET_PREFIX)
    assert _shapes(unet_sgm_to_diffusers(_meta(sgm))) == diffusers_shapes["unet"]
    assert _shapes(unet_diffusers_to_sgm(_meta(diffusers_shapes["unet"]))) == sgm


def test_unet_full_size_pairings(sgm_shapes: Shapes) -> None:
    renames = _renames(_meta(_strip(sgm_shapes, SGM_UNET_PREFIX)), unet_sgm_to_diffusers)
    expected = {
        "input_blocks.0.0.weight": "conv_in.weight",
        "time_embed.2.bias": "time_embedding.linear_2.bias",
        "label_emb.0.0.weight": "add_embedding.linear_1.weight",
        "out.0.weight": "conv_norm_out.weight",
        "input_blocks.2.0.in_layers.2.weight": "down_blocks.0.resnets.1.spatial_res_block.conv1.weight",
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.4.0.skip_connection.weight": "down_blocks.1.resnets.0.spatial_res_block.conv_shortcut.weight",
        "input_blocks.5.1.time_stack.0.attn2.to_k.weight": (
            "down_blocks.1.attentions.1.temporal_transformer_blocks.0.attn2.to_k.weight"
        ),
        "input_blocks.9.0.op.bias": "down_blocks.2.downsamplers.0.conv.bias",
        "input_blocks.11.0.time_stack.out_layers.3.weight": "down_blocks.3.resnets.1.temporal_res_block.conv2.weight",
        "middle_block.0.time_mixer.mix_factor": "mid_block.resnets.0.time_mixer.mix_factor",
        "middle_block.1.time_pos_embed.0.weight": "mid_block.attentions.0.time_pos_embed.linear_1.weight",
        "middle_block.2.emb_layers.1.weight": "mid_block.resnets.1.spatial_res_block.time_emb_proj.weight",
        "output_blocks.0.0.out_layers.0.weight": "up_blocks.0.resnets.0.spatial_res_block.norm2.weight",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.3.1.proj_in.weight": "up_blocks.1.attentions.0.proj_in.weight",
        "output_blocks.5.2.conv.weight": "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.8.2.conv.bias": "up_blocks.2.upsamplers.0.conv.bias",
        "output_blocks.10.1.time_mixer.mix_factor": "up_blocks.3.attentions.1.time_mixer.mix_factor",
        "output_blocks.11.0.time_stack.in_layers.0.bias": "up_blocks.3.resnets.2.temporal_res_block.norm1.bias",
    }
    assert {k: renames[k] for k in expected} == expected


def test_vae_full_size_matches_diffusers_list(sgm_shapes: Shapes, diffusers_shapes: dict[str, Shapes]) -> None:
    sgm = _strip(sgm_shapes, SGM_FIRST_STAGE_PREFIX)
    assert "quant_conv.weight" not in sgm
    # the identity quant_conv added for the missing sgm one completes the diffusers list
    assert _shapes(vae_sgm_to_diffusers(_meta(sgm))) == diffusers_shapes["vae"]
    back = _shapes(vae_diffusers_to_sgm(_meta(diffusers_shapes["vae"])))
    assert back == {**sgm, "quant_conv.weight": [8, 8, 1, 1], "quant_conv.bias": [8]}


def test_vae_full_size_pairings(sgm_shapes: Shapes) -> None:
    renames = _renames(_meta(_strip(sgm_shapes, SGM_FIRST_STAGE_PREFIX)), vae_sgm_to_diffusers)
    expected = {
        "encoder.norm_out.weight": "encoder.conv_norm_out.weight",
        "encoder.down.1.block.0.nin_shortcut.weight": "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.down.3.block.1.conv2.weight": "encoder.down_blocks.3.resnets.1.conv2.weight",
        "encoder.down.0.downsample.conv.weight": "encoder.down_blocks.0.downsamplers.0.conv.weight",
        "encoder.mid.block_2.norm1.bias": "encoder.mid_block.resnets.1.norm1.bias",
        "encoder.mid.attn_1.norm.weight": "encoder.mid_block.attentions.0.group_norm.weight",
        "encoder.mid.attn_1.proj_out.bias": "encoder.mid_block.attentions.0.to_out.0.bias",
        "decoder.mid.block_1.mix_factor": "decoder.mid_block.resnets.0.time_mixer.mix_factor",
        "decoder.mid.block_2.time_stack.in_layers.2.weight": (
            "decoder.mid_block.resnets.1.temporal_res_block.conv1.weight"
        ),
        "decoder.up.0.block.0.nin_shortcut.weight": (
            "decoder.up_blocks.3.resnets.0.spatial_res_block.conv_shortcut.weight"
        ),
        "decoder.up.1.block.2.time_stack.out_layers.0.bias": (
            "decoder.up_blocks.2.resnets.2.temporal_res_block.norm2.bias"
        ),
        "decoder.up.3.upsample.conv.weight": "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.up.1.upsample.conv.bias": "decoder.up_blocks.2.upsamplers.0.conv.bias",
        "decoder.conv_out.weight": "decoder.conv_out.weight",
        "decoder.conv_out.time_mix_conv.weight": "decoder.time_conv_out.weight",
    }
    assert {k: renames[k] for k in expected} == expected


def test_clip_full_size_matches_transformers_list(sgm_shapes: Shapes, diffusers_shapes: dict[str, Shapes]) -> None:
    visual = _strip(sgm_shapes, SGM_VISUAL_PREFIX)
    assert _shapes(clip_vision_openclip_to_hf(_meta(visual))) == diffusers_shapes["image_encoder"]
    assert _shapes(clip_vision_hf_to_openclip(_meta(diffusers_shapes["image_encoder"]))) == visual


def test_pipeline_to_sgm(sgm_shapes: Shapes, diffusers_shapes: dict[str, Shapes]) -> None:
    parts = [_meta(diffusers_shapes[name]) for name in ("unet", "vae", "image_encoder")]
    out = diffusers_pipeline_to_sgm(*parts)
    absent = (COND_VAE_PREFIX + "decoder.", COND_VAE_PREFIX + "post_quant_conv.", "conditioner.embedders.0.open_clip.")
    expected = {k: v for k, v in sgm_shapes.items() if not k.startswith(absent) or k.startswith(SGM_VISUAL_PREFIX)}
    expected.update(
        {f"{SGM_FIRST_STAGE_PREFIX}quant_conv.weight": [8, 8, 1, 1], "first_stage_model.quant_conv.bias": [8]}
    )
    assert _shapes(out) == expected
    for key in ("encoder.conv_in.weight", "encoder.mid.attn_1.q.weight", "quant_conv.weight"):
        assert out[COND_VAE_PREFIX + key] is out[SGM_FIRST_STAGE_PREFIX + key]


def test_pipeline_needs_the_vae_encoder(diffusers_shapes: dict[str, Shapes]) -> None:
    vae = _meta({k: v for k, v in diffusers_shapes["vae"].items() if not k.startswith("quant_conv.")})
    with pytest.raises(CheckpointError, match="quant_conv"):
        diffusers_pipeline_to_sgm({}, vae, {})


# ---------------------------------------------------------------------------------------------------
# values: sgm -> diffusers -> sgm is the identity, without copies


def test_unet_round_trip_values(sgm_shapes: Shapes) -> None:
    sgm = _small(_strip(sgm_shapes, SGM_UNET_PREFIX))
    diffusers = unet_sgm_to_diffusers(sgm)
    assert all(any(v is t for t in sgm.values()) for v in diffusers.values())
    _assert_identity(sgm, unet_diffusers_to_sgm(diffusers))


def test_vae_round_trip_values(sgm_shapes: Shapes) -> None:
    sgm = _small(_strip(sgm_shapes, SGM_FIRST_STAGE_PREFIX), seed=1)
    diffusers = vae_sgm_to_diffusers(sgm)
    q = diffusers["decoder.mid_block.attentions.0.to_q.weight"]
    assert q.ndim == 2 and torch.equal(q, sgm["decoder.mid.attn_1.q.weight"][:, :, 0, 0])
    back = vae_diffusers_to_sgm(diffusers)
    ident_w, ident_b = back.pop("quant_conv.weight"), back.pop("quant_conv.bias")
    channels = sgm["encoder.conv_out.weight"].shape[0]
    assert torch.equal(ident_w, torch.eye(channels).reshape(channels, channels, 1, 1))
    assert torch.equal(ident_b, torch.zeros(channels)) and ident_w.dtype == sgm["encoder.conv_out.weight"].dtype
    _assert_identity(sgm, back)


def test_image_decoder_vae_round_trip(sgm_shapes: Shapes) -> None:
    """The conditioner VAE (plain decoder, quant convs) converts to AutoencoderKL names and back."""
    sgm = _small(_strip(sgm_shapes, COND_VAE_PREFIX), seed=2)
    diffusers = vae_sgm_to_diffusers(sgm)
    assert "decoder.up_blocks.0.resnets.2.conv1.weight" in diffusers and "post_quant_conv.weight" in diffusers
    assert not any("spatial_res_block" in k or "time_conv_out" in k for k in diffusers)
    _assert_identity(sgm, vae_diffusers_to_sgm(diffusers))


def test_legacy_diffusers_vae_attention_names(diffusers_shapes: Shapes) -> None:
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    modern = _small(diffusers_shapes["vae"])
    legacy = dict(modern)
    for key in [k for k in modern if ".attentions.0." in k]:
        for new, old in legacy_names.items():
            if f".attentions.0.{new}." in key:
                legacy[key.replace(f".{new}.", f".{old}.")] = legacy.pop(key)
    assert legacy.keys() != modern.keys()
    converted = vae_diffusers_to_sgm(legacy)
    assert converted.keys() == vae_diffusers_to_sgm(modern).keys()


def test_clip_values() -> None:
    gen = torch.Generator().manual_seed(3)
    width, embed = 4, 3
    visual = {
        "conv1.weight": torch.randn(width, 3, 2, 2, generator=gen),
        "class_embedding": torch.randn(width, generator=gen),
        "positional_embedding": torch.randn(5, width, generator=gen),
        "ln_pre.weight": torch.randn(width, generator=gen),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * width, width, generator=gen),
        "transformer.resblocks.0.attn.in_proj_bias": torch.randn(3 * width, generator=gen),
        "transformer.resblocks.0.mlp.c_proj.weight": torch.randn(width, 2 * width, generator=gen),
        "ln_post.bias": torch.randn(width, generator=gen),
        "proj": torch.randn(width, embed, generator=gen),
    }
    hf = clip_vision_openclip_to_hf(visual)
    layer = "vision_model.encoder.layers.0.self_attn"
    in_w, in_b = (
        visual["transformer.resblocks.0.attn.in_proj_weight"],
        visual["transformer.resblocks.0.attn.in_proj_bias"],
    )
    for i, name in enumerate("qkv"):
        assert torch.equal(hf[f"{layer}.{name}_proj.weight"], in_w[i * width : (i + 1) * width])
        assert torch.equal(hf[f"{layer}.{name}_proj.bias"], in_b[i * width : (i + 1) * width])
    assert torch.equal(hf["visual_projection.weight"], visual["proj"].T)
    assert hf["visual_projection.weight"].is_contiguous()
    assert hf["vision_model.encoder.layers.0.mlp.fc2.weight"] is visual["transformer.resblocks.0.mlp.c_proj.weight"]
    back = clip_vision_hf_to_openclip(hf)
    assert back.keys() == visual.keys()
    assert all(torch.equal(back[k], v) for k, v in visual.items())


def test_clip_accepts_inner_model_keys_and_drops_position_ids() -> None:
    hf = {
        "embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2),
        "embeddings.position_ids": torch.arange(5)[None],
        "vision_model.post_layernorm.weight": torch.ones(4),
    }
    assert set(clip_vision_hf_to_openclip(hf)) == {"conv1.weight", "ln_post.weight"}
    assert clip_vision_hf_to_openclip({"vision_model.embeddings.position_ids": torch.arange(5)[None]}) == {}


# ---------------------------------------------------------------------------------------------------
# reduced configurations (the layout is inferred, not fixed to 4 levels x 2 res blocks)

_RES = (
    "in_layers.0.weight",
    "in_layers.2.bias",
    "emb_layers.1.weight",
    "out_layers.3.weight",
    "time_stack.in_layers.2.weight",
    "time_mixer.mix_factor",
)
_SVT = (
    "norm.weight",
    "proj_in.weight",
    "transformer_blocks.0.attn1.to_q.weight",
    "time_stack.0.ff_in.net.0.proj.weight",
    "time_pos_embed.0.weight",
    "time_pos_embed.2.bias",
    "time_mixer.mix_factor",
)


def _tiny_sgm_unet(levels: int, nrb: int, attention: tuple[bool, ...]) -> StateDict:
    """Synthetic sgm VideoUNet keys built by the sgm rules (one tensor each, values irrelevant)."""
    keys = ["input_blocks.0.0.weight", "time_embed.0.weight", "label_emb.0.2.bias", "out.0.weight", "out.2.bias"]
    keys += [f"middle_block.{i}.{s}" for i, subs in ((0, _RES), (1, _SVT), (2, _RES)) for s in subs]
    n = 1
    for level in range(levels):
        for _ in range(nrb):
            keys += [f"input_blocks.{n}.0.{s}" for s in _RES]
            keys += [f"input_blocks.{n}.1.{s}" for s in _SVT] if attention[level] else []
            n += 1
        if level < levels - 1:
            keys.append(f"input_blocks.{n}.0.op.weight")
            n += 1
    n = 0
    for level in reversed(range(levels)):
        for m in range(nrb + 1):
            keys += [f"output_blocks.{n}.0.{s}" for s in _RES]
            keys += [f"output_blocks.{n}.1.{s}" for s in _SVT] if attention[level] else []
            if m == nrb and level > 0:
                keys.append(f"output_blocks.{n}.{2 if attention[level] else 1}.conv.weight")
            n += 1
    gen = torch.Generator().manual_seed(4)
    return {k: torch.randn(2, generator=gen) for k in keys}


@pytest.mark.parametrize(
    ("levels", "nrb", "attention"),
    [(2, 1, (True, False)), (3, 2, (False, True, True)), (1, 1, (True,)), (2, 3, (False, False))],
)
def test_tiny_unet_round_trip(levels: int, nrb: int, attention: tuple[bool, ...]) -> None:
    sgm = _tiny_sgm_unet(levels, nrb, attention)
    diffusers = unet_sgm_to_diffusers(sgm)
    assert len(diffusers) == len(sgm)
    assert {int(k.split(".")[1]) for k in diffusers if k.startswith("down_blocks.")} == set(range(levels))
    _assert_identity(sgm, unet_diffusers_to_sgm(diffusers))


def test_tiny_unet_names() -> None:
    renames = _renames(_tiny_sgm_unet(2, 1, (True, False)), unet_sgm_to_diffusers)
    expected = {
        "input_blocks.1.0.in_layers.0.weight": "down_blocks.0.resnets.0.spatial_res_block.norm1.weight",
        "input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight": (
            "down_blocks.0.attentions.0.temporal_transformer_blocks.0.ff_in.net.0.proj.weight"
        ),
        "input_blocks.2.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.3.0.time_stack.in_layers.2.weight": "down_blocks.1.resnets.0.temporal_res_block.conv1.weight",
        "output_blocks.0.0.emb_layers.1.weight": "up_blocks.0.resnets.0.spatial_res_block.time_emb_proj.weight",
        "output_blocks.1.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.2.1.transformer_blocks.0.attn1.to_q.weight": (
            "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
        ),
        "output_blocks.3.1.time_pos_embed.0.weight": "up_blocks.1.attentions.1.time_pos_embed.linear_1.weight",
        "output_blocks.3.0.time_mixer.mix_factor": "up_blocks.1.resnets.1.time_mixer.mix_factor",
    }
    assert {k: renames[k] for k in expected} == expected
    assert not any(k.startswith(("up_blocks.0.attentions", "down_blocks.1.attentions")) for k in renames.values())


# ---------------------------------------------------------------------------------------------------
# errors


def test_unknown_keys_raise() -> None:
    t = torch.zeros(1)
    with pytest.raises(CheckpointError, match="'foo.weight'"):
        unet_diffusers_to_sgm({"foo.weight": t})
    bad = {**_tiny_sgm_unet(2, 1, (True, False)), "input_blocks.1.0.bogus.weight": t}
    with pytest.raises(CheckpointError, match=r"input_blocks\.1\.0\.bogus\.weight.*in_layers\.0"):
        unet_sgm_to_diffusers(bad)
    with pytest.raises(CheckpointError, match="decoder.conv_in.extra"):
        vae_sgm_to_diffusers({"decoder.conv_in.extra": t})
    with pytest.raises(CheckpointError, match="text_model"):
        clip_vision_hf_to_openclip({"text_model.embeddings.token_embedding.weight": t})
    with pytest.raises(CheckpointError, match="class_embedding"):
        clip_vision_openclip_to_hf({"class_embedding.x": t})
    with pytest.raises(CheckpointError, match="v_proj.weight"):
        clip_vision_hf_to_openclip(
            {f"vision_model.encoder.layers.0.self_attn.{n}_proj.weight": torch.zeros(2, 2) for n in "qk"}
        )


def test_inconsistent_unet_layout_raises() -> None:
    sgm = _tiny_sgm_unet(2, 1, (True, False))
    sgm["output_blocks.9.0.in_layers.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="output_blocks go up to 9"):
        unet_sgm_to_diffusers(sgm)


def test_tiny_model_round_trip() -> None:
    """The package's own tiny model (official layout) survives sgm -> diffusers -> sgm."""
    from comfyui_svd_lab.svd_model.weights import tiny
    sd = tiny.make_tiny_model().official_state_dict()
    parts = {
        prefix: {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        for prefix in (SGM_UNET_PREFIX, SGM_FIRST_STAGE_PREFIX, SGM_VISUAL_PREFIX)
    }
    unet = unet_sgm_to_diffusers(parts[SGM_UNET_PREFIX])
    vae = vae_sgm_to_diffusers(parts[SGM_FIRST_STAGE_PREFIX])
    clip = clip_vision_openclip_to_hf(parts[SGM_VISUAL_PREFIX])
    _assert_identity(parts[SGM_UNET_PREFIX], unet_diffusers_to_sgm(unet))
    out = diffusers_pipeline_to_sgm(unet, vae, clip)
    assert set(out) - set(sd) == {"first_stage_model.quant_conv.weight", "first_stage_model.quant_conv.bias"}
    missing = set(sd) - set(out)
    assert all(k.startswith((COND_VAE_PREFIX + "decoder.", COND_VAE_PREFIX + "post_quant_conv.")) for k in missing)
    for key in set(sd) & set(out):
        if key.startswith(COND_VAE_PREFIX):  # rebuilt from the first stage's encoder (and identity quant_conv)
            assert out[key] is out[SGM_FIRST_STAGE_PREFIX + key[len(COND_VAE_PREFIX) :]]
        else:
            assert torch.equal(out[key], sd[key]), key
