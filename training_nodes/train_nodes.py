"""Finetuning nodes: dataset (manifest / folder) -> latent cache -> train (LoRA or full) -> save.

Training leaves ComfyUI's torch.inference_mode, reports progress with a live loss chart as the preview, and
on cancel writes a checkpoint first (the next run with resume on continues from it). Inside ComfyUI the model's
networks leave ComfyUI's memory management for the run (bridge.unmanaged: unloaded, a LoRA carried as weight
patches merged in) and are handed back after it, also on error or interrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..nodes import adapters, bridge, widgets
from ..nodes.types import SVDLAB_MODEL, SVDLAB_TEXT, config_problem, number_problem, range_problem
from ..svd_model.errors import ConfigError, InputError, shorten
from ..svd_model.jsonfile import parse_json
from ..svd_model.memory import move_module
from ..svd_model.text_conditioning import TextEncoder
from ..svd_model.training.cache import LatentCache, build_cache
from ..svd_model.training.config import (
    COND_AUG_MODES,
    METHODS,
    MODES,
    PRECISIONS,
    STORAGE_DTYPES,
    TRAINABLE,
    DataConfig,
    config_from_dict,
)
from ..svd_model.training.data import VideoDataset, make_dataset
from ..svd_model.training.report import image_array, plot_losses
from ..svd_model.training.run import StepEvent, conditioning_of, run_training, trained_bundle, training_bytes
from ..svd_model.weights.loader import SVDBundle, save_bundle

log = logging.getLogger(__name__)

SVDLAB_DATASET = "SVDLAB_DATASET"
SVDLAB_CACHE = "SVDLAB_CACHE"
#: What SVD Lab Curate Folder / Write Manifest return: an object whose ``out_dir`` is the curated folder.
SVDLAB_MANIFEST = "SVDLAB_MANIFEST"
CATEGORY = "SVD Lab/training"
PACK_ROOT = Path(__file__).resolve().parents[1]


def resolve_folder(text: str, what: str) -> Path:
    """A data folder or file inside the input folder, the output folder (curation results) or the pack's example
    inputs; anywhere only headless with ``svd-lab run --allow-any-path``."""
    return bridge.data_path(text, what)


def clip_folder(text: str) -> Path:
    """The folder of training clips (a folder, not a file)."""
    return bridge.data_path(text, "clip folder", folder_only=True)


def manifest_source(text: str) -> Path:
    """A curation output folder or a .parquet manifest inside the allowed folders."""
    path = resolve_folder(text, "manifest")
    if path.is_file() and path.suffix.lower() != ".parquet":
        raise InputError(f"manifest {shorten(text)} is a {path.suffix or 'plain'} file: give the "
                         "curation output folder or a .parquet manifest")
    return path


def _stamp(path: str) -> str:
    """Changes when files below `path` are added, removed or modified (ComfyUI re-runs the node then)."""
    try:
        root = resolve_folder(path, "path")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        listing = [(bridge.display(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files]
    except (InputError, OSError):
        return path
    return hashlib.sha1(repr(listing).encode()).hexdigest()


def _confined(dataset: VideoDataset) -> VideoDataset:
    """Refuse a dataset whose manifest names clips outside the folders a workflow may read."""
    bridge.check_data_files([Path(c.path) for c in dataset.clips], "the dataset")
    return dataset


def _data_widgets() -> dict[str, Any]:
    return {
        "frames": ("INT", {"default": 14, "min": 2, "max": 128, "tooltip": "Frames per training clip (SVD 14, "
                                                                            "SVD-XT 25)."}),
        "fps": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 120.0, "step": 0.5, "tooltip": (
            "Frames are taken at this rate (0 = the clip's own); it is the fps conditioning (fps_id = fps - 1).")}),
        "width": widgets.size(1024, "Training width (multiple of 64).", minimum=64),
        "height": widgets.size(576, "Training height (multiple of 64).", minimum=64),
        "windows_per_clip": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": (
            "Frame windows taken from each clip (spread over it); each becomes one cached training sample.")}),
        "seed": widgets.seed("Placement of single windows.", control_after_generate=False),
    }


class DatasetFromManifest:
    DESCRIPTION = ("Training clips from a curation manifest (the curation output folder or a .parquet manifest, or "
                   "the manifest output of Curate Folder / Write Manifest linked in): only kept clips; each clip's "
                   "measured fps and motion bucket become its conditioning.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (SVDLAB_DATASET, "STRING")
    RETURN_NAMES = ("dataset", "info")
    OUTPUT_TOOLTIPS = ("Clips and frame windows, for SVD Lab Build Latent Cache.", "What was found.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "manifest": ("STRING", {"default": "", "tooltip": "Curation output folder or manifest .parquet file."}),
            **_data_widgets(),
            "buckets": ("STRING", {"default": "", "tooltip": (
                "More training sizes, e.g. '576x1024, 768x768': each clip goes to the size nearest its aspect.")}),
            "only_kept": ("BOOLEAN", {"default": True, "tooltip": "Skip clips the curation filter dropped."}),
        }, "optional": {
            "curated": (SVDLAB_MANIFEST, {"tooltip": (
                "The manifest output of SVD Lab Curate Folder / Write Manifest; when linked, the manifest text "
                "is not used.")}),
        }}

    @classmethod
    def IS_CHANGED(cls, manifest: str, **_: Any) -> str:
        return _stamp(manifest)  # a linked `curated` changes with its curation node, which ComfyUI tracks

    @classmethod
    def VALIDATE_INPUTS(cls, manifest: str | None, fps: float | None = None) -> bool | str:
        if manifest and manifest.strip():  # '' when `curated` is linked in
            problem = config_problem(manifest_source, manifest)
            if problem:
                return problem
        return range_problem(cls, "fps", fps) or True

    def load(self, manifest: str, frames: int, fps: float, width: int, height: int, windows_per_clip: int,
             seed: int, buckets: str, only_kept: bool, curated: Any = None) -> tuple[VideoDataset, str]:
        sizes = parse_buckets(buckets)
        config = DataConfig(manifest=str(manifest_path(manifest, curated)), num_frames=frames, fps=fps,
                            width=width, height=height, buckets=sizes, windows_per_clip=windows_per_clip,
                            only_kept=only_kept, seed=seed)
        dataset = make_dataset(config)
        return dataset, dataset.summary()


def manifest_path(text: str, curated: Any = None) -> Path:
    """The curated folder of a linked SVDLAB_MANIFEST (its ``out_dir``), else the folder / .parquet `text` names."""
    if curated is None:
        return manifest_source(text)
    out_dir = getattr(curated, "out_dir", None)
    if out_dir is None:
        raise InputError(f"curated input is a {type(curated).__name__}, expected the SVDLAB_MANIFEST output of SVD "
                         "Lab Curate Folder / Write Manifest (an object with out_dir)")
    if not Path(out_dir).is_dir():
        raise InputError(f"curated folder {out_dir} does not exist (deleted after curation?): run the curation "
                         "node again")
    return Path(out_dir)


class DatasetFromFolder:
    DESCRIPTION = ("Training clips from a folder of videos (each file is one clip). Without curation there is no "
                   "measured motion: every clip gets the motion bucket set here.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (SVDLAB_DATASET, "STRING")
    RETURN_NAMES = ("dataset", "info")
    OUTPUT_TOOLTIPS = DatasetFromManifest.OUTPUT_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "folder": ("STRING", {"default": "", "tooltip": "Folder with video files (searched recursively)."}),
            **_data_widgets(),
            "motion_bucket_id": ("INT", {"default": 127, "min": 0, "max": 1023,
                                         "tooltip": "Motion conditioning of every clip (curate for measured values)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder: str, **_: Any) -> str:
        return _stamp(folder)

    @classmethod
    def VALIDATE_INPUTS(cls, folder: str | None, fps: float | None = None) -> bool | str:
        if folder and folder.strip():  # '' (the default) is reported when the node runs
            problem = config_problem(clip_folder, folder)
            if problem:
                return problem
        return range_problem(cls, "fps", fps) or True

    def load(self, folder: str, frames: int, fps: float, width: int, height: int, windows_per_clip: int,
             seed: int, motion_bucket_id: int) -> tuple[VideoDataset, str]:
        config = DataConfig(folder=str(clip_folder(folder)), num_frames=frames, fps=fps,
                            width=width, height=height, windows_per_clip=windows_per_clip,
                            motion_bucket_id=motion_bucket_id, seed=seed)
        dataset = _confined(make_dataset(config))
        return dataset, dataset.summary()


def parse_buckets(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            w, h = (int(v) for v in part.lower().strip().split("x"))
        except ValueError:
            raise InputError(f"bucket {part.strip()!r} is not WIDTHxHEIGHT (e.g. 576x1024)") from None
        sizes.append((w, h))
    return tuple(sizes)


class BuildLatentCache:
    DESCRIPTION = ("Encodes every frame window once (VAE posterior, CLIP embeddings, conditioning frames) into "
                   "safetensors shards, so training needs neither the VAE decoder nor the image encoder. "
                   "Resumable; an up-to-date cache is reused.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (SVDLAB_CACHE, "STRING")
    RETURN_NAMES = ("cache", "info")
    OUTPUT_TOOLTIPS = ("The cache, for SVD Lab Train.", "What is in it.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model("The model to finetune (its VAE and image encoder encode)."),
            "dataset": (SVDLAB_DATASET, {"tooltip": "From SVD Lab Dataset From Manifest / Folder."}),
            "cache_name": ("STRING", {"default": "", "tooltip": (
                "Folder name under output/SVDLab/cache (a name, not a path). '' = named after the dataset settings "
                "and model, and rebuilt by itself when the clips change (e.g. a re-curated manifest).")}),
            "cond_aug_mode": (list(COND_AUG_MODES), {"default": "exact", "tooltip": (
                "exact: the conditioning frame is augmented and encoded every step, as the reference (keeps the "
                "small conditioner encoder loaded). cached: a few augmentations are encoded now (no VAE while "
                "training).")}),
            "storage": (list(STORAGE_DTYPES), {"default": "fp16", "tooltip": "Storage precision of the latents."}),
            "rebuild": ("BOOLEAN", {"default": False, "tooltip": (
                "Replace a named cache that holds other clips or was made with other settings (off: that is an "
                "error). An up-to-date cache is always reused.")}),
        }, "optional": {
            "text_encoder": (SVDLAB_TEXT, {"tooltip": (
                "For SVD Lab Train with mode t2v: from SVD Lab Text Encoder Loader; each clip's caption (manifest "
                "caption columns, or clip.txt beside each clip of a folder) is embedded into the cache.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, cache_name: str | None) -> bool | str:
        if cache_name is None or not cache_name.strip():
            return True
        return config_problem(_cache_dir, cache_name) or True

    def build(self, model: SVDBundle, dataset: VideoDataset, cache_name: str, cond_aug_mode: str, storage: str,
              rebuild: bool, text_encoder: TextEncoder | None = None) -> tuple[LatentCache, str]:
        text = text_encoder.source if text_encoder is not None else None
        key = json.dumps([asdict(dataset.config), model.source, cond_aug_mode, storage, text], default=str)
        name = cache_name.strip() or f"cache_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
        directory = _cache_dir(name)
        # build_cache refuses a folder holding other windows or settings; the unnamed folder is this node's own,
        # so a stale one (a re-curated manifest at the same path) is replaced instead
        rebuild = rebuild or not cache_name.strip()
        config = config_from_dict({"cache": {"dir": str(directory), "cond_aug_mode": cond_aug_mode,
                                             "dtype": storage}})
        bar = bridge.Progress(len(dataset.windows))
        with bridge.on_device(model, bridge.FIRST_STAGE + bridge.CONDITIONING):
            cache = build_cache(model, dataset, directory, config.cache, config.objective, device=model.device,
                                rebuild=rebuild, callback=lambda done, total: bar.update(done, total),
                                text_encoder=text_encoder)
        return cache, cache.describe()


def _train_widgets() -> dict[str, Any]:
    return {
        "method": (list(METHODS), {"default": "lora", "tooltip": "lora: low-rank adapters (small file, loads in "
                                                                  "stock ComfyUI). full: the selected weights."}),
        "trainable": (list(TRAINABLE), {"default": "temporal", "tooltip": "Which layers train: temporal (motion), "
                                                                          "spatial (appearance) or all."}),
        "mode": (list(MODES), {"default": "image_to_video", "tooltip": (
            "image_to_video: first frame conditions. keyframes: first and last frame (interpolation model). t2v: "
            "the clips' captions condition through a text encoder (the cache must be built with one); the result "
            "is a text-to-video model for SVD Lab Text To Video Conditioning.")}),
        "steps": ("INT", {"default": 500, "min": 1, "max": 1000000, "tooltip": "Optimizer steps."}),
        "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-8, "max": 1.0, "step": 1e-6, "round": False,
                                    "tooltip": "AdamW learning rate (LoRA ~1e-4, full ~1e-5)."}),
        "lora_rank": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "LoRA rank."}),
        "lora_alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 1.0,
                                 "tooltip": "LoRA alpha (0 = rank, scale 1)."}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Clips per step."}),
        "grad_accum": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Batches accumulated per step."}),
        "precision": (list(PRECISIONS), {"default": "auto", "tooltip": "Autocast dtype (trained weights stay fp32). "
                                                                         "auto: bf16 on CUDA, fp32 on CPU."}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Recompute activations: much less "
                                                                           "memory, ~30% slower."}),
        "ema_decay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99999, "step": 0.0001, "round": False,
                                "tooltip": "EMA of the weights (0 = off, e.g. 0.999); the result uses the EMA."}),
        "save_every": ("INT", {"default": 250, "min": 0, "max": 1000000, "tooltip": "Steps between resumable "
                                                                                    "checkpoints (0 = end only)."}),
        "validate_every": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip": (
            "Steps between validation videos from a fixed image and seed (0 = none).")}),
        "seed": widgets.seed("Seed of every random draw.", control_after_generate=False),
        "run_name": ("STRING", {"default": "svd_finetune", "tooltip": "Folder name under output/SVDLab/train (a "
                                                                      "name, not a path)."}),
        "resume": ("BOOLEAN", {"default": True, "tooltip": "Continue from the newest checkpoint of this run."}),
    }


class Train:
    DESCRIPTION = ("Finetunes the model on a latent cache (EDM loss, log-normal noise levels, conditioning "
                   "augmentation and dropout). Writes resumable checkpoints, a loss log and plot, validation "
                   "videos, and lora.safetensors (ComfyUI keys) or model.safetensors. Cancel writes a checkpoint.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = (SVDLAB_MODEL, "STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "weights_path", "loss_plot", "info")
    OUTPUT_TOOLTIPS = ("The finetuned model (LoRA merged).", "The LoRA / model file written.",
                       "Loss chart.", "Summary of the run.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model("The model to finetune (not modified)."),
            "cache": (SVDLAB_CACHE, {"tooltip": "From SVD Lab Build Latent Cache."}),
            **_train_widgets(),
        }, "optional": {
            "validation_image": ("IMAGE", {"tooltip": "Conditioning image of the validation videos "
                                                      "(default: the first cached clip's)."}),
            "extra_config": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "JSON object with further settings, e.g. {\"objective\": {\"p_mean\": 1.0}, \"optim\": "
                "{\"warmup_steps\": 100}} (see `svd-lab train --print-config`).")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, learning_rate: float | None = None, lora_alpha: float | None = None,
                        ema_decay: float | None = None, run_name: str | None = None,
                        extra_config: str | None = "") -> bool | str:
        if run_name is not None and (problem := config_problem(_run_dir, run_name)):
            return problem
        return (number_problem(cls, learning_rate=learning_rate, lora_alpha=lora_alpha, ema_decay=ema_decay)
                or config_problem(_extra_config, extra_config) or True)

    def train(self, model: SVDBundle, cache: LatentCache, validation_image: Any = None, extra_config: str = "",
              **widgets: Any) -> dict[str, Any]:
        out_dir = _run_dir(widgets["run_name"])
        config = self._config(widgets, extra_config, out_dir)
        device = bridge.device()
        bar = bridge.Progress(config.steps)

        def on_step(event: StepEvent) -> None:
            preview = None
            if bar.in_comfyui and (event.stats.step % 5 == 0 or event.stats.step == event.total):
                preview = ("PNG", plot_losses(*event.log.series(), size=(384, 192)), 384)
            log.info("step %d/%d loss %.5f", event.stats.step, event.total, event.stats.loss)
            bar.update(event.stats.step, event.total, preview)

        home = bridge.resting_device(model)  # where the trained UNet is placed (inside ComfyUI: off the GPU)
        bridge.free_memory(training_bytes(model), device)
        # inside ComfyUI the networks leave its management for the run (LoRA patches merged) and return after
        with bridge.unmanaged(model), torch.inference_mode(False), torch.enable_grad():
            image = None
            if validation_image is not None:
                image = adapters.images_to_video(validation_image.clone())[0, :1]  # (1, 3, H, W)
            move_module(model.model, torch.device("cpu"))  # the VAEs, CLIP and the base UNet leave the GPU
            try:
                result = run_training(config.replace(device=str(device)), bundle=model, cache=cache,
                                      on_step=on_step, validation_image=image)
                trained = trained_bundle(model, result.unet, home, conditioning_of(config, model))
            finally:
                move_module(model.model, home)
                bridge.soft_empty_cache()
        steps, losses = [r["step"] for r in result.records], [r["loss"] for r in result.records]
        plot = plot_losses(steps, losses)
        plot_path = result.plot_path or out_dir / "loss.png"
        info = (f"{result.step} steps of {config.method} on {config.trainable} layers; last loss "
                f"{losses[-1] if losses else float('nan'):.5f}; result {bridge.display(result.weights_path)}; "
                f"state {bridge.display(result.state_path)}; {len(result.validation)} validation video(s)")
        image_out = adapters.array_to_images(image_array(plot))
        shown = [plot_path, *result.validation[-1:]]  # the loss plot and the newest validation video (webp)
        ui = {"images": [_ui_file(p) for p in shown], "svdlab_loss": [{"steps": steps, "loss": losses}],
              "text": [info]}
        return {"ui": ui, "result": (trained, bridge.display(result.weights_path), image_out, info)}

    @staticmethod
    def _config(w: dict[str, Any], extra: str, out_dir: Path):
        values = _extra_config(extra)
        values.update(output_dir=str(out_dir), method=w["method"], trainable=w["trainable"], mode=w["mode"],
                      steps=w["steps"], batch_size=w["batch_size"], precision=w["precision"],
                      gradient_checkpointing=w["gradient_checkpointing"], ema_decay=w["ema_decay"],
                      save_every=w["save_every"], seed=w["seed"], resume="auto" if w["resume"] else "none")
        values.setdefault("optim", {}).update(lr=w["learning_rate"], grad_accum=w["grad_accum"])
        values.setdefault("lora", {}).update(rank=w["lora_rank"], alpha=w["lora_alpha"])
        values.setdefault("validation", {}).update(every=w["validate_every"])
        return config_from_dict(values)


def _named_dir(name: str, what: str, under: str) -> Path:
    """output/<under>/<name> for a plain ``name``; PathRefused for a path, a hidden name or a link leading out."""
    problem = bridge.confine.name_problem(name, what)
    if problem:
        raise bridge.PathRefused(problem)
    return bridge.output_path(name, what, under=under)


def _run_dir(name: str) -> Path:
    return _named_dir(name, "run_name", "SVDLab/train")


def _cache_dir(name: str) -> Path:
    return _named_dir(name, "cache_name", "SVDLab/cache")


#: Training settings that name files or folders: the node sets them itself (from its inputs and run name), so the
#: workflow's extra_config may not (it would read or write anywhere).
PATH_SETTINGS = ("checkpoint", "output_dir", "resume", "data", "cache", "validation.image", "text")


def _extra_config(text: str) -> dict[str, Any]:
    """The Train node's extra_config JSON object ('' = {}); ConfigError for bad JSON or a setting naming a path."""
    values = parse_json(text, "extra_config") if text.strip() else {}
    if not isinstance(values, dict):
        raise ConfigError(f"extra_config must be a JSON object, got {type(values).__name__}")
    for dotted in PATH_SETTINGS:
        head, _, leaf = dotted.partition(".")
        section = values.get(head) if leaf else None
        if (not leaf and head in values) or (isinstance(section, dict) and leaf in section):
            raise ConfigError(f"extra_config may not set {dotted}: files and folders of a run come from the node's "
                              "inputs and run_name")
    return values


