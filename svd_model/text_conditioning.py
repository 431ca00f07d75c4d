"""Text conditioning: prompts -> CLIP text embeddings for the UNet's cross-attention (the paper's text-to-video base
model setup, and the ``t2v`` finetune).

A :class:`TextEncoder` is an OpenCLIP text tower (:mod:`.nn.text_encoder`, user-supplied open_clip weights) with
its BPE tokenizer (:mod:`.curation.tokenizer`, a user-supplied vocabulary file). :func:`encode_text` gives each
prompt's projected end-of-text embedding, ``(n, embed_dim)``: for ViT-H/14 1024 wide, the UNet's context width and
the space SVD's image embedding lives in (CLIP's joint space). A text-conditioned model takes it where an
image-to-video model takes the image embedding: ``Cond.crossattn`` ``(b, 1, 1024)``; its concat frame is zeros.

Which conditioning a checkpoint was trained for is recorded in its metadata (:data:`CONDITIONING_KEY`; the
``t2v`` finetune writes "text") and read back by the loader (``SVDBundle.conditioning``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .curation.tokenizer import CLIPTokenizer, load_tokenizer
from .errors import CheckpointError, InputError
from .nn.text_encoder import OpenCLIPTextTower, load_text_tower

log = logging.getLogger(__name__)

#: Checkpoint / LoRA metadata key naming the conditioning a model was trained for: "image" or "text".
CONDITIONING_KEY = "svd_lab.conditioning"
CONDITIONINGS = ("image", "text")


@dataclass
class TextEncoder:
    """An OpenCLIP text tower and the tokenizer that goes with it (SVDLAB_TEXT between nodes)."""

    tower: OpenCLIPTextTower
    tokenizer: CLIPTokenizer
    source: str = ""

    def __post_init__(self) -> None:
        if self.tokenizer.vocab_size > self.tower.config.vocab_size:
            raise CheckpointError(f"the tokenizer has {self.tokenizer.vocab_size} ids, the text tower's embedding "
                                  f"only {self.tower.config.vocab_size}: they do not belong together")
        self.tower.eot_token = self.tokenizer.eot_token  # pool where this tokenizer puts its end-of-text token

    @property
    def embed_dim(self) -> int:
        return self.tower.config.embed_dim

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device


def load_text_encoder(tower: str | os.PathLike, tokenizer: str | os.PathLike, *, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> TextEncoder:
    """The text tower of an open_clip safetensors file and its tokenizer (bpe_simple_vocab_16e6.txt.gz, or a
    vocab.json + merges.txt folder)."""
    encoder = TextEncoder(load_text_tower(tower, device=device, dtype=dtype), load_tokenizer(tokenizer),
                          source=f"{os.path.basename(str(tower))} + {os.path.basename(str(tokenizer))}")
    return encoder


@torch.no_grad()
def encode_text(encoder: TextEncoder, prompts: Sequence[str], device: torch.device | str | None = None) -> Tensor:
    """prompts -> (n, embed_dim) float32 CLIP text embeddings (projected end-of-text token, not normalised), on
    `device` (default: the tower's). An empty prompt is an error: use zeros for "no text" (the unconditional
    branch, as conditioning dropout trains it)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if empty or not prompts:
        raise InputError(f"text conditioning needs a non-empty prompt (got an empty one at position {empty[:1]})")
    tower = encoder.tower
    length = min(encoder.tokenizer.context_length, tower.config.context_length)
    tokens = encoder.tokenizer(list(prompts), context_length=length).to(encoder.device)  # (n, L)
    out = tower(tokens).float()  # (n, embed_dim)
    return out if device is None else out.to(device)
