"""A whole finetuning run: cache, training copy of the UNet, resume, the step loop, checkpoints, validation
videos, loss log and plot, and the exported LoRA / full model. Used by ``svd-lab train`` and the trainer node.

Output folder (``config.output_dir``)::

    config.json                  the resolved configuration
    cache/                       the latent cache (unless cache.dir points elsewhere)
    checkpoints/state-stepNNNNNNN.safetensors   training state (resume), the newest keep_checkpoints kept
    loss.jsonl, loss.png         loss log and plot
    validation/stepNNNNNNN.webp  validation videos
    lora.safetensors | model.safetensors        the result (ComfyUI LoRA keys / official single-file layout)

The keyframe mode trains the interpolation model kind (first and last frame latents in the concat channels);
its input convolution always trains in full (its new channels start at zero) and the result is always a full
model, because a LoRA cannot carry the changed input width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import lora as lora_mod
from ..conditioning import Cond, encode_cond_frames, vector_conditioning
from ..config import Family
from ..errors import ConfigError, InputError
from ..lora.targets import set_trainable
from ..media.resize import resize_cover
from ..media.video import write_video
from ..memory import moved
from ..nn.image_encoder import encode_image
from ..nn.model import SVDModel
from ..nn.unet import VideoUNet
from ..pipelines.checks import require_svd_family
from ..pipelines.decode import decode_latents
from ..pipelines.image_to_video import VideoParams, sample_video
from ..text_conditioning import CONDITIONING_KEY, TextEncoder, load_text_encoder
from ..weights.loader import DTYPES, SVDBundle, load_bundle, save_bundle
from .cache import LatentCache, build_cache
from .config import TrainConfig
from .data import make_dataset
from .distributed import DistInfo, barrier, broadcast_text, resolve_device, wrap_ddp
from .loop import NonFiniteLossError, StepStats, Trainer, autocast_dtype
from .report import LossLog, save_plot
from .state import latest_checkpoint, load_state, prune_checkpoints, restore_rng, save_state, state_path

log = logging.getLogger(__name__)

#: Config fields a resumed run must share with the checkpoint (others may change, e.g. steps or lr).
RESUME_KEYS = ("mode", "method", "trainable", "patterns", "lora", "seed", "batch_size")


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    unet: nn.Module  # the trained UNet (EMA weights when EMA is on; LoRA adapters injected for method lora)
    weights_path: Path | None  # lora.safetensors / model.safetensors (rank 0)
    state_path: Path | None  # the newest training-state checkpoint
    log_path: Path
    plot_path: Path | None
    records: list[dict] = field(default_factory=list)
    validation: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class StepEvent:
    stats: StepStats
    total: int
    log: LossLog


# -------------------------------------------------------------------------------------------- building


def ensure_cache(config: TrainConfig, bundle: SVDBundle, dist: DistInfo,
                 callback: Callable[[int, int], None] | None = None) -> LatentCache:
    """Open the cache named by the config; rank 0 builds or completes it first when needed."""
    directory = config.cache_dir
    if dist.is_main:
        try:
            cache = LatentCache(directory)
            ready = cache.complete and not (config.data.manifest or config.data.folder)
        except InputError:
            ready = False
        if not ready:
            build_cache(bundle, make_dataset(config.data), directory, config.cache, config.objective,
                        seed=config.seed, device=dist.device, callback=callback, text_encoder=_text_encoder(config))
    barrier(dist)
    cache = LatentCache(directory)
    if not cache.complete:
        raise InputError(f"the latent cache in {directory} is incomplete (a build was interrupted); build it again")
    return cache


def expand_keyframes(bundle: SVDBundle, unet: VideoUNet) -> VideoUNet:
    """The keyframe-interpolation kind of `unet` (12 input channels; the new ones start at zero), in place."""
    from ..pipelines.keyframes import expand_to_keyframe_model

    shell = view_bundle(bundle, unet).model
    return expand_to_keyframe_model(shell).unet


def training_unet(bundle: SVDBundle, config: TrainConfig, device: torch.device) -> tuple[VideoUNet, list[str]]:
    """A float32 copy of the bundle's UNet on `device` with the trained parameters selected (the bundle's own
    UNet is not modified). Returns (unet, LoRA layer paths or [])."""
    base = bundle.model.unet
    with torch.device("meta"):
        unet = VideoUNet(base.config)
    unet.load_state_dict({k: v.detach().to(device, torch.float32, copy=True) for k, v in base.state_dict().items()},
                         assign=True)
    keyframes = config.mode == "keyframes"
    if keyframes and not unet.config.concat_keyframes:
        unet = expand_keyframes(bundle, unet)
    elif not keyframes and unet.config.concat_keyframes:
        raise ConfigError("this is a keyframe-interpolation model (12 input channels): train it with mode "
                          "'keyframes', or start image-to-video training from an image-to-video model")
    paths: list[str] = []
    if config.method == "lora":
        gen = torch.Generator().manual_seed(config.seed)
        paths = lora_mod.inject_lora(unet, rank=config.lora.rank, alpha=config.lora.alpha or None,
                                     preset=config.trainable, patterns=config.lora.patterns,
                                     dropout=config.lora.dropout, generator=gen)
    else:
        set_trainable(unet, config.trainable, config.patterns)
    if keyframes:
        unet.input_blocks[0][0].requires_grad_(True)
    unet.gradient_checkpointing = config.gradient_checkpointing
    return unet.train(), paths


def view_bundle(bundle: SVDBundle, unet: nn.Module) -> SVDBundle:
    """A bundle sharing the VAEs and image encoder of `bundle` with `unet` as its UNet (nothing is copied)."""
    model_config = dataclasses.replace(bundle.config, unet=unet.config)
    with torch.device("meta"):
        model = SVDModel(model_config)
    model.unet, model.first_stage = unet, bundle.model.first_stage
    model.cond_vae, model.image_encoder = bundle.model.cond_vae, bundle.model.image_encoder
    return SVDBundle(model=model, variant=bundle.variant, source=bundle.source)


def _text_encoder(config: TrainConfig) -> TextEncoder | None:
    """Mode t2v: the configured text tower and tokenizer (both required); other modes: None."""
    if config.mode != "t2v":
        return None
    if not config.text.tower or not config.text.tokenizer:
        raise ConfigError("mode t2v needs text.tower (an open_clip model file with the text tower) and "
                          "text.tokenizer (bpe_simple_vocab_16e6.txt.gz) to embed the clips' captions")
    return load_text_encoder(config.text.tower, config.text.tokenizer)


def conditioning_of(config: TrainConfig, bundle: SVDBundle) -> str:
    """What the trained model is conditioned on: text after a t2v run, else what the base model was."""
    return "text" if config.mode == "t2v" else bundle.conditioning


# ------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationCond:
    cond: Cond
    params: VideoParams


@torch.no_grad()
def validation_cond(bundle: SVDBundle, cache: LatentCache, config: TrainConfig, device: torch.device,
                    image: Tensor | None = None) -> ValidationCond:
    """The fixed conditioning of the validation videos: `image` (1, 3, H, W) in [-1, 1] (or validation.image),
    else the first cached clip's conditioning (its fps and motion bucket; cached clean frame or augmentation).
    Mode t2v: the first cached clip's caption with no conditioning frame (an image is not used)."""
    val, keyframes, text = config.validation, config.mode == "keyframes", config.mode == "t2v"
    first = cache.item(0)
    e = first.entry
    gen = torch.Generator().manual_seed(val.seed)
    cond_vae = bundle.model.cond_vae
    if image is None and val.image and not text:
        from ..media.video import read_image

        image = read_image(val.image).permute(0, 3, 1, 2) * 2 - 1  # (1, 3, H, W)
    if text:
        frames, crossattn, aug = None, first.text, 0.0
        concat = torch.zeros(1, first.moments.shape[1] // 2, *first.moments.shape[-2:])  # (1, z, h, w): no image
    elif image is not None:
        frames = resize_cover(image.float(), e.width, e.height).expand(2 if keyframes else 1, -1, -1, -1)
        tower = bundle.model.image_encoder
        with moved([tower], device):
            crossattn = encode_image(tower, frames[:1].to(device, tower.dtype))
        crossattn, aug = crossattn.float().cpu(), val.cond_aug
    elif first.cond_frames is not None:
        frames, crossattn, aug = first.cond_frames[: 2 if keyframes else 1], first.crossattn[:1], val.cond_aug
    else:
        frames, crossattn, aug = None, first.crossattn[:1], float(first.cond_aug[0])
        concat = first.concat[0, : 2 if keyframes else 1].flatten(0, 1)[None]  # (1, k z, h, w)
    if frames is not None:
        with moved([cond_vae.encoder, cond_vae.quant_conv], device):
            concat = encode_cond_frames(cond_vae, frames, aug, device=device, generator=gen).cpu()  # (k, z, h, w)
        concat = concat.reshape(1, -1, *concat.shape[-2:])  # (1, k z, h, w)
    t = cache.num_frames
    vector = vector_conditioning(Family.SVD, {"fps_id": e.fps_id, "motion_bucket_id": e.motion_bucket_id,
                                              "cond_aug": aug}, 1, t)
    params = VideoParams(num_frames=t, width=e.width, height=e.height, fps=e.fps_id + 1,
                         motion_bucket_id=e.motion_bucket_id, cond_aug=aug, steps=val.steps, min_cfg=val.min_cfg,
                         max_cfg=val.max_cfg)
    return ValidationCond(Cond(crossattn.reshape(1, 1, -1), concat, vector.float()), params)


@torch.no_grad()
def validation_video(bundle: SVDBundle, unet: nn.Module, val: ValidationCond, path: Path, config: TrainConfig,
                     device: torch.device) -> Path:
    """Sample and decode one video from the fixed conditioning and seed; write it to `path`."""
    view = view_bundle(bundle, unet)
    was_training = unet.training
    unet.eval()
    amp = autocast_dtype(config.precision, device)
    try:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            latents = sample_video(view, val.cond, val.cond.unconditional(), val.params,
                                   generator=torch.Generator().manual_seed(config.validation.seed))
        with moved([bundle.model.first_stage], device):
            frames = decode_latents(view, latents.float())[0]  # (t, 3, H, W)
    finally:
        unet.train(was_training)
    pixels = ((frames.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)  # (t, H, W, 3) in [0, 1]
    return write_video(pixels, path, fps=max(1, val.params.fps), format=config.validation.format)


# ----------------------------------------------------------------------------------------------- export


@torch.no_grad()
def export_result(bundle: SVDBundle, unet: nn.Module, lora_paths: list[str], config: TrainConfig, step: int,
                  out: Path) -> Path:
    """Write lora.safetensors (ComfyUI keys) or model.safetensors (official layout) into `out`."""
    dtype = DTYPES[config.save_dtype]
    meta = {"svd_lab.train.mode": config.mode, "svd_lab.train.steps": str(step),
            CONDITIONING_KEY: conditioning_of(config, bundle),
            "svd_lab.train.config": json.dumps(config.to_dict(), default=str)}
    if config.method == "lora" and config.mode != "keyframes":
        state = lora_mod.lora_state_dict(unet, dtype=dtype)
        metadata = lora_mod.lora_metadata(
            rank=config.lora.rank, alpha=config.lora.alpha or config.lora.rank, preset=config.trainable,
            patterns=config.lora.patterns, modules=len(lora_paths), steps=step,
            base_model_hash=lora_mod.base_model_hash(bundle.model.unet), extra=meta)
        return lora_mod.save_lora(out / "lora.safetensors", state, metadata=metadata)
    with torch.device("meta"):
        export = VideoUNet(unet.config)
    export.load_state_dict({k: v.detach() for k, v in merged_state(unet).items()}, assign=True)
    view = dataclasses.replace(view_bundle(bundle, export), conditioning=conditioning_of(config, bundle))
    return save_bundle(view, out / "model.safetensors", meta, dtype=config.save_dtype)


@torch.no_grad()
def trained_bundle(bundle: SVDBundle, unet: nn.Module, device: torch.device,
                   conditioning: str | None = None) -> SVDBundle:
    """A new bundle whose UNet is the trained one (LoRA merged) in the base model's dtype on `device`; the
    VAEs and image encoder are shared with `bundle`, which is not modified. `conditioning`: what the trained
    model is conditioned on (:func:`conditioning_of`; default: the base model's)."""
    with torch.device("meta"):
        plain = VideoUNet(unet.config)
    plain.load_state_dict({k: v.detach().to(device, bundle.dtype, copy=True) for k, v in merged_state(unet).items()},
                          assign=True)
    view = view_bundle(bundle, plain.eval().requires_grad_(False))
    return dataclasses.replace(view, conditioning=conditioning or bundle.conditioning)


def training_bytes(bundle: SVDBundle) -> int:
    """A floor for the device memory a run needs: the fp32 training copy of the UNet plus as much again."""
    return 2 * 4 * sum(p.numel() for p in bundle.model.unet.parameters())


def merged_state(unet: nn.Module) -> dict[str, Tensor]:
    """The UNet's plain state dict with any LoRA folded in (the training copy itself is not changed)."""
    if not lora_mod.lora_parameters(unet):
        return unet.state_dict()
    state = {k: v for k, v in unet.state_dict().items() if ".lora_" not in k}
    for path, module in unet.named_modules():
        if isinstance(module, lora_mod.LoRALayer):
            state[f"{path}.weight"] = (module.weight.float() + module.delta_weight()).to(module.weight.dtype)
    return state


# ------------------------------------------------------------------------------------------------- run


def _check_resume(saved: dict, config: TrainConfig) -> None:
    current = json.loads(json.dumps(config.to_dict(), default=str))
    diff = [k for k in RESUME_KEYS if saved["config"].get(k) != current.get(k)]
    if diff:
        raise ConfigError(f"cannot resume from {saved['path']}: it was trained with other {diff} "
                          f"({ {k: saved['config'].get(k) for k in diff} }); use resume 'none' or the same settings")


def _write_config(config: TrainConfig, out: Path, dist: DistInfo) -> None:
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1, default=str))


