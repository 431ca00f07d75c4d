"""OpenCLIP text transformer (the text half of ``open_clip.CLIP``), for CLIP text-image similarity in curation.

SVD checkpoints keep only the text tower's leftovers (token_embedding, positional_embedding, ln_final,
text_projection; sgm deletes the transformer), so the text tower comes from a separate open_clip model file,
e.g. ``open_clip_pytorch_model.safetensors`` of ViT-H-14 (laion2b_s32b_b79k). Attribute names are open_clip's,
so its keys load with ``strict=True`` once a prefix (none, ``text.``, ``model.``, the SVD conditioner's ...) is
stripped:

* ``token_embedding.weight`` (vocab, width), ``positional_embedding`` (context, width)
* ``transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc,
  mlp.c_proj}``, ``ln_final``, ``text_projection`` (width, embed_dim)

Forward: token ids (n, context) -> causal pre-LN transformer -> ``ln_final`` -> the hidden state at the
end-of-text token -> ``@ text_projection`` -> (n, embed_dim), not normalised.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, InputError, ShapeError
from ..weights.checkpoint import CheckpointReader
from .cast import convert
from .clip_transformer import ACTIVATIONS, LN_EPS, SelfAttention, Transformer

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TextEncoderConfig:
    """Architecture of an open_clip text tower. Defaults: ViT-H-14's (laion2b)."""

    vocab_size: int = 49408  # token_embedding.weight.shape[0]
    context_length: int = 77  # positional_embedding.shape[0]
    width: int = 1024  # token_embedding.weight.shape[1]
    layers: int = 24  # number of transformer.resblocks.N
    mlp_width: int = 4096  # transformer.resblocks.0.mlp.c_fc.weight.shape[0]
    embed_dim: int = 1024  # text_projection.shape[1]
    head_width: int = 64  # not in the weights: open_clip's text towers all use 64
    activation: Literal["gelu", "quick_gelu"] = "gelu"  # not in the weights: OpenAI's original CLIPs use quick_gelu

    def __post_init__(self) -> None:
        if self.width % self.head_width:
            raise ConfigError(f"text width {self.width} is not a multiple of head_width {self.head_width}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose from gelu, quick_gelu")

    @property
    def heads(self) -> int:
        return self.width // self.head_width


