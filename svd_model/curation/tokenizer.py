"""CLIP's byte-level BPE tokenizer, for the open_clip text tower (no network, no extra dependency).

Vocabulary files (user-supplied):

* open_clip / OpenAI format: ``bpe_simple_vocab_16e6.txt.gz`` (or an uncompressed ``.txt``): a version line, then
  one merge ("a b") per line. The vocabulary is built from it as CLIP does: the 256 byte symbols, the same with
  the end-of-word mark ``</w>``, one token per merge (the first ``max_merges`` = 48894 for CLIP: 49408 ids), then
  ``<|startoftext|>`` and ``<|endoftext|>``.
* Hugging Face format: ``vocab.json`` (token -> id) and ``merges.txt`` in one folder.

Encoding: HTML entities unescaped, whitespace collapsed, lower-cased; split into words, contractions, single
digits and punctuation runs (CLIP's pattern); each piece mapped to byte symbols and merged by BPE rank. A text
becomes ``[<|startoftext|>] + ids + [<|endoftext|>]``, zero-padded to the context length (77); longer texts are cut
and end with ``<|endoftext|>`` (open_clip's truncation). (CLIP also runs ftfy's mojibake repair, which is not done
here.)
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError

#: CLIP's pre-tokenizer with the standard `re` module ([^\W\d_] ~ letters, \d ~ digits).
FALLBACK_PATTERN = re.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+""", re.IGNORECASE
)
try:  # the `regex` module knows Unicode classes (\p{L}, \p{N}) as CLIP's pattern uses them
    import regex as _regex

    _PATTERN = _regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        _regex.IGNORECASE,
    )
except ImportError:  # pragma: no cover - depends on the environment
    _PATTERN = FALLBACK_PATTERN

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
CLIP_MERGES = 49152 - 256 - 2  # merges CLIP uses from bpe_simple_vocab_16e6.txt.gz (vocabulary 49408)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map of the 256 byte values to printable characters: printable Latin-1 bytes map to
    themselves, the rest (control, space, ...) to the characters 256, 257, ... in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def clean_text(text: str) -> str:
    """HTML entities unescaped (twice, as CLIP), whitespace runs collapsed to one space, stripped, lower-cased."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip().lower()


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:], strict=True))


class CLIPTokenizer:
    """Byte-level BPE (see the module docstring). ``tokenizer(texts)`` -> (n, context_length) int64 ids."""

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]], context_length: int = 77) -> None:
        for special in (SOT, EOT):
            if special not in encoder:
                raise CheckpointError(f"the vocabulary has no {special} token")
        if context_length < 2:
            raise ConfigError(f"context_length must be >= 2, got {context_length}")
        self.encoder = encoder
        self.decoder = {i: t for t, i in encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot_token, self.eot_token = encoder[SOT], encoder[EOT]
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @property
    def vocab_size(self) -> int:
        return max(self.encoder.values()) + 1

    @classmethod
    def from_bpe_file(
        cls, path: str | os.PathLike, *, max_merges: int = CLIP_MERGES, context_length: int = 77
    ) -> CLIPTokenizer:
        """open_clip format: a (gzipped) merges file; the vocabulary is derived from the byte symbols + merges."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"BPE vocabulary file not found: {path} (e.g. open_clip's bpe_simple_vocab_16e6.txt.gz)"
            )
        raw = path.read_bytes()
        text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
        merges = _parse_merges(text.split("\n"), path)[:max_merges]
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        return cls({tok: i for i, tok in enumerate(vocab)}, merges, context_length)

    @classmethod
    def from_hf_files(
        cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, *, context_length: int = 77
    ) -> CLIPTokenizer:
        """Hugging Face format: vocab.json (token -> id) and merges.txt."""
        vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
        for p in (vocab_json, merges_txt):
            if not p.is_file():
                raise CheckpointError(f"tokenizer file not found: {p}")
        try:
            encoder = json.loads(vocab_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{vocab_json} is not a JSON vocabulary: {exc}") from None
        merges = _parse_merges(merges_txt.read_text(encoding="utf-8").split("\n"), merges_txt)
        return cls({str(k): int(v) for k, v in encoder.items()}, merges, context_length)

    # -- encoding -------------------------------------------------------------------------------------------

    def bpe(self, piece: str) -> list[str]:
        """BPE symbols of one pre-tokenized piece (already byte-mapped); the last symbol ends in </w>."""
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + END_OF_WORD]
        while len(word) > 1:
            pair = min(_pairs(word), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 100_000:
            self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start / end tokens."""
        ids = []
        for piece in _PATTERN.findall(clean_text(text)):
            mapped = piece if piece in (SOT, EOT) else "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for symbol in self.bpe(mapped):
                if symbol not in self.encoder:
                    raise CheckpointError(f"BPE symbol {symbol!r} is not in the vocabulary (inconsistent vocab files)")
                ids.append(self.encoder[symbol])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (start / end / padding zeros after the end are dropped)."""
        symbols = []
        for i in ids:
            i = int(i)
            if i == self.eot_token:
                break
            if i != self.sot_token:
                symbols.append(self.decoder.get(i, ""))
        data = bytearray(self.byte_decoder[c] for c in "".join(symbols) if c in self.byte_decoder)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        """texts -> (n, context_length) int64: start, ids, end-of-text, zeros; cut texts end with end-of-text."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token][:length]
            ids[-1] = self.eot_token
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


def _parse_merges(lines: Sequence[str], path: Path) -> list[tuple[str, str]]:
    merges = []
    for number, line in enumerate(lines):
        if not line.strip() or (number == 0 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{path}: line {number + 1} is not a BPE merge ('a b'): {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise CheckpointError(f"{path} holds no BPE merges")
    return merges


def load_tokenizer(path: str | os.PathLike, *, context_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer from open_clip's merges file (.txt / .txt.gz), a Hugging Face folder (vocab.json +
    merges.txt), or a vocab.json / merges.txt path whose partner sits next to it."""
    path = Path(path)
    if path.is_dir():
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return CLIPTokenizer.from_hf_files(vocab, merges, context_length=context_length)
        gz = sorted(path.glob("bpe_simple_vocab*.txt*"))
        if gz:
            return CLIPTokenizer.from_bpe_file(gz[0], context_length=context_length)
        raise CheckpointError(f"{path} has neither vocab.json + merges.txt nor bpe_simple_vocab_16e6.txt.gz")
    if path.name == "vocab.json":
        return CLIPTokenizer.from_hf_files(path, path.with_name("merges.txt"), context_length=context_length)
    if path.name == "merges.txt" and path.with_name("vocab.json").is_file():
        return CLIPTokenizer.from_hf_files(path.with_name("vocab.json"), path, context_length=context_length)
    return CLIPTokenizer.from_bpe_file(path, context_length=context_length)
