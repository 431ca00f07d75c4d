"""Text-to-video: SVDLab_TextEncoderLoader (OpenCLIP text tower + tokenizer) and SVDLab_TextToVideoConditioning
(prompt -> the same conditioning SVD Lab Sampler takes from image-to-video)."""

from __future__ import annotations

import logging
from typing import Any

from ..svd_model.pipelines.image_to_video import MAX_FRAMES, VideoParams
from ..svd_model.pipelines.text_to_video import encode_text_condition
from ..svd_model.text_conditioning import TextEncoder, load_text_encoder
from ..svd_model.weights.loader import SVDBundle
from . import adapters, bridge, widgets
from .types import SVDLAB_CONDITIONING, SVDLAB_TEXT, VideoConditioning, size_problem
from .widgets import XT

log = logging.getLogger(__name__)


TOWER_SUFFIXES = (".safetensors", ".sft")
TOKENIZER_SUFFIXES = (".txt", ".txt.gz", "vocab.json")


class TextEncoderLoader:
    DESCRIPTION = (
        "Loads an OpenCLIP text tower (the text half of an open_clip CLIP model file, e.g. ViT-H-14's "
        "open_clip_pytorch_model.safetensors; SVD checkpoints do not contain it) and its BPE tokenizer "
        "(bpe_simple_vocab_16e6.txt.gz, or a folder with vocab.json + merges.txt), from models/clip, "
        "models/text_encoders, models/svd or models/checkpoints. Safetensors only."
    )
    CATEGORY = "SVD Lab/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (SVDLAB_TEXT, "STRING")
    RETURN_NAMES = ("text_encoder", "info")
    OUTPUT_TOOLTIPS = ("For SVD Lab Text To Video Conditioning and SVD Lab Build Latent Cache (t2v).",
                       "What was loaded.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        # names listed from the model folders; ComfyUI (and the headless validator) check the choice, load()
        # resolves it confined to those folders
        return {"required": {
            "text_tower": (bridge.list_model_files(TOWER_SUFFIXES), {"tooltip": (
                "open_clip model file with the text tower (.safetensors), from models/clip, text_encoders, svd or "
                "checkpoints.")}),
            "tokenizer": (bridge.list_model_files(TOKENIZER_SUFFIXES), {"tooltip": (
                "CLIP BPE vocabulary from the same folders: bpe_simple_vocab_16e6.txt.gz, or the vocab.json of a "
                "folder with vocab.json and merges.txt.")}),
        }}

    def load(self, text_tower: str, tokenizer: str) -> tuple[TextEncoder, str]:
        # kept in CPU memory: it visits the compute device only while it encodes a prompt (or a cache's captions)
        encoder = load_text_encoder(bridge.model_file(text_tower, "text tower"),
                                    bridge.model_file(tokenizer, "tokenizer"))
        config = encoder.tower.config
        info = (f"text tower {text_tower}: width {config.width}, {config.layers} layers, embeds into "
                f"{config.embed_dim} dims; tokenizer {tokenizer}: {encoder.tokenizer.vocab_size} ids")
        log.info(info)
        return encoder, info


class TextToVideoConditioning:
    DESCRIPTION = (
        "Conditions SVD Lab Sampler on a text prompt instead of an image: the prompt's CLIP text embedding drives "
        "the UNet's cross-attention, with no conditioning frame. Needs a text-conditioned checkpoint (a t2v "
        "finetune of this pack: svd-lab train / SVD Lab Train with mode t2v). zero_shot (experimental) drives a "
        "stock image-to-video SVD the same way; it was never trained on text, so results are weak."
    )
    CATEGORY = "SVD Lab/video"
    FUNCTION = "encode"
    RETURN_TYPES = (SVDLAB_CONDITIONING, "LATENT", "STRING")
    RETURN_NAMES = ("conditioning", "latent", "info")
    OUTPUT_TOOLTIPS = ("Conditioning for SVD Lab Sampler.", "Empty latent (frames in the batch).", "What was used.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model(),
            "text_encoder": (SVDLAB_TEXT, {"tooltip": "From SVD Lab Text Encoder Loader."}),
            "prompt": ("STRING", {"default": "a sailboat drifting on a calm sea at sunset, gentle waves",
                                  "multiline": True, "tooltip": "What the video shows."}),
            "negative_prompt": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "The guidance's unconditional branch; empty: no text (as the t2v finetune's conditioning dropout "
                "trains it).")}),
            "width": widgets.size(XT.width, "Video width; multiple of 64 for official-size models."),
            "height": widgets.size(XT.height, "Video height; multiple of 64 for official-size models."),
            "frames": ("INT", {"default": XT.num_frames, "min": 0, "max": MAX_FRAMES,
                               "tooltip": "Frames to generate; 0 = the loaded variant's (SVD 14, SVD-XT 25)."}),
            "fps": widgets.fps(),
            "motion_bucket_id": widgets.motion_bucket(),
        }, "optional": {
            "zero_shot": ("BOOLEAN", {"default": False, "tooltip": (
                "Experimental: drive an image-to-video checkpoint with the text embedding in place of the image's "
                "(CLIP's joint space). Off: such a checkpoint is refused with a message.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width: int | None, height: int | None, prompt: str | None = None) -> bool | str:
        if prompt is not None and not prompt.strip():
            return "prompt is empty: write what the video should show"
        return size_problem(cls, width, height) or True

    def encode(self, model: SVDBundle, text_encoder: TextEncoder, prompt: str, negative_prompt: str, width: int,
               height: int, frames: int, fps: int, motion_bucket_id: int,
               zero_shot: bool = False) -> tuple[VideoConditioning, dict, str]:
        frames = frames or model.defaults.num_frames
        params = VideoParams.for_variant(model.variant, num_frames=frames, width=width, height=height, fps=fps,
                                         motion_bucket_id=motion_bucket_id)
        with bridge.network_on_device(text_encoder.tower, model.device):  # no network of the checkpoint is used
            cond, uncond, params = encode_text_condition(model, text_encoder, prompt, params,
                                                         negative_prompt=negative_prompt, zero_shot=bool(zero_shot))
        conditioning = VideoConditioning(adapters.cond_to_cpu(cond), adapters.cond_to_cpu(uncond), params,
                                         (width, height), model.variant)
        mode = "zero-shot (experimental) on an image-to-video model" if model.conditioning != "text" else "text model"
        info = (f"{width}x{height}, {frames} frames at fps {fps}, motion {motion_bucket_id}, {mode}; "
                f"negative prompt {'set' if negative_prompt.strip() else 'none (zeros)'}")
        latent = adapters.empty_latent(frames, width, height, model.config.unet.out_channels)
        return conditioning, latent, info


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_TextEncoderLoader": (TextEncoderLoader, "SVD Lab Text Encoder Loader"),
    "SVDLab_TextToVideoConditioning": (TextToVideoConditioning, "SVD Lab Text To Video Conditioning"),
}