class OpenCLIPTextTower(nn.Module):
    """open_clip's text encoder; see the module docstring for the key layout."""

    def __init__(self, config: TextEncoderConfig | None = None, eot_token: int | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else TextEncoderConfig()
        self.eot_token = config.vocab_size - 1 if eot_token is None else eot_token  # CLIP: <|endoftext|> is last
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_width, causal=True,
                                       activation=config.activation)
        self.ln_final = nn.LayerNorm(config.width, eps=LN_EPS)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.embed_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """open_clip-like random init (for tests; real use loads weights)."""
        width = self.config.width
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        for module in self.modules():
            if isinstance(module, SelfAttention):
                nn.init.normal_(module.in_proj_weight, std=width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def hidden_states(self, tokens: Tensor) -> Tensor:
        """tokens: (n, L) int64, L <= context_length -> (n, L, width) after ln_final."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ShapeError(f"tokens must be an integer tensor of shape (n, L), got {shape}")
        if tokens.shape[1] > self.config.context_length:
            raise ShapeError(f"at most {self.config.context_length} tokens per text, got {tokens.shape[1]}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise InputError(f"token ids must lie in [0, {self.config.vocab_size}), got {int(tokens.max())}")
        x = self.token_embedding(tokens)  # (n, L, width)
        x = x + self.positional_embedding[: tokens.shape[1]].to(x.dtype)
        x = self.transformer(x)  # (n, L, width)
        return self.ln_final(x)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (n, L) int64 ids (start, text, end-of-text, zero padding) -> (n, embed_dim), not normalised.

        Pooling takes each row's first end-of-text token (open_clip's argmax pooling for CLIP vocabularies);
        a row without one (truncated by the caller) is pooled at its highest id, as open_clip does.
        """
        hidden = self.hidden_states(tokens)  # (n, L, width)
        is_eot = tokens == self.eot_token
        first_eot = is_eot.int().argmax(dim=1)  # (n,)
        index = torch.where(is_eot.any(dim=1), first_eot, tokens.argmax(dim=1))
        pooled = hidden[torch.arange(tokens.shape[0], device=tokens.device), index]  # (n, width)
        return pooled @ self.text_projection.to(pooled.dtype)  # (n, embed_dim)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------

_MARKER = "token_embedding.weight"
_BLOCK = "transformer.resblocks.0.ln_1.weight"


def find_text_prefix(shapes: Mapping[str, Sequence[int]]) -> str:
    """The key prefix of a complete open_clip text tower in a key -> shape table."""
    candidates = [k[: -len(_MARKER)] for k in shapes if k.endswith(_MARKER)]
    complete = [p for p in candidates if p + _BLOCK in shapes and not p.endswith("visual.")]
    if complete:
        return min(complete, key=len)
    if candidates:
        raise CheckpointError(
            f"the file has a text token embedding ({candidates[0]}{_MARKER}) but no text transformer "
            f"({candidates[0]}{_BLOCK}): SVD checkpoints drop it. Give an open_clip model file with the whole "
            "text tower, e.g. ViT-H-14's open_clip_pytorch_model.safetensors"
        )
    raise CheckpointError(
        f"no open_clip text tower found (no key ending in {_MARKER!r}); expected an open_clip CLIP model file "
        "(token_embedding, positional_embedding, transformer.resblocks.*, ln_final, text_projection)"
    )


def infer_text_config(shapes: Mapping[str, Sequence[int]], prefix: str = "", **defaults: object) -> TextEncoderConfig:
    """TextEncoderConfig from open_clip key shapes; `defaults` sets what the weights cannot tell
    (head_width, activation)."""

    def need(key: str) -> Sequence[int]:
        if prefix + key not in shapes:
            raise CheckpointError(f"missing {prefix + key!r}: the open_clip text tower is incomplete")
        return shapes[prefix + key]

    vocab, width = need("token_embedding.weight")
    pat = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    layers = len({m.group(1) for k in shapes if (m := pat.match(k))})
    return TextEncoderConfig(
        vocab_size=int(vocab),
        context_length=int(need("positional_embedding")[0]),
        width=int(width),
        layers=layers,
        mlp_width=int(need("transformer.resblocks.0.mlp.c_fc.weight")[0]),
        embed_dim=int(need("text_projection")[1]),
        **defaults,  # type: ignore[arg-type]
    )


def load_text_tower(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    activation: Literal["gelu", "quick_gelu"] = "gelu",
    head_width: int = 64,
    eot_token: int | None = None,
) -> OpenCLIPTextTower:
    """Read only the text-tower tensors of an open_clip safetensors file (memory-mapped) into a tower."""
    reader = CheckpointReader(path)
    shapes = reader.shapes()
    prefix = find_text_prefix(shapes)
    config = infer_text_config(shapes, prefix, activation=activation, head_width=head_width)
    with torch.device("meta"):
        tower = OpenCLIPTextTower(config, eot_token)
    expected = {prefix + k: tuple(v.shape) for k, v in tower.state_dict().items()}
    wrong = [
        f"{k}: file {list(shapes[k])}, model {list(s)}"
        for k, s in expected.items()
        if k in shapes and tuple(shapes[k]) != s
    ]
    missing = [k for k in expected if k not in shapes]
    if missing or wrong:
        raise CheckpointError(
            f"{path}: the open_clip text tower does not match the architecture inferred from it: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} mismatched (e.g. {wrong[:2]})"
        )
    state = {k[len(prefix) :]: reader.load(k, dtype, device) for k in expected}
    tower.load_state_dict(state, strict=True, assign=True)
    convert(tower)  # cast-on-use layers, as SVDModel's networks: ComfyUI can load it partially (text-to-video)
    log.info(
        "loaded open_clip text tower from %s: width %d, %d layers, embed %d",
        path,
        config.width,
        config.layers,
        config.embed_dim,
    )
    return tower.eval().requires_grad_(False)
