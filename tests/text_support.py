"""A tiny OpenCLIP text tower and BPE vocabulary written to files, for the text-to-video tests (random weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyui_svd_lab.svd_model.nn.text_encoder import OpenCLIPTextTower, TextEncoderConfig

MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"),
          ("re", "d</w>"), ("b", "l"), ("bl", "u"), ("blu", "e</w>")]
VOCAB = 512 + len(MERGES) + 2  # byte symbols, the same with </w>, one per merge, start and end of text


def write_text_files(folder: Path, embed_dim: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """(text tower .safetensors, bpe vocabulary .txt) in `folder`: a 1-layer tower of width 64 embedding into
    `embed_dim` (the micro UNet's context width), seeded random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "tiny_bpe.txt"
    vocab.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    torch.manual_seed(seed)  # the tower's own init draws from the global RNG (module setup, then overwritten)
    tower = OpenCLIPTextTower(TextEncoderConfig(vocab_size=VOCAB, context_length=16, width=64, layers=1,
                                                mlp_width=128, embed_dim=embed_dim))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if p.ndim < 2:  # norms near 1, small biases: the tokens, not constant offsets, make the embedding
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.02 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    path = folder / "tiny_text_tower.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(path))
    return path, vocab
