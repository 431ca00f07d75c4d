"""Text-to-video conditioning: a prompt (and a negative prompt) -> (cond, uncond) for the same sampler and decoder as
image-to-video.

For a text-conditioned model (``bundle.conditioning == "text"``, e.g. this pack's ``t2v`` finetune) the prompt's CLIP
text embedding is the cross-attention context (b, 1, 1024), the concat frame is zeros (no image) and the vector's
cond_aug is 0, as the ``t2v`` finetune trains it. The unconditional branch is the negative prompt's embedding, or
zeros without one (what conditioning dropout trains).

``zero_shot`` (experimental) drives a stock image-to-video checkpoint the same way: CLIP's text and image embeddings
share one space, so the text embedding stands in for the image's; the UNet was never trained without a concat frame
or on text, so expect weak, often static or washed-out results.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..conditioning import Cond, check_size, vector_conditioning
from ..config import Family
from ..cpu_runtime import cpu_inference
from ..errors import CheckpointError, InputError
from ..memory import moved
from ..text_conditioning import TextEncoder, encode_text
from ..weights.loader import SVDBundle
from .image_to_video import VideoParams


@torch.no_grad()
def encode_text_condition(bundle: SVDBundle, encoder: TextEncoder, prompt: str, params: VideoParams, *,
                          negative_prompt: str = "", zero_shot: bool = False) -> tuple[Cond, Cond, VideoParams]:
    """(cond, uncond, params with cond_aug 0) for one video of `prompt` at params' size and frame count."""
    if bundle.family is not Family.SVD:
        raise InputError(f"text-to-video needs an SVD-family model, this checkpoint is {bundle.family.value}")
    if bundle.conditioning != "text" and not zero_shot:
        raise InputError("this checkpoint is an image-to-video model (its metadata records no text conditioning): "
                         "use a text-conditioned finetune (svd-lab train with mode t2v), or turn on the experimental "
                         "zero-shot option")
    context = bundle.config.unet.context_dim
    if encoder.embed_dim != context:
        raise CheckpointError(f"the text tower embeds into {encoder.embed_dim} dims, the UNet's cross-attention "
                              f"takes {context}: use the OpenCLIP tower of the model's CLIP (ViT-H/14: 1024)")
    check_size(params.width, params.height, bundle.config.size_multiple)
    params = replace(params, cond_aug=0.0)
    device = bundle.device
    # the text tower visits the compute device only while encoding
    with moved([encoder.tower], device), cpu_inference(device):
        embedded = encode_text(encoder, [prompt, *([negative_prompt] if negative_prompt.strip() else [])], device)
    crossattn = embedded[:1, None]  # (1, 1, d)
    latent_channels = bundle.config.unet.in_channels - bundle.config.unet.out_channels
    concat = torch.zeros(1, latent_channels, params.height // 8, params.width // 8, device=device)  # no image
    values = {"fps_id": params.fps_id, "motion_bucket_id": params.motion_bucket_id, "cond_aug": 0.0}
    vector = vector_conditioning(bundle.family, values, 1, params.num_frames).to(device)  # (1, t, adm)
    cond = Cond(crossattn, concat, vector)
    uncond = Cond(embedded[1:2, None], concat, vector) if embedded.shape[0] > 1 else cond.unconditional()
    return cond, uncond, params
