"""The training loop: a micro model overfits two clips; schedules, EMA, autocast, NaN guard, keyframe mode, the
LoRA and full-model outputs."""

from __future__ import annotations

import pytest
import torch
from train_support import FRAMES, micro_setup, one_thread_fixture, train_config

from comfyui_svd_lab.svd_model.lora import load_lora, validate_lora
from comfyui_svd_lab.svd_model.training import loop
from comfyui_svd_lab.svd_model.training.config import OptimConfig
from comfyui_svd_lab.svd_model.training.distributed import DistInfo
from comfyui_svd_lab.svd_model.training.loop import EMA, NonFiniteLossError, fixed_sigma_loss, lr_at
from comfyui_svd_lab.svd_model.training.run import ensure_cache, run_training, training_unet
from comfyui_svd_lab.svd_model.training.state import list_checkpoints, load_state
from comfyui_svd_lab.svd_model.weights.checkpoint import CheckpointReader
from comfyui_svd_lab.svd_model.weights.loader import load_bundle

#: The overfit claim: the fixed-sigma loss on the training clips falls at least this much in OVERFIT_STEPS.
OVERFIT_FACTOR = 1.4
OVERFIT_STEPS = 25


_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_setup(tmp_path_factory.mktemp("loop"), clips=2)


def test_micro_model_overfits_two_clips(micro, tmp_path):
    root, ckpt, bundle, cache = micro
    config = train_config(tmp_path, ckpt, root / "clips", steps=OVERFIT_STEPS, method="full", trainable="all",
                          batch_size=2, data__num_frames=2, cache__dir=str(tmp_path / "cache"), optim__lr=5e-3,
                          objective__cond_dropout=0.0)
    two_frames = ensure_cache(config, bundle, DistInfo())
    kwargs = {"objective": config.objective, "cond_vae": bundle.model.cond_vae, "sigmas": (0.5, 1.0, 2.0)}
    start, _ = training_unet(bundle, config, torch.device("cpu"))
    before = fixed_sigma_loss(start, two_frames, [0, 1], **kwargs)
    result = run_training(config, bundle=bundle, cache=two_frames)
    after = fixed_sigma_loss(result.unet, two_frames, [0, 1], **kwargs)
    print(f"overfit: fixed-sigma loss {before:.4f} -> {after:.4f} ({before / after:.2f}x) in {OVERFIT_STEPS} steps")
    assert before / after >= OVERFIT_FACTOR
    assert [r["step"] for r in result.records] == list(range(1, OVERFIT_STEPS + 1))
    assert result.plot_path.is_file() and result.log_path.is_file()


def test_lr_schedules():
    warm = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, 14, warm) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 14, warm) == pytest.approx(1.0) and lr_at(13, 14, warm) == pytest.approx(0.1)
    assert lr_at(8, 13, warm) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    linear = OptimConfig(lr=2.0, schedule="linear")
    assert [lr_at(s, 3, linear) for s in range(3)] == [2.0, 1.0, 0.0]
    assert lr_at(99, 3, OptimConfig(lr=3.0)) == 3.0


def test_ema_warmup_and_swap():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([("p", p)], decay=0.99)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update(0)  # decay min(0.99, 1/10) = 0.1
    assert torch.allclose(ema.shadow["p"], torch.full((3,), 0.9))
    ema.update(1000)  # decay 0.99
    assert torch.allclose(ema.shadow["p"], torch.full((3,), 0.9 * 0.99 + 0.01))
    with ema.applied():
        assert torch.allclose(p, ema.shadow["p"])
    assert torch.equal(p.detach(), torch.ones(3))


def test_bf16_autocast_keeps_fp32_master_weights_and_per_frame_sigma(micro, tmp_path):
    root, ckpt, bundle, cache = micro
    config = train_config(tmp_path, ckpt, steps=1, precision="bf16", objective__sigma_per="frame",
                          gradient_checkpointing=True)
    result = run_training(config, bundle=bundle, cache=cache)
    assert all(p.dtype == torch.float32 for p in result.unet.parameters())
    assert torch.isfinite(torch.tensor(result.records[0]["loss"]))
    item = cache.item(0)
    batch = loop.make_batch([item], [torch.Generator().manual_seed(0)], objective=config.objective, keyframes=False,
                            scale_factor=0.18215, cond_vae=bundle.model.cond_vae, device=torch.device("cpu"))
    assert batch.sigma.shape == (1, FRAMES) and len(set(batch.sigma[0].tolist())) == FRAMES


