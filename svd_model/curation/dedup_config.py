"""The near-duplicate pass's settings (:class:`DedupConfig`), apart from dedup.py so that the CLI can show their
defaults without importing numpy and pyarrow (`svd-lab curate` builds its parser before it starts its workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..configdict import build, check_finite
from ..errors import ConfigError

HASH_BITS = 64  # bits of the perceptual hash
BLOCK = 16_000_000  # similarities per block of the pair search


@dataclass(frozen=True)
class DedupConfig:
    """cosine: CLIP cosine similarity at or above which two clips are duplicates (0..1; 0.95 default: copies of
    one shot score ~0.98-1.0, different shots of one scene lower); hamming: hash bits that may differ (0..64,
    -1 = no hash pairs; 8 default: re-encodes and resizes differ by 0-4 bits, unrelated frames by ~32);
    use_clip: use the saved CLIP embeddings where clips have them; block_elements: similarities per block of
    the pair search (memory: ~5 bytes each for embeddings, ~10 for hashes)."""

    cosine: float = 0.95
    hamming: int = 8
    use_clip: bool = True
    block_elements: int = BLOCK

    def __post_init__(self) -> None:
        check_finite(self, "dedup.")
        if not 0.0 < self.cosine <= 1.0:
            raise ConfigError(f"dedup cosine threshold must be in (0, 1] (1 = identical embeddings only), got "
                              f"{self.cosine!r}")
        if not -1 <= self.hamming <= HASH_BITS:
            raise ConfigError(f"dedup hamming distance must be -1 (hashes off) .. {HASH_BITS} bits, got "
                              f"{self.hamming!r}")
        if self.block_elements < 1:
            raise ConfigError(f"dedup block_elements must be >= 1, got {self.block_elements!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DedupConfig:
        return build(cls, data)

    def describe(self) -> str:
        parts = [f"hash distance <= {self.hamming}/{HASH_BITS}"] if self.hamming >= 0 else []
        parts += [f"CLIP cosine >= {self.cosine:g}"] if self.use_clip else []
        return " or ".join(parts) or "nothing (hashes off and CLIP off)"
