"""Text-to-video finetuning (mode t2v) and text conditioning on the micro model: captions from sidecar files, the
text cache, a finetune that learns to tell two captions apart, exact resume, the text-conditioned checkpoint and
LoRA round trips, the nodes, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from text_support import write_text_files
from train_support import micro_files, one_thread_fixture, train_config, write_clips

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.conditioning import Cond, vector_conditioning
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.media.video import write_video
from comfyui_svd_lab.svd_model.pipelines.image_to_video import VideoParams, sample_video
from comfyui_svd_lab.svd_model.text_conditioning import CONDITIONING_KEY, encode_text, load_text_encoder
from comfyui_svd_lab.svd_model.training.cache import LatentCache
from comfyui_svd_lab.svd_model.training.distributed import DistInfo
from comfyui_svd_lab.svd_model.training.loop import fixed_sigma_loss
from comfyui_svd_lab.svd_model.training.run import ensure_cache, run_training, trained_bundle, training_unet
from comfyui_svd_lab.svd_model.training.state import latest_checkpoint, load_state
from comfyui_svd_lab.svd_model.weights.checkpoint import CheckpointReader
from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle

_one_thread = one_thread_fixture()
CAPTIONS = ("the red cat", "the blue dog")
STEPS = 600  # measured: 300 steps learn the clips but not yet which caption is which


def _write_distinct_clips(folder):
    """Two 8-frame 64x64 clips that differ everywhere: a red square moving right on a light background, and a
    yellow bar moving down on a dark blue one."""
    folder.mkdir(parents=True, exist_ok=True)
    light = np.full((8, 64, 64, 3), 0.85, np.float32)
    dark = np.zeros((8, 64, 64, 3), np.float32)
    dark[..., 2] = 0.35
    for t in range(8):
        light[t, 20:40, 4 + 4 * t:24 + 4 * t] = [0.9, 0.1, 0.1]
        dark[t, 4 + 4 * t:14 + 4 * t, 8:56] = [0.95, 0.85, 0.1]
    return [write_video(torch.from_numpy(frames), folder / f"clip{i}.mp4", fps=8.0, quality=95)
            for i, frames in enumerate((light, dark))]


def _unit_latents(checkpoint, gain: float = 10.0):
    """Scale the posterior mean of the micro model's first stage (the first half of its encoder's outputs) by
    `gain`: its random encoder gives latents of std ~0.1 after the 0.18215 scaling, a trained SVD VAE ~1, the
    scale EDM's preconditioning assumes."""
    state = load_file(str(checkpoint))
    for key in ("first_stage_model.encoder.conv_out.weight", "first_stage_model.encoder.conv_out.bias"):
        tensor = state[key].clone()
        tensor[: tensor.shape[0] // 2] *= gain  # [mean | logvar]: the mean only
        state[key] = tensor
    save_file(state, str(checkpoint), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2v")
    checkpoint = micro_files(root)
    _unit_latents(checkpoint)
    clips = _write_distinct_clips(root / "clips")
    for clip, caption in zip(clips, CAPTIONS, strict=True):
        clip.with_suffix(".txt").write_text(f"  {caption}\n")  # whitespace is collapsed
    tower, vocab = write_text_files(root / "text")
    bundle = load_bundle(checkpoint)
    return root, checkpoint, bundle, tower, vocab


def _config(t2v, tmp, **overrides):
    root, checkpoint, *_, tower, vocab = t2v
    values = {"mode": "t2v", "text__tower": str(tower), "text__tokenizer": str(vocab), "data__num_frames": 2,
              "cache__dir": str(tmp / "cache"), **overrides}
    return train_config(tmp, checkpoint, root / "clips", **values)


def test_text_encoder_embeds_prompts_and_refuses_empty_ones(t2v):
    *_, tower, vocab = t2v
    encoder = load_text_encoder(tower, vocab)
    out = encode_text(encoder, list(CAPTIONS))
    assert out.shape == (2, 64) and out.dtype == torch.float32 and not torch.allclose(out[0], out[1])
    assert torch.equal(encode_text(encoder, [CAPTIONS[0]]), out[:1])  # batch-independent
    with pytest.raises(InputError, match="non-empty prompt"):
        encode_text(encoder, ["  "])


def test_t2v_finetune_tells_two_captions_apart_and_round_trips(t2v, tmp_path):
    root, checkpoint, bundle, *_ = t2v
    # EDM's sigma distribution for a small model (p_mean -1.2, p_std 1.0); sampled from sigma 3 (not 700)
    config = _config(t2v, tmp_path, steps=STEPS, method="full", trainable="all", batch_size=2, optim__lr=1e-3,
                     objective__cond_dropout=0.1, objective__p_mean=-1.2, objective__p_std=1.0)
    cache = ensure_cache(config, bundle, DistInfo())
    assert cache.has_text and "caption embeddings" in cache.describe()
    items = [cache.item(i) for i in range(2)]
    assert all(it.text is not None and it.text.shape == (1, 64) for it in items)
    kwargs = {"objective": config.objective, "sigmas": (0.3, 1.0, 3.0), "text": True}
    start, _ = training_unet(bundle, config, torch.device("cpu"))
    before = fixed_sigma_loss(start, cache, [0, 1], **kwargs)
    result = run_training(config, bundle=bundle, cache=cache)
    after = fixed_sigma_loss(result.unet, cache, [0, 1], **kwargs)

    # generate from each caption with the trained model; compare with both clips' latents (posterior means)
    trained = trained_bundle(bundle, result.unet, torch.device("cpu"), "text")
    clips = torch.stack([it.moments.chunk(2, dim=1)[0] * bundle.config.scale_factor for it in items])  # (2,t,z,h,w)
    params = VideoParams(num_frames=2, width=64, height=64, steps=16, min_cfg=1.0, max_cfg=1.0, sigma_max=3.0)
    generated = []
    for item in items:  # the same seed for both captions: only the caption differs
        e = item.entry
        vector = vector_conditioning(Family.SVD, {"fps_id": e.fps_id, "motion_bucket_id": e.motion_bucket_id,
                                                  "cond_aug": 0.0}, 1, 2)
        cond = Cond(item.text[None], torch.zeros(1, 4, 8, 8), vector)
        generated.append(sample_video(trained, cond, cond.unconditional(), params,
                                      generator=torch.Generator().manual_seed(3))[0])
    gen = torch.stack(generated)  # (2, t, z, h, w): from caption 0, caption 1
    distance = ((gen[:, None] - clips[None]) ** 2).flatten(2).mean(2)  # (caption, clip) MSE
    # paired: with the noise shared, d(g0,c0) + d(g1,c1) < d(g0,c1) + d(g1,c0)  <=>  (g0 - g1).(c0 - c1) > 0
    toward = torch.nn.functional.cosine_similarity((gen[0] - gen[1]).flatten(), (clips[0] - clips[1]).flatten(), 0)
    print(f"t2v overfit: fixed-sigma loss {before:.4f} -> {after:.4f} ({before / after:.2f}x) in {STEPS} steps; "
          f"generated-vs-clip MSE (rows: caption, cols: clip) {distance.tolist()}; cosine of (gen0 - gen1) with "
          f"(clip0 - clip1) {toward:.3f}")
    assert before / after >= 1.5  # measured 1.94x
    assert distance[0, 0] < distance[0, 1] and distance[1, 1] < distance[1, 0]  # each caption: its own clip
    assert toward > 0.15  # with the noise shared, changing the caption moves the video toward the other clip

    # the exported full model records its text conditioning and the loader reads it back
    assert CheckpointReader(result.weights_path).metadata[CONDITIONING_KEY] == "text"
    loaded = load_bundle(result.weights_path)
    assert loaded.conditioning == "text" and trained.conditioning == "text"
    again = load_bundle(save_bundle(loaded, tmp_path / "resaved.safetensors"))
    assert again.conditioning == "text"
    assert load_bundle(checkpoint).conditioning == "image"


def test_t2v_resume_is_exact(t2v, tmp_path):
    n, random = 4, {"objective__cond_dropout": 0.5, "optim__warmup_steps": 1, "batch_size": 2}
    _, _, bundle, *_ = t2v
    straight = run_training(_config(t2v, tmp_path / "a", steps=n, **random), bundle=bundle)
    config = _config(t2v, tmp_path / "b", steps=n, **random)

    class Stop(Exception):
        pass

    def stop(event):
        if event.stats.step == n // 2:
            raise Stop

    with pytest.raises(Stop):
        run_training(config, bundle=bundle, on_step=stop)
    assert load_state(latest_checkpoint(tmp_path / "b" / "out" / "checkpoints"))["step"] == n // 2
    resumed = run_training(config, bundle=bundle)
    a, b = load_state(straight.state_path), load_state(resumed.state_path)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_t2v_lora_marks_the_model_text_conditioned_in_the_nodes(t2v, tmp_path):
    root, _, bundle, tower, vocab = t2v
    result = run_training(_config(t2v, tmp_path, steps=2, validation__every=2, validation__steps=2), bundle=bundle)
    assert [p.name for p in result.validation] == ["step0000002.webp"]  # from the first clip's caption
    assert result.weights_path.name == "lora.safetensors"
    assert CheckpointReader(result.weights_path).metadata[CONDITIONING_KEY] == "text"
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    (lora_dir / "t2v.safetensors").write_bytes(result.weights_path.read_bytes())
    (root / "text_models").mkdir(exist_ok=True)
    for f in (tower, vocab):
        (root / "text_models" / f.name).write_bytes(f.read_bytes())
    bridge.configure(models_dirs=[root / "models", root / "text_models"], loras_dirs=[lora_dir],
                     output_dir=tmp_path / "out2", temp_dir=tmp_path / "temp")
    try:
        model, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("micro.safetensors", "fp32", "auto", "none")
        assert model.conditioning == "image"
        text_model, info = NODE_CLASS_MAPPINGS["SVDLab_LoraLoader"]().load(model, "t2v.safetensors", 1.0)
        assert text_model.conditioning == "text" and model.conditioning == "image"
        loader = NODE_CLASS_MAPPINGS["SVDLab_TextEncoderLoader"]
        choices = loader.INPUT_TYPES()["required"]
        assert tower.name in choices["text_tower"][0] and vocab.name in choices["tokenizer"][0]
        assert "micro.safetensors" in choices["text_tower"][0]  # listed; loading it would say it has no text tower
        with pytest.raises(InputError, match="names may not be '.', '..'"):  # confined to the model folders
            loader().load("../text/" + tower.name, vocab.name)
        with pytest.raises(InputError, match="no readable file"):
            loader().load("gone.safetensors", vocab.name)
        encoder, info = loader().load(tower.name, vocab.name)
        assert "embeds into 64 dims" in info
        node = NODE_CLASS_MAPPINGS["SVDLab_TextToVideoConditioning"]()
        args = {"prompt": CAPTIONS[0], "negative_prompt": "", "width": 64, "height": 64, "frames": 2, "fps": 7,
                "motion_bucket_id": 127}
        cond, latent, info = node.encode(text_model, encoder, **args)
        assert "text model" in info and cond.cond.crossattn.shape == (1, 1, 64)
        assert not cond.cond.concat.any() and not cond.uncond.crossattn.any()  # no image; no text: zeros
        assert cond.params.cond_aug == 0.0 and latent["samples"].shape == (2, 4, 8, 8)
        negative, _, _ = node.encode(text_model, encoder, **{**args, "negative_prompt": CAPTIONS[1]})
        assert torch.allclose(negative.uncond.crossattn[0], encode_text(encoder, [CAPTIONS[1]]))
        sampled = NODE_CLASS_MAPPINGS["SVDLab_Sampler"]().sample(
            text_model, cond, sampler="euler", schedule="karras", steps=2, min_cfg=1.0, max_cfg=2.0,
            guidance="auto", seed=1, denoise=1.0)[0]
        frames = NODE_CLASS_MAPPINGS["SVDLab_Decode"]().decode(text_model, sampled, chunk_size=2, overlap=0)[0]
        assert frames.shape == (2, 64, 64, 3) and torch.isfinite(frames).all()
        with pytest.raises(InputError, match="image-to-video model.*zero-shot"):
            node.encode(model, encoder, **args)
        zero, _, info = node.encode(model, encoder, **args, zero_shot=True)
        assert "zero-shot (experimental)" in info and zero.cond.crossattn.shape == (1, 1, 64)
        assert NODE_CLASS_MAPPINGS["SVDLab_TextToVideoConditioning"].VALIDATE_INPUTS(64, 64, " ") == (
            "prompt is empty: write what the video should show")
    finally:
        bridge.reset()


def test_t2v_errors_name_what_is_missing(t2v, tmp_path):
    root, checkpoint, bundle, tower, vocab = t2v
    with pytest.raises(ConfigError, match="mode t2v needs text.tower"):
        ensure_cache(_config(t2v, tmp_path / "a", text__tower=""), bundle, DistInfo())
    plain = ensure_cache(train_config(tmp_path / "b", checkpoint, root / "clips", data__num_frames=2), bundle,
                         DistInfo())
    assert not plain.has_text
    with pytest.raises(ConfigError, match="needs a latent cache with caption embeddings"):
        run_training(_config(t2v, tmp_path / "c"), bundle=bundle, cache=plain)
    bare = tmp_path / "bare"
    write_clips(bare, count=2)
    (bare / "clip1.txt").write_text("the blue dog")
    with pytest.raises(InputError, match=r"1 clip\(s\) have no caption, e\.g\. \['clip0.mp4'\]"):
        ensure_cache(train_config(tmp_path / "d", checkpoint, bare, mode="t2v", text__tower=str(tower),
                                  text__tokenizer=str(vocab), data__num_frames=2), bundle, DistInfo())
    wide_tower, _ = write_text_files(tmp_path / "wide", embed_dim=32)
    with pytest.raises(ConfigError, match="embeds into 32 dims, the UNet's cross-attention takes 64"):
        ensure_cache(_config(t2v, tmp_path / "e", text__tower=str(wide_tower)), bundle, DistInfo())
    # a changed caption makes the text cache stale (its embeddings would be wrong)
    config = _config(t2v, tmp_path / "f")
    ensure_cache(config, bundle, DistInfo())
    caption = root / "clips" / "clip0.txt"
    old = caption.read_text()
    caption.write_text("the blue cat")
    try:
        with pytest.raises(ConfigError, match="frame windows differ"):
            ensure_cache(config, bundle, DistInfo())
    finally:
        caption.write_text(old)
    assert LatentCache(tmp_path / "f" / "cache").has_text
