"""LoRA nodes: SVDLab_LoraLoader (apply with a strength), SVDLab_LoraValidate (matched / unmatched report),
SVDLab_LoraConvert (diffusers / PEFT names -> ComfyUI names).

LoRA files are listed from ComfyUI's `loras` folder(s) and the `loras/` subfolder of the `svd` model
folder (headless: bridge.configure(loras_dirs=...) / $SVD_LAB_LORAS, then `<model folder>/loras`).

Inside ComfyUI a LoRA is a set of weight patches on a clone of the UNet's ComfyUI ModelPatcher (the weights are
patched when ComfyUI loads the clone; no second UNet); headless it is merged into a copy that shares every
unpatched tensor (svd_model.lora.apply_lora).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..svd_model.errors import CheckpointError, ConfigError, shorten
from ..svd_model.lora import (
    apply_lora,
    base_model_hash,
    check_usable,
    convert_peft_lora_file,
    load_lora,
    validate_lora,
)
from ..svd_model.text_conditioning import CONDITIONING_KEY, CONDITIONINGS
from . import bridge, widgets
from .types import SVDLAB_MODEL, range_problem

log = logging.getLogger(__name__)

CATEGORY = "SVD Lab/lora"
_LORA_TOOLTIP = "LoRA file from ComfyUI's models/loras folder (or models/svd/loras)."


def _lora_input() -> tuple[list[str], dict[str, str]]:
    return (bridge.list_loras(), {"tooltip": _LORA_TOOLTIP})


def _missing(lora_name: str | None) -> bool | str:
    if lora_name is None or bridge.find_lora(lora_name) is not None:
        return True
    return f"LoRA {lora_name!r} not found in the loras folders; refresh the list or copy the file there"


def _describe_metadata(meta: dict[str, str]) -> str:
    fields = [("rank", "svd_lab.lora.rank"), ("alpha", "svd_lab.lora.alpha"), ("preset", "svd_lab.lora.preset"),
              ("patterns", "svd_lab.lora.patterns"), ("steps", "svd_lab.steps"),
              ("converted from", "svd_lab.converted_from")]
    parts = [f"{name} {meta[key]}" for name, key in fields if meta.get(key)]
    return "; ".join(parts) if parts else "no svd_lab metadata"


def _listed_name(path: Path, fallback: str) -> str:
    """The COMBO name under which `path` appears in the loras list."""
    for name in bridge.list_loras():
        found = bridge.find_lora(name)
        if found is not None and found.resolve() == path.resolve():
            return name
    return fallback


class LoraLoader:
    DESCRIPTION = (
        "Applies a LoRA (ComfyUI / kohya naming, temporal layers included) to an SVD Lab model with a strength. "
        "Returns a patched model, the input model is not changed: inside ComfyUI the LoRA becomes weight patches "
        "that ComfyUI applies when it loads the UNet (no second copy; a strength change needs no reload), "
        "headless a merged copy that shares every unpatched weight. "
        "Fails with a clear message when the LoRA fits no layer or was made for a different model."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (SVDLAB_MODEL, "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied to its UNet weights.",
                       "How many weights were patched and what did not match.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": widgets.model("Model from SVDLab_CheckpointLoader (or another LoRA loader)."),
                "lora_name": _lora_input(),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                    "tooltip": "Multiplier of the LoRA's weight change (0 = off, negative = inverted)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name: str | None, strength: float | None = None) -> bool | str:
        return range_problem(cls, "strength", strength) or _missing(lora_name)

    def __init__(self) -> None:
        self._file: tuple[Any, tuple[dict, dict]] | None = None  # ((path, mtime, size), (state, metadata))

    def _read(self, lora_name: str) -> tuple[dict, dict]:
        """The file's tensors, read again only when the file changed (a strength change re-uses them)."""
        path = bridge.resolve_lora(lora_name)
        stat = path.stat()
        stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        if self._file is None or self._file[0] != stamp:
            self._file = (stamp, load_lora(path))
        return self._file[1]

    def load(self, model: Any, lora_name: str, strength: float) -> tuple[Any, str]:
        state, meta = self._read(lora_name)
        report = validate_lora(model, state)
        if strength == 0:
            return model, f"{lora_name}: strength 0, model unchanged ({report.summary()})"
        if bridge.comfy_managed():
            if not math.isfinite(strength):
                raise ConfigError(f"LoRA strength must be a finite number, got {strength!r}")
            check_usable(report)
            patched = bridge.with_lora(model, state, report, strength)
        else:
            patched = apply_lora(model, state, strength)
            bridge.inherit_offload(model, patched)
        if meta.get(CONDITIONING_KEY) in CONDITIONINGS:  # a t2v LoRA makes a text-conditioned model
            patched.conditioning = meta[CONDITIONING_KEY]
        info = f"{lora_name} at strength {strength:g}: {report.summary()}; {_describe_metadata(meta)}"
        log.info(info)
        return patched, info


