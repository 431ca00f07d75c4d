"""LoRA files (svd_model.lora format / keys / peft): ComfyUI key naming on the tiny and full-size UNet, saving
and loading with metadata, the base-model hash, and PEFT / diffusers / kohya conversion."""

from __future__ import annotations

import json

import pytest
import torch
from lora_support import OFFICIAL, TEMPORAL, check_against_comfy_rule, tiny_unet, to_peft, trained_lora
from safetensors.torch import load_file
from train_support import one_thread_fixture

from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.lora import (
    base_model_hash,
    convert_peft_lora,
    diffusers_module_map,
    inject_lora,
    load_lora,
    lora_metadata,
    lora_state_dict,
    save_lora,
    targets,
    validate_lora,
)
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.detect import infer_config

# tiny models: one intra-op thread is several times faster than two on a loaded machine
_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def trained():
    """(injected UNet with trained-like adapters on every Linear/Conv, its ComfyUI state, its output)."""
    return trained_lora()


# ------------------------------------------------------------------------------------- key naming


def test_state_dict_keys_follow_comfyui_naming_on_tiny(trained):
    unet, state, _ = trained
    shapes = {f"diffusion_model.{k}": tuple(v.shape) for k, v in tiny_unet().state_dict().items()}
    assert check_against_comfy_rule(state, shapes) == []
    key = "diffusion_model.input_blocks.1.0.time_stack.in_layers.2"
    assert state[f"{key}.lora_down.weight"].shape == (4, 64, 3, 1, 1)  # conv kernel on down (kohya LoCon)
    assert state[f"{key}.lora_up.weight"].shape == (64, 4, 1, 1, 1)
    assert state[f"{key}.alpha"].ndim == 0 and state[f"{key}.alpha"].item() == 2.0
    report = validate_lora(tiny_unet(), state)
    assert report.ok and report.unmatched == () and len(report.modules) == len(state) // 3


def test_state_dict_keys_follow_comfyui_naming_full_size(reference_dir):
    path = reference_dir / "svd_xt_keys.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    official = {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    with torch.device("meta"):
        unet = VideoUNet(infer_config(official).unet)
    count = len(inject_lora(unet, rank=4, preset="all"))
    state = lora_state_dict(unet)
    shapes = {"diffusion_model." + k[len(OFFICIAL):]: v for k, v in official.items() if k.startswith(OFFICIAL)}
    assert count == 574 and len(state) == 3 * count
    assert check_against_comfy_rule(state, shapes) == []
    report = validate_lora(official, state)
    assert report.ok and len(report.modules) == count
    temporal = len(targets.lora_targets(unet, "temporal"))
    assert temporal == sum(bool(TEMPORAL & set(m.split("."))) for m in report.modules) == 290


# ------------------------------------------------------------------------------------- files, hash


def test_save_load_round_trip_with_metadata(trained, tmp_path):
    unet, state, _ = trained
    base = tiny_unet(2)
    meta = lora_metadata(rank=4, alpha=2.0, preset="all", patterns=["*"], modules=len(state) // 3, steps=120,
                         base_model_hash=base_model_hash(base))
    path = save_lora(tmp_path / "sub" / "x.safetensors", state, metadata=meta)
    assert [p.name for p in path.parent.iterdir()] == ["x.safetensors"]  # no temp file left behind
    loaded, read_meta = load_lora(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert {k: read_meta[k] for k in meta} == meta and read_meta["svd_lab.steps"] == "120"
    assert json.loads(read_meta["svd_lab.lora.patterns"]) == ["*"]
    assert load_file(str(path)).keys() == state.keys()  # an independent reader agrees
    with pytest.raises(CheckpointError, match="non-LoRA keys"):
        save_lora(tmp_path / "bad.safetensors", {**state, "foo": torch.zeros(1)}, metadata={})


def test_base_model_hash_follows_the_weights():
    model = tiny_unet(2)
    digest = base_model_hash(model)
    assert digest.startswith("sha256:") and digest == base_model_hash(tiny_unet(2))
    assert base_model_hash(model.half()) == digest  # fp16 copy of the same weights
    other = tiny_unet(2)
    with torch.no_grad():
        other.out[2].bias[0] += 0.5
    assert base_model_hash(other) != digest


# --------------------------------------------------------------------------------------- conversion


def test_diffusers_module_map_matches_the_documented_names():
    table = diffusers_module_map()  # full-size SVD layout
    assert table["down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q"] == \
        "input_blocks.1.1.time_stack.0.attn1.to_q"
    assert table["down_blocks.0.resnets.0.temporal_res_block.conv1"] == "input_blocks.1.0.time_stack.in_layers.2"
    assert table["mid_block.attentions.0.time_pos_embed.linear_1"] == "middle_block.1.time_pos_embed.0"
    assert table["up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"] == \
        "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0"


@pytest.mark.parametrize(("style", "prefix"), [("peft", "unet."), ("peft", "base_model.model."),
                                               ("diffusers", "unet."), ("processor", "unet."), ("kohya", "")])
def test_peft_conversion_round_trip(trained, style, prefix):
    _, state, _ = trained
    tiny = tiny_unet(2)
    peft = to_peft(state, tiny, style, prefix)
    peft["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 8)
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2.0})}
    result = convert_peft_lora(peft, unet=tiny, metadata=meta)
    dora = convert_peft_lora({**peft, "unet.conv_in.lora_magnitude_vector": torch.ones(64)}, unet=tiny)
    assert "unet.conv_in.lora_magnitude_vector" in dora.unmapped  # DoRA is dropped, and said so
    expected = {k: v for k, v in state.items() if style != "processor" or ".attn" in k}
    assert result.state.keys() == expected.keys()
    assert all(torch.equal(result.state[k], expected[k]) for k in expected)
    assert result.unmapped == ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",)
    assert result.alpha_source == "metadata" and result.modules == len(expected) // 3
    assert validate_lora(tiny, result.state).ok


def test_conversion_alpha_sources_and_errors(trained):
    _, state, _ = trained
    tiny = tiny_unet(2)
    peft = to_peft(state, tiny, "peft", "unet.")
    default = convert_peft_lora(peft, unet=tiny)
    assert default.alpha_source == "default (alpha = rank)"
    assert all(v.item() == 4.0 for k, v in default.state.items() if k.endswith(".alpha"))
    rs = convert_peft_lora(peft, unet=tiny, metadata={"lora_adapter_metadata": json.dumps(
        {"unet.r": 4, "unet.lora_alpha": 2.0, "unet.use_rslora": True})})
    assert all(v.item() == pytest.approx(4.0) for k, v in rs.state.items() if k.endswith(".alpha"))  # 2*sqrt(4)
    assert all(v.item() == 8.0 for k, v in convert_peft_lora(peft, unet=tiny, alpha=8.0).state.items()
               if k.endswith(".alpha"))
    with pytest.raises(CheckpointError, match="already uses ComfyUI naming"):
        convert_peft_lora(state, unet=tiny)
    with pytest.raises(CheckpointError, match="none of the 1 keys"):
        convert_peft_lora({"transformer.blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8)}, unet=tiny)
