"""CLIP scores of a clip (SVD paper, appendix C): CLIP image embeddings of its first, centre and last frames, an
aesthetic score from them (a LAION-style predictor) and the cosine similarity with captions (text-image match).

* The image tower is the SVD checkpoint's own OpenCLIP ViT-H/14 (``conditioner.embedders.0.open_clip.model.visual``
  in SVD and SV3D files), read alone from the memory-mapped file: the 4.7 GB of UNet and VAEs stay on disk. An
  open_clip model file (``visual.*`` keys) works too, and so does an already loaded :class:`SVDBundle`.
* The aesthetic head and the text tower + tokenizer are optional user files (safetensors / vocabulary files).
  Without them those scores are ``None`` (a message is logged once) and the pipeline skips them.

Frame preprocessing: ``crop="center"`` (default) is open_clip's evaluation transform (resize the short side to
224, centre crop), which the aesthetic predictors and text similarities were made with; ``crop="squash"`` is
SVD's conditioning transform (the whole frame squashed to 224 x 224, :func:`nn.image_encoder.preprocess`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, InputError
from ..nn.image_encoder import CLIP_MEAN, CLIP_STD, OpenCLIPVisionTower, preprocess
from ..nn.text_encoder import OpenCLIPTextTower, load_text_tower
from ..weights.checkpoint import CheckpointReader
from ..weights.detect import infer_image_encoder_config
from .text import check_rgb
from .tokenizer import CLIPTokenizer, load_tokenizer

log = logging.getLogger(__name__)

_VISUAL_MARKER = "visual.conv1.weight"
_LOGGED: set[str] = set()
Crop = Literal["center", "squash"]


def _log_once(message: str, level: int = logging.WARNING) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.log(level, message)


def find_visual_prefix(keys: Sequence[str] | Mapping[str, object]) -> str:
    """Prefix of the OpenCLIP vision tower in a checkpoint's keys (SVD / SV3D: the conditioner's open_clip model;
    an open_clip file: ``visual.``)."""
    found = sorted((k[: -len("conv1.weight")] for k in keys if k.endswith(_VISUAL_MARKER)), key=len)
    if not found:
        raise CheckpointError(
            f"no OpenCLIP image tower in this file (no key ending in {_VISUAL_MARKER!r}); expected an SVD / SV3D "
            "checkpoint (conditioner.embedders.0.open_clip.model.visual.*) or an open_clip model file (visual.*)"
        )
    return found[0]


# ---------------------------------------------------------------------------------------------------------------
# Aesthetic head
# ---------------------------------------------------------------------------------------------------------------

_ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class AestheticHead(nn.Module):
    """A LAION-style aesthetic predictor: Linear layers (activation between them; dropout is a no-op at
    inference) over the L2-normalised CLIP image embedding -> one score per image.

    LAION's improved predictor (ViT-L/14, 768 -> 1024 -> 128 -> 64 -> 16 -> 1) has no activations between its
    Linear layers (only dropout), hence the default "none"; the older LAION-5B predictor is a single Linear.
    """

    def __init__(self, widths: Sequence[int], activation: str = "none") -> None:
        super().__init__()
        if len(widths) < 2 or widths[-1] != 1:
            raise ConfigError(f"an aesthetic head maps the embedding to one score; got layer widths {list(widths)}")
        act = _ACTIVATIONS.get(activation)
        if act is None:
            raise ConfigError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.widths, self.activation = tuple(int(w) for w in widths), activation
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.act = act()

    @property
    def in_features(self) -> int:
        return self.widths[0]

    def forward(self, emb: Tensor) -> Tensor:
        """emb: (n, in_features) CLIP image embeddings (any scale) -> (n,) scores."""
        x = F.normalize(emb.to(self.linears[0].weight.dtype), dim=-1)  # (n, d), unit length as LAION trains
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < len(self.linears) - 1:
                x = self.act(x)
        return x[:, 0]  # (n,)


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_aesthetic_head(
    path: str | os.PathLike, *, activation: str | None = None, device: torch.device | str = "cpu"
) -> AestheticHead:
    """Read an aesthetic head from safetensors. The layer stack is inferred from the 2-D ``*weight`` tensors in
    natural key order (``layers.0``, ``layers.2``, ... or ``fc1``, ``fc2`` or one ``weight``), each with a
    ``*bias`` of its output width; consecutive layers must chain. `activation` (between layers) is not in the
    weights: the argument, else the file's metadata entry "activation", else "none"."""
    reader = CheckpointReader(path)
    weights = sorted(
        (k for k, info in reader.infos.items() if k.endswith("weight") and len(info.shape) == 2), key=_natural_key
    )
    if not weights:
        raise CheckpointError(f"{path}: no 2-D '*weight' tensors, so no Linear layers for an aesthetic head")
    shapes = [reader.infos[k].shape for k in weights]  # (out, in) each
    for i in range(1, len(weights)):
        if shapes[i][1] != shapes[i - 1][0]:
            raise CheckpointError(
                f"{path}: the Linear layers do not chain: {weights[i - 1]} gives {shapes[i - 1][0]} features but "
                f"{weights[i]} takes {shapes[i][1]}"
            )
    widths = [shapes[0][1]] + [s[0] for s in shapes]
    act = activation or reader.metadata.get("activation", "none")
    with torch.device("meta"):
        head = AestheticHead(widths, act)
    state = {}
    for i, key in enumerate(weights):
        bias = key[: -len("weight")] + "bias"
        state[f"linears.{i}.weight"] = reader.load(key, torch.float32, device)
        if bias not in reader.infos:
            raise CheckpointError(f"{path}: {key} has no bias {bias!r}")
        state[f"linears.{i}.bias"] = reader.load(bias, torch.float32, device)
    head.load_state_dict(state, strict=True, assign=True)
    log.info("loaded aesthetic head from %s: widths %s, activation %s", path, widths, act)
    return head.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# Scorer
