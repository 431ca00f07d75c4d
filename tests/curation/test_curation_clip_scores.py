"""Per-clip curation scores from CLIP: image-tower embeddings, aesthetic heads and caption similarity, on a tiny
checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.curation.clip_scores import AestheticHead, ClipScorer, load_aesthetic_head
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError, InputError
from comfyui_svd_lab.svd_model.nn.image_encoder import encode_image
from comfyui_svd_lab.svd_model.nn.text_encoder import OpenCLIPTextTower, TextEncoderConfig
from comfyui_svd_lab.svd_model.weights.checkpoint import CheckpointReader, save_checkpoint
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

# ---------------------------------------------------------------------------------------------------------------
# CLIP scores
# ---------------------------------------------------------------------------------------------------------------

VISUAL = "conditioner.embedders.0.open_clip.model.visual."


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("clip") / "tiny_svd.safetensors", seed=3)


def _frames(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(90, 160), (240, 180), (64, 64), (300, 500)]
    return [rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8) for i in range(n)]


def test_scorer_reads_only_the_image_tower(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    original = CheckpointReader.load

    def spy(self: CheckpointReader, key: str, *args: object, **kwargs: object) -> torch.Tensor:
        loaded.append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(CheckpointReader, "load", spy)
    scorer = ClipScorer.from_checkpoint(tiny_ckpt)
    n_keys = len(CheckpointReader(tiny_ckpt).infos)
    assert loaded and all(k.startswith(VISUAL) for k in loaded)
    assert len(loaded) == len(scorer.tower.state_dict()) < n_keys / 10
    assert not scorer.has_aesthetic and not scorer.has_text


def test_embed_shape_determinism_and_batching(tiny_ckpt: Path) -> None:
    scorer = ClipScorer.from_checkpoint(tiny_ckpt, crop="center")
    frames = _frames(4)
    emb = scorer.embed(frames)
    assert emb.shape == (4, scorer.embed_dim) == (4, 64) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    assert torch.equal(emb, scorer.embed(frames))
    assert torch.allclose(scorer.embed(frames[1:2])[0], emb[1], atol=1e-5)
    assert not torch.allclose(emb[0], emb[1])
    assert scorer.aesthetic(emb) is None and scorer.similarity(emb, ["a cat"]) is None
    with pytest.raises(InputError, match="at least one frame"):
        scorer.embed([])
    with pytest.raises(InputError, match="uint8"):
        scorer.embed([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ConfigError, match="crop"):
        ClipScorer.from_checkpoint(tiny_ckpt, crop="pad")  # type: ignore[arg-type]


def test_squash_crop_is_svd_conditioning_and_bundle_matches(tiny_ckpt: Path) -> None:
    bundle = load_bundle(tiny_ckpt)
    scorer = ClipScorer.from_bundle(bundle, crop="squash")
    frames = _frames(2, seed=5)
    x = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 127.5 - 1 for f in frames[:1]])
    assert torch.allclose(scorer.embed(frames[:1]), encode_image(bundle.model.image_encoder, x), atol=1e-5)
    from_file = ClipScorer.from_checkpoint(tiny_ckpt, crop="squash")
    assert torch.allclose(from_file.embed(frames), scorer.embed(frames), atol=1e-5)
    with pytest.raises(InputError, match="SVDBundle"):
        ClipScorer.from_bundle(object())


def test_sv3d_checkpoint_and_foreign_files(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "sv3d.safetensors", Family.SV3D_U)
    assert ClipScorer.from_checkpoint(path).embed(_frames(1)).shape == (1, 64)
    save_checkpoint(tmp_path / "other.safetensors", {"model.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="no OpenCLIP image tower"):
        ClipScorer.from_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="folder"):
        ClipScorer.from_checkpoint(tmp_path)


def _save_head(path: Path, widths: list[int], names: list[str], seed: int = 0, **meta: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state, params = {}, []
    for name, (a, b) in zip(names, zip(widths[:-1], widths[1:], strict=True), strict=True):
        w, bias = torch.randn(b, a, generator=gen) / a**0.5, torch.randn(b, generator=gen)
        state[f"{name}weight"], state[f"{name}bias"] = w, bias
        params += [w, bias]
    save_checkpoint(path, state, meta or None)
    return params


def test_aesthetic_head_infers_layer_stack(tiny_ckpt: Path, tmp_path: Path) -> None:
    # LAION's improved predictor layout: Linear layers at layers.0, .2, .4, .6 (dropout in between, no activation)
    params = _save_head(tmp_path / "mlp.safetensors", [64, 32, 16, 8, 1], [f"layers.{i}." for i in (0, 2, 4, 6)])
    head = load_aesthetic_head(tmp_path / "mlp.safetensors")
    assert head.widths == (64, 32, 16, 8, 1) and head.activation == "none"
    scorer = ClipScorer.from_checkpoint(tiny_ckpt, aesthetic_head=tmp_path / "mlp.safetensors")
    emb = scorer.embed(_frames(3))
    x = torch.nn.functional.normalize(emb, dim=-1)
    for i in range(0, len(params), 2):
        x = x @ params[i].T + params[i + 1]
    assert scorer.has_aesthetic and scorer.aesthetic(emb).shape == (3,)
    assert torch.allclose(scorer.aesthetic(emb), x[:, 0], atol=1e-5)
    assert torch.allclose(scorer.aesthetic(emb * 7.0), scorer.aesthetic(emb), atol=1e-5)  # scale-free (L2-normed)
    # activation from the file's metadata; a single Linear (the LAION-5B linear probe)
    _save_head(tmp_path / "relu.safetensors", [64, 8, 1], ["fc1.", "fc2."], activation="relu")
    assert load_aesthetic_head(tmp_path / "relu.safetensors").activation == "relu"
    _save_head(tmp_path / "linear.safetensors", [64, 1], [""])
    assert load_aesthetic_head(tmp_path / "linear.safetensors").widths == (64, 1)


def test_aesthetic_head_errors(tiny_ckpt: Path, tmp_path: Path) -> None:
    _save_head(tmp_path / "vit_l.safetensors", [768, 16, 1], ["layers.0.", "layers.2."])
    with pytest.raises(CheckpointError, match=r"768-d.*64-d"):
        ClipScorer.from_checkpoint(tiny_ckpt, aesthetic_head=tmp_path / "vit_l.safetensors")
    save_checkpoint(
        tmp_path / "gap.safetensors",
        {
            "a.weight": torch.zeros(8, 64),
            "a.bias": torch.zeros(8),
            "b.weight": torch.zeros(1, 9),
            "b.bias": torch.zeros(1),
        },
    )
    with pytest.raises(CheckpointError, match="do not chain"):
        load_aesthetic_head(tmp_path / "gap.safetensors")
    save_checkpoint(tmp_path / "nobias.safetensors", {"weight": torch.zeros(1, 64)})
    with pytest.raises(CheckpointError, match="no bias"):
        load_aesthetic_head(tmp_path / "nobias.safetensors")
    with pytest.raises(ConfigError, match="activation"):
        AestheticHead([64, 1], activation="swish")
    with pytest.raises(ConfigError, match="one score"):
        AestheticHead([64, 2])


def test_missing_optional_files_skip_scores_and_log_once(
    tiny_ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(2):
        scorer = ClipScorer.from_checkpoint(
            tiny_ckpt, aesthetic_head=tmp_path / "nope.safetensors", text_tower=tmp_path / "no_text.safetensors"
        )
        assert not scorer.has_aesthetic and not scorer.has_text
        emb = scorer.embed(_frames(1))
        assert scorer.aesthetic(emb) is None and scorer.similarity(emb, ["x"]) is None
    messages = [r.getMessage() for r in caplog.records if "nope.safetensors" in r.getMessage()]
    assert len(messages) == 1 and "skipped" in messages[0]


def _tiny_text_files(tmp_path: Path, embed_dim: int = 64) -> tuple[Path, Path, OpenCLIPTextTower]:
    merges = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    (tmp_path / "bpe.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    vocab = 512 + len(merges) + 2
    torch.manual_seed(0)
    tower = OpenCLIPTextTower(
        TextEncoderConfig(vocab_size=vocab, context_length=16, width=128, layers=2, mlp_width=256, embed_dim=embed_dim)
    ).eval()  # 2 heads of 64
    save_checkpoint(tmp_path / "text.safetensors", {f"text.{k}": v for k, v in tower.state_dict().items()})
    return tmp_path / "text.safetensors", tmp_path / "bpe.txt", tower


def test_similarity_with_text_tower(tiny_ckpt: Path, tmp_path: Path) -> None:
    text_path, vocab_path, tower = _tiny_text_files(tmp_path)
    scorer = ClipScorer.from_checkpoint(tiny_ckpt, text_tower=text_path, tokenizer=vocab_path)
    assert scorer.has_text and scorer.context_length == 16
    emb = scorer.embed(_frames(2))
    sim = scorer.similarity(emb, ["the cat", "the dog", "a bird"])
    assert sim.shape == (2, 3) and bool((sim.abs() <= 1 + 1e-6).all())
    txt = tower(scorer.tokenizer(["the cat", "the dog", "a bird"], 16))
    expected = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    assert torch.allclose(sim, expected, atol=1e-5)
    with pytest.raises(InputError, match="list"):
        scorer.similarity(emb, "the cat")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"\(n, 64\)"):
        scorer.similarity(emb[:, :10], ["the cat"])
    only_vocab = ClipScorer.from_checkpoint(tiny_ckpt, tokenizer=vocab_path)
    assert not only_vocab.has_text
    (tmp_path / "other").mkdir()
    wrong_path, _, _ = _tiny_text_files(tmp_path / "other", embed_dim=24)
    with pytest.raises(CheckpointError, match="different CLIP models"):
        ClipScorer.from_checkpoint(tiny_ckpt, text_tower=wrong_path, tokenizer=vocab_path)
