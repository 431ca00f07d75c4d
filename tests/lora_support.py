"""Shared helpers of the LoRA tests (tests/model/test_lora_*.py): the tiny UNet and its inputs, trained-like
adapters, the key rule stock ComfyUI documents, and the PEFT / diffusers / kohya renaming of a ComfyUI LoRA."""

from __future__ import annotations

import torch

from comfyui_svd_lab.svd_model.lora import diffusers_module_map, inject_lora, lora_parameters, lora_state_dict
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.tiny import randomize, tiny_config

OFFICIAL = "model.diffusion_model."
TEMPORAL = {"time_stack", "time_mixer", "time_pos_embed"}
SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha")


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


def trained_lora() -> tuple[VideoUNet, dict[str, torch.Tensor], torch.Tensor]:
    """(injected UNet with trained-like adapters on every Linear/Conv, its ComfyUI state, its output)."""
    unet = tiny_unet(2)
    inject_lora(unet, rank=4, alpha=2.0, preset="all", generator=torch.Generator().manual_seed(0))
    train_like(unet)
    state = lora_state_dict(unet)
    return unet, state, run(unet, unet_inputs())


def to_peft(state: dict, layout, style: str, prefix: str) -> dict:
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
