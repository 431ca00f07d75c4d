"""LoRA targets and modules (svd_model.lora targets / layers): training presets and patterns, LoRA layers
injected, merged, removed and reloaded."""

from __future__ import annotations

import pytest
import torch
from lora_support import TEMPORAL, run, tiny_unet, train_like, trained_lora, unet_inputs
from train_support import one_thread_fixture

from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError
from comfyui_svd_lab.svd_model.lora import (
    LoRAConv,
    LoRALinear,
    inject_lora,
    load_lora_state,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    targets,
)

# tiny models: one intra-op thread is several times faster than two on a loaded machine
_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def tiny():
    return tiny_unet(2)


@pytest.fixture(scope="module")
def trained():
    """(injected UNet with trained-like adapters on every Linear/Conv, its ComfyUI state, its output)."""
    return trained_lora()


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
