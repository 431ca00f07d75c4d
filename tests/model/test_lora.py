"""LoRA and finetuning targets (svd_model.lora: targets / layers / format / keys / apply / peft) and the LoRA nodes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import one_thread_fixture

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, bridge
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError, InputError
from comfyui_svd_lab.svd_model.lora import (
    LoRAConv,
    LoRALinear,
    apply_lora,
    base_model_hash,
    convert_peft_lora,
    diffusers_module_map,
    inject_lora,
    load_lora,
    load_lora_state,
    lora_metadata,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    save_lora,
    targets,
    validate_lora,
)
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.checkpoint import save_checkpoint
from comfyui_svd_lab.svd_model.weights.detect import infer_config
from comfyui_svd_lab.svd_model.weights.loader import SVDBundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, randomize, tiny_config, write_tiny_checkpoint

OFFICIAL = "model.diffusion_model."
TEMPORAL = {"time_stack", "time_mixer", "time_pos_embed"}
SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha")


# -------------------------------------------------------------------------------------------- helpers


# tiny models: one intra-op thread is several times faster than two on a loaded machine
_one_thread = one_thread_fixture()


def tiny_unet(seed: int = 2) -> VideoUNet:
    """The UNet of make_tiny_model(seed) (same weights: randomize draws the UNet's parameters first)."""
    return randomize(VideoUNet(tiny_config().unet), seed).eval()


def unet_inputs(seed: int = 0, frames: int = 3, size: int = 8) -> tuple:
    """((b t), 8, h, w) latents, timesteps, (b t, 1, 64) context, (b t, 768) vector, frame count."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, 8, size, size, generator=gen), torch.rand(frames, generator=gen),
            torch.randn(frames, 1, 64, generator=gen), torch.randn(frames, 768, generator=gen), frames)


def run(unet: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs)


def train_like(unet: torch.nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Random lora_up weights, as after some training steps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lora_parameters(unet):
            if name.endswith("lora_up.weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def unchanged(unet: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = unet.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], v) for k, v in before.items())


def comfy_accepted_prefixes(weight_keys: list[str]) -> set[str]:
    """The rule stock ComfyUI documents (comfy/lora.py model_lora_keys_unet): for every UNet weight
    `diffusion_model.X.weight` it accepts the LoRA key prefix `diffusion_model.X`."""
    return {k[: -len(".weight")] for k in weight_keys if k.startswith("diffusion_model.") and k.endswith(".weight")}


def check_against_comfy_rule(state: dict, shapes: dict[str, tuple]) -> list[str]:
    """Problems of a ComfyUI-named LoRA state against UNet weight shapes keyed `diffusion_model.X.weight`."""
    accepted = comfy_accepted_prefixes(list(shapes))
    problems = []
    for key in state:
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        if suffix is None or key[: -len(suffix)] not in accepted:
            problems.append(key)
        elif suffix == ".lora_up.weight":
            weight = shapes[key[: -len(suffix)] + ".weight"]
            up, down = state[key].shape, state[key.replace(".lora_up.", ".lora_down.")].shape
            if up[0] != weight[0] or up[1] != down[0] or down[1:].numel() != torch.Size(weight[1:]).numel():
                problems.append(f"{key}: up {tuple(up)} down {tuple(down)} weight {weight}")
    return problems


@pytest.fixture(scope="module")
def tiny():
    return tiny_unet(2)


@pytest.fixture(scope="module")
def trained():
    """(injected UNet with trained-like adapters on every Linear/Conv, its ComfyUI state, its output)."""
    unet = tiny_unet(2)
    inject_lora(unet, rank=4, alpha=2.0, preset="all", generator=torch.Generator().manual_seed(0))
    train_like(unet)
    state = lora_state_dict(unet)
    return unet, state, run(unet, unet_inputs())


# ------------------------------------------------------------------------------------------- targets


def test_presets_follow_the_module_tree(tiny):
    unet = tiny
    owners = {name.rpartition(".")[0] for name, _ in unet.named_parameters()}
    temporal = {p for p in owners if TEMPORAL & set(p.split("."))}
    assert set(targets.select_modules(unet, "temporal")) == temporal
    assert set(targets.select_modules(unet, "spatial")) == owners - temporal
    assert set(targets.select_modules(unet, "all")) == owners
    assert "time_embed.0" not in temporal and any(p.endswith("time_mixer") for p in temporal)
    assert any(".time_pos_embed." in p for p in temporal) and any(".0.time_stack.in_layers.2" in p for p in temporal)
    attention = targets.select_modules(unet, "attention")
    assert attention and all(p.rsplit(".", 2)[-2] in ("attn1", "attn2", "to_out") for p in attention)
    assert {p.split(".")[-1] for p in attention} == {"to_q", "to_k", "to_v", "0"}
    assert set(targets.select_modules(unet, "temporal_attention")) == set(attention) & temporal
    # LoRA targets: exactly the temporal modules whose weight is a matrix or a conv kernel
    weights = {n.rpartition(".")[0] for n, p in unet.named_parameters() if n.endswith(".weight") and p.ndim >= 2}
    assert set(targets.lora_targets(unet, "temporal")) == temporal & weights
    kinds = {type(unet.get_submodule(p)).__name__ for p in targets.lora_targets(unet, "all")}
    assert kinds == {"Linear", "Conv2d", "Conv3d"}


def test_patterns_narrow_and_exclude(tiny):
    unet = tiny
    attn1 = targets.select_modules(unet, "temporal", ["*.attn1"])
    assert attn1 and all(".time_stack.0.attn1." in p for p in attn1)  # a glob on an ancestor selects below it
    regex = targets.select_modules(unet, "all", ["re:time_stack\\.0\\.attn1\\.to_q$"])
    assert regex == [p for p in attn1 if p.endswith("to_q")]
    without = targets.select_modules(unet, "temporal", ["!*time_mixer"])
    assert len(without) == len(targets.select_modules(unet, "temporal")) - sum("time_mixer" in p for p in
                                                                                targets.select_modules(unet))
    with pytest.raises(ConfigError, match="matches none"):
        targets.select_modules(unet, "temporal", ["*transformer_blocks*"])  # spatial names, temporal preset
    with pytest.raises(ConfigError, match="unknown training preset 'temporl'"):
        targets.select_modules(unet, "temporl")
    with pytest.raises(ConfigError, match="wrap it in a list"):
        targets.select_modules(unet, "all", "*attn1")
    with pytest.raises(ConfigError, match="no Linear or Conv"):
        targets.lora_targets(unet, "temporal", ["*norm*"])


def test_set_trainable_marks_only_the_selection():
    unet = tiny_unet(3)
    chosen = targets.trainable_parameters(unet, "temporal")
    assert all(p.requires_grad for p in unet.parameters())  # no side effect
    returned = targets.set_trainable(unet, "temporal")
    assert [n for n, _ in returned] == [n for n, _ in chosen]
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in chosen} and all(TEMPORAL & set(n.split(".")) for n in trainable)
    assert "input_blocks.1.0.time_mixer.mix_factor" in trainable


# -------------------------------------------------------------------------------------- LoRA modules


def test_zero_up_is_identity_and_only_adapters_train():
    unet = tiny_unet(2)
    inputs = unet_inputs()
    base = run(unet, inputs)
    paths = inject_lora(unet, rank=3, preset="all", dropout=0.1)
    assert len(paths) == len(targets.lora_targets(tiny_unet(2), "all"))
    unet.eval()
    assert torch.equal(run(unet, inputs), base)
    assert isinstance(unet.get_submodule("input_blocks.1.1.time_stack.0.attn1.to_q"), LoRALinear)
    assert isinstance(unet.get_submodule("input_blocks.1.0.time_stack.in_layers.2"), LoRAConv)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == {n for n, _ in lora_parameters(unet)}
    unet.train()
    x, t, c, y, f = unet_inputs(1)
    unet(x, t, c, y, f).square().mean().backward()
    grads = {n: p.grad for n, p in lora_parameters(unet)}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.endswith("lora_up.weight"))
    with pytest.raises(ConfigError, match="already has LoRA"):
        inject_lora(unet, rank=3)
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        inject_lora(tiny_unet(), rank=0)


def test_merge_equals_injected_and_remove_restores(trained):
    unet, state, injected = trained
    merged_unet = tiny_unet(2)
    inject_lora(merged_unet, rank=4, alpha=2.0, preset="all")
    load_lora_state(merged_unet, state)
    assert torch.allclose(run(merged_unet, unet_inputs()), injected, rtol=0, atol=1e-5)
    assert merge_lora(merged_unet) == len(targets.lora_targets(merged_unet, "all"))
    out = run(merged_unet, unet_inputs())
    assert (out - injected).abs().max() <= 1e-5 * injected.abs().max() + 1e-6
    plain = tiny_unet(2)
    assert set(merged_unet.state_dict()) == set(plain.state_dict())  # official layout again
    assert (out - run(plain, unet_inputs())).abs().max() > 1e-3  # the merge changed something
    removed = tiny_unet(2)
    inject_lora(removed, rank=4, preset="all")
    train_like(removed)
    assert remove_lora(removed) > 0 and torch.equal(run(removed, unet_inputs()), run(plain, unet_inputs()))


def test_load_lora_state_checks_rank():
    unet = tiny_unet()
    inject_lora(unet, rank=2, preset="temporal_attention")
    other = tiny_unet()
    inject_lora(other, rank=3, preset="temporal_attention")
    with pytest.raises(CheckpointError, match="same rank"):
        load_lora_state(unet, lora_state_dict(other))


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


# --------------------------------------------------------------------------------------- conversion


def test_diffusers_module_map_matches_the_documented_names():
    table = diffusers_module_map()  # full-size SVD layout
    assert table["down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q"] == \
        "input_blocks.1.1.time_stack.0.attn1.to_q"
    assert table["down_blocks.0.resnets.0.temporal_res_block.conv1"] == "input_blocks.1.0.time_stack.in_layers.2"
    assert table["mid_block.attentions.0.time_pos_embed.linear_1"] == "middle_block.1.time_pos_embed.0"
    assert table["up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"] == \
        "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0"


def _to_peft(state: dict, layout, style: str, prefix: str) -> dict:
    sgm_to_diffusers = {v: k for k, v in diffusers_module_map(layout).items()}
    out = {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            continue
        half = "up" if key.endswith(".lora_up.weight") else "down"
        module = sgm_to_diffusers[key[len("diffusion_model."): -len(f".lora_{half}.weight")]]
        if style == "peft":
            out[f"{prefix}{module}.lora_{'B' if half == 'up' else 'A'}.weight"] = value
        elif style == "diffusers":
            out[f"{prefix}{module}.lora.{half}.weight"] = value
        elif style == "processor" and ".attn" in module:
            parent, _, leaf = module.rpartition(".to_")
            leaf = "out" if leaf.startswith("out") else leaf
            out[f"{prefix}{parent}.processor.to_{leaf}_lora.{half}.weight"] = value
        elif style == "kohya":
            out[f"lora_unet_{module.replace('.', '_')}.lora_{half}.weight"] = value
    return out


@pytest.mark.parametrize(("style", "prefix"), [("peft", "unet."), ("peft", "base_model.model."),
                                               ("diffusers", "unet."), ("processor", "unet."), ("kohya", "")])
def test_peft_conversion_round_trip(trained, style, prefix):
    _, state, _ = trained
    tiny = tiny_unet(2)
    peft = _to_peft(state, tiny, style, prefix)
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
    peft = _to_peft(state, tiny, "peft", "unet.")
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


# -------------------------------------------------------------------------------------------- nodes


@pytest.fixture
def lora_folders(tmp_path, trained):
    models, loras = tmp_path / "models", tmp_path / "loras"
    models.mkdir()
    loras.mkdir()
    write_tiny_checkpoint(models / "tiny.safetensors", seed=2)
    _, state, _ = trained
    save_lora(loras / "motion.safetensors", state, metadata=lora_metadata(
        rank=4, alpha=2.0, preset="all", modules=len(state) // 3, steps=5,
        base_model_hash=base_model_hash(tiny_unet(2))))
    bridge.configure(models_dirs=[models], loras_dirs=[loras], output_dir=tmp_path / "out")
    yield loras
    bridge.reset()


def test_lora_nodes_load_validate_convert(lora_folders, trained):
    _, state, injected = trained
    loader = NODE_CLASS_MAPPINGS["SVDLab_LoraLoader"]
    with torch.inference_mode():  # as ComfyUI runs every node
        bundle, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("tiny.safetensors", "fp32", "auto", "none")
        patched, info = loader().load(bundle, "motion.safetensors", 1.0)
    before = {k: v.clone() for k, v in make_tiny_model(seed=2).unet.state_dict().items()}
    assert loader.INPUT_TYPES()["required"]["lora_name"][0] == ["motion.safetensors"]
    assert "not found" in loader.VALIDATE_INPUTS("nope.safetensors") and loader.VALIDATE_INPUTS(None) is True
    assert "0 unmatched" in info and "rank 4" in info and patched is not bundle
    out = run(patched.model.unet, unet_inputs())
    assert (out - injected).abs().max() <= 1e-5 * injected.abs().max() + 1e-6
    assert unchanged(bundle.model.unet, before)  # input untouched
    half, _ = loader().load(bundle, "motion.safetensors", 0.5)
    assert loader().load(bundle, "motion.safetensors", 0.0)[0] is bundle
    q = "input_blocks.1.1.time_stack.0.attn1.to_q.weight"
    assert torch.allclose(half.model.unet.state_dict()[q] - before[q],
                          0.5 * (patched.model.unet.state_dict()[q] - before[q]), atol=1e-6)
    report = NODE_CLASS_MAPPINGS["SVDLab_LoraValidate"]().validate(bundle, "motion.safetensors", True)
    text = report["result"][0]
    assert text.startswith("motion.safetensors") and "OK: " in text and "same base weights" in text
    assert report["ui"]["text"] == [text]
    assert "DIFFERENT base weights" in NODE_CLASS_MAPPINGS["SVDLab_LoraValidate"]().validate(
        patched, "motion.safetensors", True)["result"][0]
    peft = _to_peft(state, bundle, "peft", "unet.")
    save_lora_peft = lora_folders / "svd_xtend.safetensors"
    save_checkpoint(save_lora_peft, peft, {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2.0})})
    convert = NODE_CLASS_MAPPINGS["SVDLab_LoraConvert"]
    assert "must be a name, not a path" in convert.VALIDATE_INPUTS("svd_xtend.safetensors", "../x")
    result = convert().convert("svd_xtend.safetensors", "", 0.0, False, bundle)
    name, info = result["result"]
    written = bridge.lora_output_dir() / name  # nodes write into the output folder, never into a model folder
    assert name == "svd_xtend_comfyui.safetensors" and written.is_file() and "alpha from metadata" in info
    _, converted_info = loader().load(bundle, name, 1.0)
    assert "0 unmatched" in converted_info
    with pytest.raises(CheckpointError, match="exists"):
        convert().convert("svd_xtend.safetensors", "", 0.0, False, bundle)
    with pytest.raises(CheckpointError, match="already uses ComfyUI naming"):
        convert().convert("motion.safetensors", "again", 0.0, False)
    with pytest.raises(InputError, match="must be a name, not a path"):
        convert().convert("svd_xtend.safetensors", "a/b", 0.0, False)


def test_lora_loader_rejects_a_checkpoint_as_lora(lora_folders):
    (lora_folders / "tiny.safetensors").write_bytes(Path(bridge.resolve_checkpoint("tiny.safetensors")).read_bytes())
    bundle, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("tiny.safetensors", "fp32", "auto", "none")
    with pytest.raises(CheckpointError, match="not a LoRA file"):
        NODE_CLASS_MAPPINGS["SVDLab_LoraLoader"]().load(bundle, "tiny.safetensors", 1.0)


# --------------------------------------------------------------------------------- stock ComfyUI (optional)

COMFY_CHECK = """
import json, logging, sys, types
sys.argv = ["x", "--cpu"]
sys.path.insert(0, {comfy!r})
import comfy.options
comfy.options.enable_args_parsing()
import torch, comfy.lora, comfy.model_detection
from safetensors.torch import load_file
missed = []
class Catch(logging.Handler):
    def emit(self, record):
        missed.append(record.getMessage()) if "not loaded" in record.getMessage() else None
logging.getLogger().addHandler(Catch())
base, ours, lora = (load_file({d!r} + n) for n in ("/base.safetensors", "/ours.safetensors", "/lora.safetensors"))
model = types.SimpleNamespace(state_dict=lambda: {{"diffusion_model." + k: v for k, v in base.items()}},
                              model_config=types.SimpleNamespace(unet_config={{}}))
patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model, {{}}))
worst = max((a.calculate_weight(base[k[16:]].clone(), k, 0.7, 1.0, None, lambda w: w) - ours[k[16:]]).abs().max().item()
            for k, a in patches.items())