# ---------------------------------------------------------------------------------------------------------------


def load_image_tower(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> OpenCLIPVisionTower:
    """Only the OpenCLIP vision tower of an SVD / SV3D / open_clip safetensors file (memory-mapped, partial)."""
    reader = CheckpointReader(path)
    shapes = reader.shapes()
    prefix = find_visual_prefix(shapes)
    config = infer_image_encoder_config(shapes, prefix)
    with torch.device("meta"):
        tower = OpenCLIPVisionTower(config)
    expected = {prefix + k: tuple(v.shape) for k, v in tower.state_dict().items()}
    bad = [k for k, s in expected.items() if tuple(shapes.get(k, ())) != s]
    if bad:
        raise CheckpointError(f"{path}: the image tower under {prefix!r} is incomplete or malformed: {bad[:3]}")
    tower.load_state_dict({k[len(prefix) :]: reader.load(k, dtype, device) for k in expected}, strict=True, assign=True)
    log.info("loaded the CLIP image tower (%d keys under %s) from %s", len(expected), prefix, path)
    return tower.eval().requires_grad_(False)


def frames_to_clip_input(frames: Sequence[np.ndarray], size: int, crop: Crop, device: torch.device) -> Tensor:
    """uint8 (H, W, 3) frames -> (n, 3, size, size) float32 normalised CLIP input."""
    if crop not in ("center", "squash"):
        raise ConfigError(f"unknown crop {crop!r}; choose from center, squash")
    out = []
    for frame in frames:
        x = torch.from_numpy(check_rgb(frame)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # (1,3,H,W)
        if crop == "squash":
            out.append(preprocess(x, size))
            continue
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        x = F.interpolate(x, new, mode="bicubic", antialias=min(h, w) > size)  # ~ PIL bicubic (open_clip)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        x = (x[..., top : top + size, left : left + size].clamp(-1, 1) + 1) / 2  # (1, 3, S, S) in [0, 1]
        mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        out.append((x - mean) / std)
    return torch.cat(out)  # (n, 3, S, S)


def _resolve(obj: object, loader: Callable[..., object], what: str, **kwargs: object) -> Any:
    """An already-built object, or the result of loader(path) for an existing path, or None (logged once)."""
    if obj is None:
        _log_once(f"no {what} given: those scores are skipped", logging.INFO)
        return None
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.exists():
            _log_once(f"{what} not found at {path}: those scores are skipped")
            return None
        return loader(path, **kwargs)
    return obj


HeadSource = AestheticHead | str | os.PathLike | None  # a loaded head, a safetensors path, or None
TextSource = OpenCLIPTextTower | str | os.PathLike | None
TokenizerSource = CLIPTokenizer | str | os.PathLike | None


class ClipScorer:
    """CLIP image embeddings, aesthetic scores and caption similarities for a few frames of a clip."""

    def __init__(
        self,
        tower: OpenCLIPVisionTower,
        *,
        aesthetic_head: HeadSource = None,
        text_tower: TextSource = None,
        tokenizer: TokenizerSource = None,
        crop: Crop = "center",
        batch_size: int = 16,
    ) -> None:
        if crop not in ("center", "squash"):
            raise ConfigError(f"unknown crop {crop!r}; choose from center, squash")
        self.tower, self.crop, self.batch_size = tower.eval(), crop, max(1, int(batch_size))
        device = self.device
        self.head = _resolve(aesthetic_head, load_aesthetic_head, "aesthetic head", device=device)
        if self.head is not None and self.head.in_features != self.embed_dim:
            raise CheckpointError(
                f"the aesthetic head takes {self.head.in_features}-d embeddings but this image tower gives "
                f"{self.embed_dim}-d ones (768 = CLIP ViT-L/14, 1024 = ViT-H/14, SVD's tower): use a head trained "
                "on this tower's embeddings"
            )
        self.text = _resolve(text_tower, load_text_tower, "text tower", device=device)
        self.tokenizer = _resolve(tokenizer, load_tokenizer, "tokenizer")
        if (self.text is None) != (self.tokenizer is None):
            _log_once("text similarity needs both a text tower and a tokenizer; only one was given: skipped")
            self.text = self.tokenizer = None
        self.context_length = 0
        if self.text is not None:
            self._check_text()

    def _check_text(self) -> None:
        text, tok = self.text, self.tokenizer
        if text.config.embed_dim != self.embed_dim:
            raise CheckpointError(
                f"the text tower embeds into {text.config.embed_dim} dims, the image tower into {self.embed_dim}: "
                "they come from different CLIP models"
            )
        if tok.vocab_size > text.config.vocab_size:
            raise CheckpointError(
                f"the tokenizer has {tok.vocab_size} ids, the text tower's embedding only {text.config.vocab_size}"
            )
        text.eot_token = tok.eot_token  # pool where this tokenizer puts its end-of-text token
        self.context_length = min(tok.context_length, text.config.context_length)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        aesthetic_head: HeadSource = None,
        text_tower: TextSource = None,
        tokenizer: TokenizerSource = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        crop: Crop = "center",
    ) -> ClipScorer:
        """Load only the image tower of an SVD / SV3D / open_clip safetensors file; the rest is optional."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; load it with load_bundle() and use ClipScorer.from_bundle()")
        tower = load_image_tower(path, device=device, dtype=dtype)
        return cls(tower, aesthetic_head=aesthetic_head, text_tower=text_tower, tokenizer=tokenizer, crop=crop)

    @classmethod
    def from_bundle(
        cls,
        bundle: object,
        *,
        aesthetic_head: HeadSource = None,
        text_tower: TextSource = None,
        tokenizer: TokenizerSource = None,
        crop: Crop = "center",
    ) -> ClipScorer:
        """Share the image tower of a loaded SVDBundle (or SVDModel)."""
        model = getattr(bundle, "model", bundle)
        tower = getattr(model, "image_encoder", None)
        if not isinstance(tower, OpenCLIPVisionTower):
            raise InputError(f"expected an SVDBundle or SVDModel with an image_encoder, got {type(bundle).__name__}")
        return cls(tower, aesthetic_head=aesthetic_head, text_tower=text_tower, tokenizer=tokenizer, crop=crop)

    @property
    def device(self) -> torch.device:
        return self.tower.conv1.weight.device

    @property
    def embed_dim(self) -> int:
        return self.tower.config.embed_dim

    @property
    def has_aesthetic(self) -> bool:
        return self.head is not None

    @property
    def has_text(self) -> bool:
        return self.text is not None

    @torch.no_grad()
    def embed(self, frames: Sequence[np.ndarray]) -> Tensor:
        """frames: (H, W, 3) uint8 RGB each (any sizes) -> (n, embed_dim) float32 CLIP image embeddings
        (projected CLS token, not normalised)."""
        if len(frames) == 0:
            raise InputError("embed needs at least one frame, got none")
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            x = frames_to_clip_input(chunk, self.tower.config.image_size, self.crop, self.device)
            out.append(self.tower(x).float())  # (b, d)
        return torch.cat(out)

    @torch.no_grad()
    def aesthetic(self, emb: Tensor) -> Tensor | None:
        """emb: (n, d) from :meth:`embed` -> (n,) aesthetic scores, or None without a head."""
        if self.head is None:
            return None
        self._check_emb(emb)
        return self.head(emb.to(self.device)).float()

    @torch.no_grad()
    def similarity(self, emb: Tensor, texts: Sequence[str]) -> Tensor | None:
        """emb: (n, d), texts: k captions -> (n, k) cosine similarities in [-1, 1], or None without a text tower."""
        if self.text is None or self.tokenizer is None:
            return None
        self._check_emb(emb)
        if isinstance(texts, str) or len(texts) == 0:
            raise InputError("texts must be a non-empty sequence of strings (wrap a single caption in a list)")
        tokens = self.tokenizer(list(texts), self.context_length).to(self.device)  # (k, context)
        txt = F.normalize(self.text(tokens).float(), dim=-1)  # (k, d)
        img = F.normalize(emb.to(self.device).float(), dim=-1)  # (n, d)
        return img @ txt.T  # (n, k)

    def _check_emb(self, emb: Tensor) -> None:
        if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[1] != self.embed_dim:
            shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
            raise InputError(f"embeddings must have shape (n, {self.embed_dim}) (from ClipScorer.embed), got {shape}")
