"""OpenCLIP text tower (causal transformer, end-of-text pooling, open_clip key layout) and the CLIP BPE tokenizer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from comfyui_svd_lab.svd_model.curation import tokenizer as tk
from comfyui_svd_lab.svd_model.curation.tokenizer import CLIPTokenizer, load_tokenizer
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError, ShapeError
from comfyui_svd_lab.svd_model.nn.text_encoder import (
    OpenCLIPTextTower,
    TextEncoderConfig,
    find_text_prefix,
    infer_text_config,
    load_text_tower,
)
from comfyui_svd_lab.svd_model.weights.checkpoint import save_checkpoint

MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("d", "o"),
    ("do", "g</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("o", "n</w>"),
    ("s", "i"),
    ("si", "t"),
    ("sit", "s</w>"),
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o</w>"),
    ("ca", "t"),
    ("cat", "s</w>"),
    ("e", "r</w>"),
]
TEXTS = [
    "The cat sits on the dog",
    "hello  HELLO, world!!",
    "naïve café 42 cats",
    "it's the end",
    "emoji 🙂 ok",
    "under_score__x and\ttabs\nnewlines",
    "中文 text",
    "dogs' things",
]


def _write_bpe(path: Path, merges: list[tuple[str, str]] = MERGES) -> Path:
    path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def tok(tmp_path: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_bpe_file(_write_bpe(tmp_path / "bpe.txt"))


def _config(vocab: int = 512 + len(MERGES) + 2, **kw: object) -> TextEncoderConfig:
    base = dict(vocab_size=vocab, context_length=20, width=32, layers=2, mlp_width=64, embed_dim=24, head_width=16)
    return TextEncoderConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture()
def tower() -> OpenCLIPTextTower:
    torch.manual_seed(0)
    model = OpenCLIPTextTower(_config()).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


def test_byte_map_is_a_bijection() -> None:
    table = tk.bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] != " "


def test_vocabulary_layout_and_known_merges(tok: CLIPTokenizer) -> None:
    assert tok.vocab_size == 512 + len(MERGES) + 2
    assert (tok.sot_token, tok.eot_token) == (tok.vocab_size - 2, tok.vocab_size - 1)
    assert tok.encode("the cat") == [tok.encoder["the</w>"], tok.encoder["cat</w>"]]
    assert tok.encode("Cats") == [tok.encoder["cats</w>"]]  # lower-cased, "ca"+"t" then "cat"+"s</w>"
    assert tok.encode("xyz") == [tok.encoder["x"], tok.encoder["y"], tok.encoder["z</w>"]]  # no merges: bytes
    assert tok.bpe("hello") == ["hello</w>"] and tok.bpe("a") == ["a</w>"]


def test_round_trip_and_cleanup(tok: CLIPTokenizer) -> None:
    for text in TEXTS:
        ids = tok([text])[0]
        words = tk.clean_text(text).split()
        decoded = tok.decode(ids.tolist())
        assert decoded.replace(" ", "") == "".join(words).replace(" ", ""), text
    assert tk.clean_text("  A&amp;amp;B \n\t C ") == "a&b c"


def test_context_length_padding_and_truncation(tok: CLIPTokenizer) -> None:
    batch = tok(["the cat", "dog " * 100])
    assert batch.shape == (2, 77) and batch.dtype == torch.int64
    assert batch[0, :4].tolist() == [tok.sot_token, tok.encoder["the</w>"], tok.encoder["cat</w>"], tok.eot_token]
    assert batch[0, 4:].eq(0).all()
    assert batch[1, 0] == tok.sot_token and batch[1, -1] == tok.eot_token and batch[1, 1:-1].ne(0).all()
    assert tok("the cat", context_length=8).shape == (1, 8)


def test_file_formats_agree(tmp_path: Path, tok: CLIPTokenizer) -> None:
    gz = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    gz.write_bytes(gzip.compress(_write_bpe(tmp_path / "plain.txt").read_bytes()))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "vocab.json").write_text(json.dumps(tok.encoder), encoding="utf-8")
    _write_bpe(hf / "merges.txt")
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / gz.name).write_bytes(gz.read_bytes())
    for other in (load_tokenizer(gz), load_tokenizer(hf), load_tokenizer(hf / "vocab.json"), load_tokenizer(folder)):
        assert torch.equal(other(TEXTS), tok(TEXTS))
    assert CLIPTokenizer.from_bpe_file(gz, max_merges=5).vocab_size == 512 + 5 + 2


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(tmp_path / "nope.txt.gz")
    (tmp_path / "bad.txt").write_text("#version: 0.2\nthree parts here\n")
    with pytest.raises(CheckpointError, match="line 2"):
        load_tokenizer(tmp_path / "bad.txt")
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    _write_bpe(tmp_path / "merges.txt")
    with pytest.raises(CheckpointError, match="startoftext"):
        load_tokenizer(tmp_path / "vocab.json")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        load_tokenizer(tmp_path / "empty_dir")


def test_fallback_pattern_matches_regex_on_common_text() -> None:
    regex = pytest.importorskip("regex")
    del regex
    for text in TEXTS:
        cleaned = tk.clean_text(text)
        assert tk.FALLBACK_PATTERN.findall(cleaned) == tk._PATTERN.findall(cleaned), text


def test_matches_transformers_clip_tokenizer(tmp_path: Path, tok: CLIPTokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    (tmp_path / "vocab.json").write_text(json.dumps(tok.encoder), encoding="utf-8")
    _write_bpe(tmp_path / "merges.txt")
    theirs = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in TEXTS:  # (no HTML entities: open_clip unescapes them, transformers without ftfy does not)
        ours = [tok.sot_token, *tok.encode(text), tok.eot_token]
        assert ours == theirs(text)["input_ids"], text


# ---------------------------------------------------------------------------------------------------------------
# Text tower
# ---------------------------------------------------------------------------------------------------------------


def test_shapes_and_eot_pooling(tower: OpenCLIPTextTower, tok: CLIPTokenizer) -> None:
    tokens = tok(["the cat", "a dog sits on the cat"], context_length=20)
    out = tower(tokens)
    assert out.shape == (2, 24) and torch.isfinite(out).all()
    hidden = tower.hidden_states(tokens)
    assert hidden.shape == (2, 20, 32)
    eot = (tokens == tok.eot_token).int().argmax(dim=1)
    assert torch.allclose(out, hidden[torch.arange(2), eot] @ tower.text_projection, atol=1e-6)
    padded = tokens.clone()
    padded[0, eot[0] + 1 :] = 7  # anything after the end-of-text token cannot matter (causal + EOT pooling)
    assert torch.allclose(tower(padded)[0], out[0], atol=1e-6)


def test_causal_mask(tower: OpenCLIPTextTower, tok: CLIPTokenizer) -> None:
    tokens = tok(["the cat sits on the dog"], context_length=20)
    changed = tokens.clone()
    changed[0, 4] = tok.encoder["dog</w>"]
    a, b = tower.hidden_states(tokens), tower.hidden_states(changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)  # earlier positions never see a later token
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-4)


def test_activation_and_input_checks(tower: OpenCLIPTextTower, tok: CLIPTokenizer) -> None:
    tokens = tok(["the cat"], context_length=20)
    quick = OpenCLIPTextTower(_config(activation="quick_gelu")).eval()
    quick.load_state_dict(tower.state_dict())
    assert not torch.allclose(quick(tokens), tower(tokens), atol=1e-6)
    with pytest.raises(ShapeError, match="at most 20"):
        tower(tok(["the cat"]))  # 77 tokens
    with pytest.raises(ShapeError, match="integer"):
        tower(tokens.float())
    with pytest.raises(ConfigError, match="head_width"):
        _config(width=40)
    with pytest.raises(ConfigError, match="activation"):
        _config(activation="relu")


def test_load_from_open_clip_file(tmp_path: Path, tower: OpenCLIPTextTower, tok: CLIPTokenizer) -> None:
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    full = {**state, "visual.conv1.weight": torch.zeros(8, 3, 14, 14), "logit_scale": torch.tensor(4.6)}
    save_checkpoint(tmp_path / "open_clip.safetensors", full)
    save_checkpoint(tmp_path / "custom.safetensors", {f"text.{k}": v for k, v in state.items()})
    tokens = tok(["the cat", "hello"], context_length=20)
    for name in ("open_clip.safetensors", "custom.safetensors"):
        loaded = load_text_tower(tmp_path / name, head_width=16)
        assert loaded.config == tower.config
        assert torch.allclose(loaded(tokens), tower(tokens), atol=1e-6)
        assert not any(p.requires_grad for p in loaded.parameters())
    half = load_text_tower(tmp_path / "custom.safetensors", head_width=16, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half(tokens).shape == (2, 24)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert find_text_prefix(shapes) == "" and infer_text_config(shapes, head_width=16) == tower.config


def test_load_errors(tmp_path: Path, tower: OpenCLIPTextTower) -> None:
    prefix = "conditioner.embedders.0.open_clip.model."
    leftovers = {prefix + k: v for k, v in tower.state_dict().items() if not k.startswith("transformer.")}
    save_checkpoint(tmp_path / "svd_like.safetensors", leftovers)
    with pytest.raises(CheckpointError, match="SVD checkpoints drop it"):
        load_text_tower(tmp_path / "svd_like.safetensors")
    save_checkpoint(tmp_path / "other.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no open_clip text tower"):
        load_text_tower(tmp_path / "other.safetensors")
    broken = {k: v for k, v in tower.state_dict().items() if "resblocks.1.mlp.c_proj" not in k}
    save_checkpoint(tmp_path / "broken.safetensors", broken)
    with pytest.raises(CheckpointError, match="1 missing|2 missing"):
        load_text_tower(tmp_path / "broken.safetensors", head_width=16)