class LoraValidate:
    DESCRIPTION = (
        "Checks a LoRA file against an SVD Lab model the way ComfyUI maps LoRA keys: which keys match a weight, "
        "which match nothing (ComfyUI would silently skip them), which have the wrong shape (a LoRA for another "
        "model) and which need conversion (diffusers / PEFT names)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "validate"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("Text report: matched / unmatched / shape-mismatched keys and the file's metadata.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": widgets.model("The model the LoRA should fit."),
                "lora_name": _lora_input(),
                "compare_base_hash": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Also hash the model's UNet weights and compare with the hash the LoRA was trained "
                               "on (one pass over the weights, seconds for a full-size model)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name: str | None) -> bool | str:
        return _missing(lora_name)

    def validate(self, model: Any, lora_name: str, compare_base_hash: bool) -> dict[str, Any]:
        state, meta = load_lora(bridge.resolve_lora(lora_name))
        report = validate_lora(model, state)
        lines = [f"{lora_name} ({len(state)} tensors): {_describe_metadata(meta)}", report.text()]
        trained_on = meta.get("svd_lab.base_model_hash", "")
        if compare_base_hash:
            ours = base_model_hash(bridge.unet_state(model))
            verdict = ("same base weights" if ours == trained_on else
                       "no base hash in the file" if not trained_on else "DIFFERENT base weights")
            lines.append(f"base model hash: {verdict} (LoRA: {trained_on or '-'}, model: {ours})")
        text = "\n".join(lines)
        return {"ui": {"text": [text]}, "result": (text,)}


class LoraConvert:
    DESCRIPTION = (
        "Converts an SVD LoRA with diffusers / PEFT module names (e.g. from SVD_Xtend's train_svd_lora.py: "
        "unet.down_blocks...lora_A.weight) into ComfyUI naming (diffusion_model.<module>.lora_up/lora_down/alpha), "
        "which stock ComfyUI and SVDLab_LoraLoader load with temporal layers included. Writes into the loras folder."
    )
    CATEGORY = CATEGORY
    FUNCTION = "convert"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "info")
    OUTPUT_TOOLTIPS = ("Name of the converted file in the loras list.", "What was converted and what not.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "lora_name": (bridge.list_loras(), {"tooltip": "The diffusers / PEFT-named LoRA to convert."}),
                "filename": ("STRING", {
                    "default": "",
                    "tooltip": "Output file name in the loras folder (empty: <input name>_comfyui.safetensors)."}),
                "alpha": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5,
                    "tooltip": "0: the file's alpha or its PEFT metadata (lora_alpha), else alpha = rank (scale 1). "
                               "Otherwise: the lora_alpha the LoRA was trained with."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of that name."}),
            },
            "optional": {
                "model": widgets.model("Model whose layer layout to map onto (default: the full-size SVD UNet layout, "
                                       "shared by svd, svd_xt and sv3d)."),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name: str | None, filename: str | None, alpha: float | None = None) -> bool | str:
        problem = range_problem(cls, "alpha", alpha)
        if problem:
            return problem
        if filename and filename.strip() and (problem := bridge.confine.name_problem(filename, "filename")):
            return problem
        return _missing(lora_name)

    def convert(self, lora_name: str, filename: str, alpha: float, overwrite: bool,
                model: Any = None) -> dict[str, Any]:
        source = bridge.resolve_lora(lora_name)
        name = filename.strip() or f"{source.stem}_comfyui"
        if problem := bridge.confine.name_problem(name, "filename"):
            raise bridge.PathRefused(problem)
        if not name.lower().endswith(".safetensors"):
            name += ".safetensors"
        target = bridge.lora_output_dir() / name
        if target.is_symlink():
            raise bridge.PathRefused(f"filename {shorten(name)} is a symbolic link in the loras folder")
        try:
            result = convert_peft_lora_file(source, target, unet=model, alpha=alpha or None, overwrite=overwrite)
        except CheckpointError as exc:
            raise CheckpointError(f"{lora_name}: {exc}") from None
        listed = _listed_name(target, name)
        info = f"{lora_name} -> {listed}: {result.summary()}"
        if result.unmapped:
            info += f"; unmapped e.g. {result.unmapped[0]}"
        log.info(info)
        return {"ui": {"text": [info]}, "result": (listed, info)}


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_LoraLoader": (LoraLoader, "SVD Lab LoRA Loader"),
    "SVDLab_LoraValidate": (LoraValidate, "SVD Lab LoRA Validate"),
    "SVDLab_LoraConvert": (LoraConvert, "SVD Lab LoRA Convert (diffusers/PEFT -> ComfyUI)"),
}