def test_conditioning_dropout_zeroes_image_and_concat_only(micro):
    _, ckpt, bundle, cache = micro
    config = train_config(micro[0], ckpt, objective__cond_dropout=0.9999)
    batch = loop.make_batch([cache.item(0)], [torch.Generator().manual_seed(0)], objective=config.objective,
                            keyframes=False, scale_factor=0.18215, cond_vae=bundle.model.cond_vae,
                            device=torch.device("cpu"))
    assert batch.cond.crossattn.abs().max() == 0 and batch.cond.concat.abs().max() == 0
    assert batch.cond.vector.abs().max() > 0  # fps, motion and cond_aug stay (as in the CFG uncond branch)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(micro, tmp_path, monkeypatch):
    _, ckpt, bundle, cache = micro
    config = train_config(tmp_path, ckpt, steps=4, save_every=1, keep_checkpoints=5)
    poison = {"on": False}
    real = loop.make_batch

    def make_batch(*args, **kwargs):
        batch = real(*args, **kwargs)
        if poison["on"]:
            batch.x0 = batch.x0 * float("nan")
        return batch

    monkeypatch.setattr(loop, "make_batch", make_batch)

    def on_step(event):
        if event.stats.step == 2:
            poison["on"] = True

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3.*weights of step 2 are kept"):
        run_training(config, bundle=bundle, cache=cache, on_step=on_step)
    saved = list_checkpoints(tmp_path / "out" / "checkpoints")
    assert [p.name for p in saved] == ["state-step0000001.safetensors", "state-step0000002.safetensors"]
    state = load_state(saved[-1])
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_lora_and_full_outputs_load(micro, tmp_path):
    _, ckpt, bundle, cache = micro
    lora = run_training(train_config(tmp_path / "lora", ckpt, steps=2, save_dtype="fp32"), bundle=bundle,
                        cache=cache)
    assert lora.weights_path.name == "lora.safetensors"
    state, meta = load_lora(lora.weights_path)
    assert all(k.startswith("diffusion_model.") for k in state) and meta["svd_lab.lora.rank"] == "4"
    report = validate_lora(bundle.model.unet, state)
    assert report.ok and len(report.matched) == len(state)
    full = run_training(train_config(tmp_path / "full", ckpt, steps=2, method="full", save_dtype="fp32"),
                        bundle=bundle, cache=cache)
    # The same keys and shapes as the official-layout input file (what stock ComfyUI's loader detects).
    assert CheckpointReader(full.weights_path).shapes() == CheckpointReader(ckpt).shapes()
    reloaded = load_bundle(full.weights_path)
    trained = dict(full.unet.named_parameters())
    for name, value in reloaded.model.unet.state_dict().items():
        assert torch.equal(value, trained[name].detach()), name
    assert not torch.equal(reloaded.model.unet.state_dict()["input_blocks.1.0.time_stack.emb_layers.1.weight"],
                           bundle.model.unet.state_dict()["input_blocks.1.0.time_stack.emb_layers.1.weight"])


def test_keyframe_mode_trains_the_interpolation_kind(micro, tmp_path):
    _, ckpt, bundle, cache = micro
    config = train_config(tmp_path, ckpt, steps=2, mode="keyframes", validation__every=2, validation__steps=2)
    result = run_training(config, bundle=bundle, cache=cache)
    assert result.weights_path.name == "model.safetensors"  # a LoRA cannot carry the wider input conv
    kind = load_bundle(result.weights_path)
    assert kind.config.unet.concat_keyframes and kind.model.unet.input_blocks[0][0].weight[:, 8:].abs().max() > 0
    assert len(result.validation) == 1 and result.validation[0].stat().st_size > 0
    assert bundle.config.unet.in_channels == 8  # the base model is untouched
