"""Applying LoRA files (svd_model.lora apply / keys): copies, strengths and undo, half-precision merges, kohya
names, validation reports and the messages for files made for another model."""

from __future__ import annotations

import logging

import pytest
import torch
from lora_support import SUFFIXES, run, tiny_unet, trained_lora, unchanged, unet_inputs
from train_support import one_thread_fixture

from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.lora import (
    apply_lora,
    base_model_hash,
    load_lora,
    validate_lora,
)
from comfyui_svd_lab.svd_model.weights.loader import SVDBundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, write_tiny_checkpoint

# tiny models: one intra-op thread is several times faster than two on a loaded machine
_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def trained():
    """(injected UNet with trained-like adapters on every Linear/Conv, its ComfyUI state, its output)."""
    return trained_lora()


# -------------------------------------------------------------------------------------------- apply


def test_apply_lora_copy_strength_and_undo(trained):
    _, state, injected = trained
    model = make_tiny_model(seed=2)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    bundle = SVDBundle(model=model, variant="svd", source="x")
    assert base_model_hash(bundle) == base_model_hash(tiny_unet(2))  # the bundle's UNet is tiny_unet(2)
    patched = apply_lora(bundle, state, 1.0)
    assert isinstance(patched, SVDBundle) and patched.model is not model
    assert patched.model.first_stage is model.first_stage  # other networks shared
    out = run(patched.model.unet, unet_inputs())
    assert (out - injected).abs().max() <= 1e-5 * injected.abs().max() + 1e-6
    assert unchanged(model.unet, before)  # input untouched
    q = "input_blocks.1.1.time_stack.0.attn1.to_q.weight"
    norm = "input_blocks.1.1.norm.weight"
    p_sd, m_sd = patched.model.unet.state_dict(), model.unet.state_dict()
    assert p_sd[norm].data_ptr() == m_sd[norm].data_ptr() and p_sd[q].data_ptr() != m_sd[q].data_ptr()
    zero = apply_lora(model.unet, state, 0.0)
    assert all(torch.equal(v, before[k]) for k, v in zero.state_dict().items())
    deltas = {s: apply_lora(model, state, s).unet.state_dict()[q] - before[q] for s in (1.0, -0.5, 2.0)}
    for s in (-0.5, 2.0):
        assert torch.allclose(deltas[s], s * deltas[1.0], atol=1e-6)
    with apply_lora(model, state, 1.0, inplace=True) as handle:
        assert torch.allclose(model.unet.state_dict()[q], p_sd[q]) and len(handle.report.modules) == len(state) // 3
    assert unchanged(model.unet, before)


def test_apply_lora_to_half_precision_merges_in_float32(trained):
    _, state, _ = trained
    unet = tiny_unet(2).to(torch.bfloat16)
    key = "input_blocks.1.0.time_stack.in_layers.2"
    w = unet.state_dict()[f"{key}.weight"]
    up, down = state[f"diffusion_model.{key}.lora_up.weight"], state[f"diffusion_model.{key}.lora_down.weight"]
    expected = (w.float() + 0.5 * (2.0 / 4) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)).bfloat16()
    patched = apply_lora(unet, state, 0.5)
    assert patched.state_dict()[f"{key}.weight"].dtype == torch.bfloat16
    assert torch.equal(patched.state_dict()[f"{key}.weight"], expected)


def test_kohya_underscore_names_apply_like_comfyui_names(trained):
    _, state, injected = trained
    kohya = {}
    for key, value in state.items():
        suffix = next(s for s in SUFFIXES if key.endswith(s))
        module = key[len("diffusion_model."): -len(suffix)]
        kohya["lora_unet_" + module.replace(".", "_") + suffix] = value
    report = validate_lora(tiny_unet(), kohya)
    assert report.ok and report.format == "kohya"
    out = run(apply_lora(tiny_unet(2), kohya), unet_inputs())
    assert (out - injected).abs().max() <= 1e-5 * injected.abs().max() + 1e-6


def test_validate_reports_foreign_missing_and_misshaped_keys(trained, caplog):
    _, state, _ = trained
    key = "diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q"
    bad = dict(state)
    bad["diffusion_model.input_blocks.42.0.nope.lora_up.weight"] = torch.zeros(8, 4)
    bad["diffusion_model.input_blocks.42.0.nope.lora_down.weight"] = torch.zeros(4, 8)
    bad["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, 4)
    del bad["diffusion_model.out.2.lora_down.weight"]  # up without down
    bad[f"{key}.lora_down.weight"] = torch.zeros(4, 32)  # in-features 32, the layer has 64
    report = validate_lora(tiny_unet(), bad)
    assert not report.ok
    assert set(report.unmatched) == {"diffusion_model.input_blocks.42.0.nope.lora_up.weight",
                                     "diffusion_model.input_blocks.42.0.nope.lora_down.weight",
                                     "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"}
    assert len(report.incomplete) == 1 and "out.2" in report.incomplete[0]
    assert len(report.shape_mismatch) == 1 and "to_q" in report.shape_mismatch[0]
    assert "[4, 32]" in report.shape_mismatch[0]
    assert len(report.modules) == len(state) // 3 - 2
    text = report.text()
    assert "unmatched keys (no such layer in this model): 3" in text and "shape mismatches" in text
    with pytest.raises(CheckpointError, match="made for a different model: 1 tensor"):
        apply_lora(tiny_unet(), bad)
    del bad[f"{key}.lora_down.weight"], bad[f"{key}.lora_up.weight"], bad[f"{key}.alpha"]
    del bad["diffusion_model.out.2.lora_up.weight"], bad["diffusion_model.out.2.alpha"]
    with caplog.at_level(logging.WARNING):
        apply_lora(tiny_unet(), bad)
    assert "3 LoRA key(s) match no weight" in caplog.text
    with pytest.raises(CheckpointError, match="match no weight"):
        apply_lora(tiny_unet(), bad, strict=True)


def test_bad_inputs_get_specific_messages(trained, tmp_path):
    _, state, _ = trained
    pickle = tmp_path / "model.safetensors"
    pickle.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="pickle"):
        load_lora(pickle)
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="not a LoRA file: it holds full model weights"):
        load_lora(ckpt)
    sd_lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320)}
    with pytest.raises(CheckpointError, match=r"matches none of this model's weights.*another model \(SD 1"):
        apply_lora(tiny_unet(), sd_lora)
    sv3d_like = {k: v for k, v in state.items() if ".label_emb.0.0." in k}
    sv3d_like["diffusion_model.label_emb.0.0.lora_down.weight"] = torch.zeros(4, 1280)  # SV3D_p's vector width
    with pytest.raises(CheckpointError, match="different model"):
        apply_lora(tiny_unet(), sv3d_like)
    module = "unet.down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q"
    peft = {f"{module}.lora_A.weight": torch.zeros(4, 64), f"{module}.lora_B.weight": torch.zeros(64, 4)}
    with pytest.raises(CheckpointError, match="SVDLab_LoraConvert"):
        apply_lora(tiny_unet(), peft)
