"""LoRA for the VideoUNet, for inference (the LoRA loader, validate and convert nodes) and training alike.

* :mod:`.targets`: which layers a finetune trains (presets, glob / regex patterns);
* :mod:`.layers`: trainable adapters on those layers (inject, merge, remove, state dicts);
* :mod:`.format`: ComfyUI-loadable .safetensors files with svd_lab metadata, the base-model fingerprint;
* :mod:`.keys`: the key names LoRA files use, and how a file fits a model (:func:`validate_lora`);
* :mod:`.apply`: a file merged into a model's weights the way ComfyUI does (:func:`apply_lora`);
* :mod:`.peft`: diffusers / PEFT-named LoRAs converted to ComfyUI naming.

The names below are the public API; the modules depend on each other in that order, bottom-up.
"""

from __future__ import annotations

from .apply import LoraPatch, apply_lora, check_usable
from .format import LORA_FORMAT, base_model_hash, load_lora, lora_metadata, pack_version, save_lora
from .keys import LoraReport, ParsedLora, parse_lora, validate_lora
from .layers import (
    LoRAConv,
    LoRAConv2d,
    LoRAConv3d,
    LoRALayer,
    LoRALinear,
    inject_lora,
    load_lora_state,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
)
from .peft import ConvertResult, convert_peft_lora, convert_peft_lora_file, diffusers_module_map
from .targets import PRESETS, is_temporal, lora_targets, select_modules, set_trainable, trainable_parameters

__all__ = [
    "LORA_FORMAT",
    "PRESETS",
    "ConvertResult",
    "LoRAConv",
    "LoRAConv2d",
    "LoRAConv3d",
    "LoRALayer",
    "LoRALinear",
    "LoraPatch",
    "LoraReport",
    "ParsedLora",
    "apply_lora",
    "base_model_hash",
    "check_usable",
    "convert_peft_lora",
    "convert_peft_lora_file",
    "diffusers_module_map",
    "inject_lora",
    "is_temporal",
    "load_lora",
    "load_lora_state",
    "lora_metadata",
    "lora_parameters",
    "lora_state_dict",
    "lora_targets",
    "merge_lora",
    "pack_version",
    "parse_lora",
    "remove_lora",
    "save_lora",
    "select_modules",
    "set_trainable",
    "trainable_parameters",
    "validate_lora",
]