def _base_bundle(config: TrainConfig, bundle: SVDBundle | None, device: torch.device) -> SVDBundle:
    """The given bundle or the configured checkpoint, checked to be an SVD-family model."""
    if bundle is None:
        if not config.checkpoint:
            raise ConfigError("no base model: set checkpoint to an SVD .safetensors file or diffusers folder")
        # Held on the CPU (the trained copy goes to the device in fp32); fp16 halves host memory when training on
        # a GPU (the image encoder then runs in fp16 there, as the reference's autocast does).
        bundle = load_bundle(config.checkpoint, device="cpu",
                             dtype=torch.float16 if device.type == "cuda" else torch.float32)
    require_svd_family(bundle, "finetuning", ConfigError)
    return bundle


@dataclass
class _RunLoop:
    """The step loop of one run and the state its interruption handling needs: a checkpoint is written on an
    interruption only between two steps (not mid-step, not while a checkpoint is being written) and only when
    steps were done since the last one."""

    config: TrainConfig
    dist: DistInfo
    bundle: SVDBundle
    unet: VideoUNet
    trainer: Trainer
    loss_log: LossLog
    result: TrainResult
    out: Path
    validation: ValidationCond | None = None
    step: int = 0  # optimizer steps done
    saved_step: int = 0  # the step of the newest checkpoint (written or resumed from)
    mid_step: bool = False  # a step is running: the weights are between two steps
    saving: bool = False  # a checkpoint is being written

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def resume(self) -> None:
        """Load the checkpoint config.resume names ('auto': the newest in the output folder), if any."""
        config, dist = self.config, self.dist
        resume = None if config.resume == "none" else (
            str(latest_checkpoint(self.ckpt_dir) or "") if config.resume == "auto" else config.resume)
        resume = broadcast_text(resume, dist)
        if resume:
            saved = load_state(resume)
            _check_resume(saved, config)
            if saved["extra"].get("world_size", dist.world_size) != dist.world_size:
                log.warning("resuming a %s-process run on %d processes: the global batch and the data order "
                            "change from here on", saved["extra"]["world_size"], dist.world_size)
            self.trainer.load(saved)
            restore_rng(saved["rng_tensors"], saved["rng_info"])
            self.step = self.saved_step = saved["step"]
            self.result.state_path = Path(resume)
            log.info("resumed from %s at step %d", resume, self.step)

    def save(self) -> None:
        """Write the training state of the steps done (rank 0) and prune old checkpoints."""
        if self.dist.is_main:
            self.saving = True
            self.result.state_path = save_state(state_path(self.ckpt_dir, self.step), step=self.step,
                                                config=self.config.to_dict(),
                                                extra={"world_size": self.dist.world_size}, **self.trainer.state())
            prune_checkpoints(self.ckpt_dir, self.config.keep_checkpoints)
            self.saving = False

    def one_step(self) -> StepStats:
        """One optimizer step, then its loss-log line, periodic checkpoint and validation video."""
        config = self.config
        self.mid_step = True
        stats = self.trainer.step(self.step)
        self.step, self.mid_step = stats.step, False
        step = self.step
        if self.dist.is_main and (step % config.log_every == 0 or step == config.steps):
            self.loss_log.append({"step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                                  "sigma_mean": stats.sigma_mean, "seconds": round(stats.seconds, 4)})
        if config.save_every and step % config.save_every == 0 and step < config.steps:
            self.save()
            self.saved_step = step
        if self.validation is not None and step % config.validation.every == 0:
            self.validate()
        return stats

    def validate(self) -> None:
        """The validation video of the current weights (the EMA ones when EMA is on)."""
        config, trainer = self.config, self.trainer
        path = self.out / "validation" / f"step{self.step:07d}.{config.validation.format}"
        with trainer.ema.applied() if trainer.ema else contextlib.nullcontext():
            self.result.validation.append(validation_video(self.bundle, self.unet, self.validation, path, config,
                                                           self.dist.device))

    def run(self, on_step: Callable[[StepEvent], None] | None) -> None:
        """Step to config.steps; a final checkpoint unless the last step has one. On an interruption (an
        exception from `on_step` or a step) a checkpoint of the finished steps is written, then it propagates;
        a non-finite loss keeps the last checkpoint."""
        config, dist = self.config, self.dist
        try:
            while self.step < config.steps:
                stats = self.one_step()
                barrier(dist)
                if on_step is not None and dist.is_main:
                    on_step(StepEvent(stats, config.steps, self.loss_log))
        except NonFiniteLossError:
            log.error("stopped at step %d on a non-finite loss; last checkpoint: %s", self.step,
                      self.result.state_path)
            raise
        except BaseException:
            if not self.mid_step and not self.saving and self.step > self.saved_step:
                log.warning("interrupted after step %d: writing a checkpoint to resume from", self.step)
                self.save()
            raise
        if self.step > self.saved_step or self.result.state_path is None:
            self.save()
        barrier(dist)

    def finish(self, lora_paths: list[str]) -> TrainResult:
        """The loss records and plot, the EMA weights into the model, and the exported result (rank 0)."""
        result = self.result
        result.step, result.records = self.step, list(self.loss_log.records)
        if self.dist.is_main:
            result.plot_path = save_plot(self.loss_log, self.out / "loss.png")
            if self.trainer.ema is not None:
                self.trainer.ema.copy_to_params()  # the returned model and the export use the EMA weights
            result.weights_path = export_result(self.bundle, self.unet, lora_paths, self.config, self.step, self.out)
        return result


def run_training(config: TrainConfig, *, bundle: SVDBundle | None = None, cache: LatentCache | None = None,
                 dist: DistInfo | None = None, on_step: Callable[[StepEvent], None] | None = None,
                 validation_image: Tensor | None = None,
                 on_cache: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train as configured; see the module docstring. `on_step` runs after every step on rank 0 and may raise
    to interrupt (a checkpoint of the finished steps is written first, then the exception propagates)."""
    dist = dist or DistInfo(device=resolve_device(config.device))
    device, out = dist.device, Path(config.output_dir)
    _write_config(config, out, dist)
    bundle = _base_bundle(config, bundle, device)
    cache = cache or ensure_cache(config, bundle, dist, on_cache)
    unet, lora_paths = training_unet(bundle, config, device)
    params = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    log.info("training %d tensors (%.2f M parameters) of %s with %s on %s", len(params),
             sum(p.numel() for _, p in params) / 1e6, config.trainable, config.method, device)
    if config.mode == "t2v" and not cache.has_text:
        raise ConfigError(f"mode t2v needs a latent cache with caption embeddings; {cache.dir} was built without a "
                          "text encoder (SVD Lab Build Latent Cache's text_encoder input, or text.tower + "
                          "text.tokenizer for svd-lab train)")
    text = config.mode == "t2v"
    cond_vae = bundle.model.cond_vae if cache.cond_aug_mode == "exact" and not text else None
    encoders = [cond_vae.encoder, cond_vae.quant_conv] if cond_vae is not None else []
    loss_log = LossLog(out / "loss.jsonl" if dist.is_main else None)
    with moved(encoders, device):
        trainer = Trainer(config, wrap_ddp(unet, dist), params, cache, dist=dist,
                          scale_factor=bundle.config.scale_factor, cond_vae=cond_vae)
        run = _RunLoop(config, dist, bundle, unet, trainer, loss_log,
                       TrainResult(0, unet, None, None, out / "loss.jsonl", None), out)
        run.resume()
        if dist.is_main:
            loss_log.truncate_after(run.step)
        if dist.is_main and config.validation.every:
            run.validation = validation_cond(bundle, cache, config, device, validation_image)
        run.run(on_step)
    return run.finish(lora_paths)