def _ui_file(path: Path) -> dict[str, str]:
    """The UI entry of a file in the output folder (as core SaveImage reports it: names, no server path)."""
    base = bridge.folder("output").absolute()
    subfolder = path.parent.absolute().relative_to(base).as_posix() if path.absolute().is_relative_to(base) else ""
    return {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}


class SaveFinetuned:
    DESCRIPTION = ("Saves a (finetuned) model as one .safetensors file in the official single-file layout, which "
                   "this pack and stock ComfyUI (Image Only Checkpoint Loader) load. It goes to the output folder "
                   "(like core Save Checkpoint); move it to models/svd to load it.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model("E.g. from SVD Lab Train."),
            "filename_prefix": ("STRING", {"default": "SVDLab/finetuned", "tooltip": (
                "File name prefix inside the output folder.")}),
            "dtype": (list(STORAGE_DTYPES), {"default": "fp16", "tooltip": "Precision of the UNet and image "
                                                                            "encoder (the VAEs stay as loaded)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str | None) -> bool | str:
        return bridge.prefix_problem(filename_prefix) or True

    def save(self, model: SVDBundle, filename_prefix: str, dtype: str) -> dict[str, Any]:
        target, _, _ = bridge.save_target(filename_prefix, "output", "safetensors")
        with bridge.unmanaged(model):  # inside ComfyUI: the weights as this model sees them (LoRA patches merged)
            written = save_bundle(model, target, dtype=dtype)
        log.info("saved %s", written)
        return {"ui": {"files": [_ui_file(written)], "text": [bridge.display(written)]}, "result": ()}


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_DatasetFromManifest": (DatasetFromManifest, "SVD Lab Dataset From Manifest"),
    "SVDLab_DatasetFromFolder": (DatasetFromFolder, "SVD Lab Dataset From Folder"),
    "SVDLab_BuildLatentCache": (BuildLatentCache, "SVD Lab Build Latent Cache"),
    "SVDLab_Train": (Train, "SVD Lab Train"),
    "SVDLab_SaveFinetuned": (SaveFinetuned, "SVD Lab Save Finetuned Model"),
}