result = {{"tiny_patched": len(patches), "tiny_missed": len(missed), "worst": worst}}
keys = {keys!r}
if keys:
    sd = {{k: torch.empty(v, device="meta") for k, v in json.load(open(keys)).items()}}
    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    with torch.device("meta"):
        svd = config.get_model(sd, "model.", device="meta")
    missed.clear()
    full = comfy.lora.load_lora(load_file({d!r} + "/full.safetensors"), comfy.lora.model_lora_keys_unet(svd, {{}}))
    result.update(model=type(config).__name__, full_patched=len(full), full_missed=len(missed))
print(json.dumps(result))
"""


def test_stock_comfyui_loads_our_lora_files(trained, tmp_path, reference_dir):
    """Runs ComfyUI's own comfy.lora (key map, load_lora, LoRA adapter math) on our files, in ComfyUI's Python.
    Needs COMFYUI_PATH (a ComfyUI checkout; COMFYUI_PYTHON or COMFYUI_PATH/.venv/bin/python)."""
    comfy = os.environ.get("COMFYUI_PATH")
    if not comfy:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run stock ComfyUI's LoRA loader on our files")
    python = os.environ.get("COMFYUI_PYTHON") or str(Path(comfy) / ".venv" / "bin" / "python")
    _, state, _ = trained
    base = tiny_unet(2)
    save_checkpoint(tmp_path / "base.safetensors", base.state_dict())
    save_checkpoint(tmp_path / "ours.safetensors", apply_lora(base, state, 0.7).state_dict())
    save_lora(tmp_path / "lora.safetensors", state, metadata={})
    keys = reference_dir / "svd_xt_keys.json"
    if keys.is_file():
        official = {k: tuple(v) for k, v in json.loads(keys.read_text()).items()}
        with torch.device("meta"):
            full = VideoUNet(infer_config(official).unet)
        inject_lora(full, rank=2, preset="all")
        small = {k: torch.full(v.shape, 0.01) for k, v in lora_state_dict(full).items()}
        save_lora(tmp_path / "full.safetensors", small, metadata={})
    script = COMFY_CHECK.format(comfy=comfy, d=str(tmp_path), keys=str(keys) if keys.is_file() else "")
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tiny_patched"] == len(state) // 3 and result["tiny_missed"] == 0
    assert result["worst"] <= 1e-6  # ComfyUI's merge == ours
    if keys.is_file():
        assert result["model"] == "SVD_img2vid" and result["full_patched"] == 574 and result["full_missed"] == 0


def test_bridge_lists_loras_from_comfyui_folders(tmp_path, monkeypatch):
    loras, svd = tmp_path / "loras", tmp_path / "svd"
    (loras / "motion").mkdir(parents=True)
    (svd / "loras").mkdir(parents=True)
    for path in (loras / "motion" / "a.safetensors", svd / "loras" / "b.safetensors", svd / "ckpt.safetensors",
                 loras / "notes.txt"):
        path.write_bytes(b"")
    fp = types.ModuleType("folder_paths")
    fp.folder_names_and_paths = {"loras": ([str(loras)], set()), "svd": ([str(svd)], set())}
    fp.get_folder_paths = lambda key: fp.folder_names_and_paths[key][0]
    fp.get_output_directory = lambda: str(tmp_path / "output")
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    fp.get_input_directory = lambda: str(tmp_path / "input")
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    assert bridge.list_loras() == ["motion/a.safetensors", "loras/b.safetensors"]
    assert bridge.find_lora("loras/b.safetensors") == svd / "loras" / "b.safetensors"
    assert bridge.find_lora("ckpt.safetensors") is None  # the svd folder serves only its loras/ subfolder
    assert bridge.find_lora("../svd/ckpt.safetensors") is None and bridge.find_lora(str(loras / "x")) is None
    # converted LoRAs are written into the output folder (never a model folder) and listed from there
    assert bridge.lora_output_dir() == tmp_path / "output" / "SVDLab" / "loras"
    (tmp_path / "output" / "SVDLab" / "loras").mkdir(parents=True)
    (tmp_path / "output" / "SVDLab" / "loras" / "c.safetensors").write_bytes(b"")
    assert bridge.list_loras()[-1] == "c.safetensors"
    with pytest.raises(CheckpointError, match="not found in ComfyUI's loras folder"):
        bridge.resolve_lora("gone.safetensors")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_strength_and_alpha_are_refused(value):
    with pytest.raises(ConfigError, match="strength must be a finite number"):
        apply_lora(tiny_unet(0), {}, value)
    with pytest.raises(ConfigError, match="alpha must be a positive finite number"):
        convert_peft_lora({}, alpha=value)
