"""End-to-end image-to-video (conditioning + sampling + decode): ours per speed mode vs diffusers vs ComfyUI.

Usage (diffusers / transformers are the optional ``bench`` extra, never runtime dependencies)::

    pip install -e '.[bench]'
    python bench/generation.py                       # CPU: full-size SVD-XT random weights, 6 frames 256x128, 4 steps
    COMFYUI_PATH=/path/to/ComfyUI python bench/generation.py     # + ComfyUI's native nodes
    python bench/generation.py --device cuda         # GPU: 25 frames 1024x576, 25 steps, bf16 UNet
    python bench/generation.py --config tiny --modes eager,caching   # harness check on a tiny model

Weights. One seeded random SVD-XT checkpoint (``bench/memory.py``'s ``write_random_checkpoint``: the official
single-file layout, O(1) outputs, fp16 values) is written to a temporary file (``--checkpoint`` uses a real one).
Ours loads it with ``load_bundle``; diffusers' ``StableVideoDiffusionPipeline`` is built on the meta device and
given *the same tensors* (``load_state_dict(assign=True)`` of our modules' state dicts, renamed by
``svd_model.weights.diffusers_keys``, the UNet's constructor arguments from ``bench/unet_vs_diffusers.py``), so both
run identical weights in one process; ComfyUI (``COMFYUI_PATH``) loads the same file in its own Python
(``bench/comfyui_worker.py``: ImageOnlyCheckpointLoader's loader, then SVD_img2vid_Conditioning ->
VideoLinearCFGGuidance -> KSampler euler/karras -> VAEDecode, node by node).

Job. A seeded random image, the same settings everywhere: frames, size, steps, fps 7 (fps_id 6), motion bucket
127, conditioning noise 0.02, linear guidance 1.0 -> 2.5, decode in chunks of 14 frames. Columns:

- s/video: the whole job's wall time (``torch.cuda.synchronize`` around it on CUDA).
- s/step: (time of the last step's end - first step's end) / (steps - 1), from the step callbacks (ComfyUI:
  KSampler's time / steps, which includes its setup).
- decode s: latents -> frames.
- peak: CPU: the largest RSS increase during the job over the RSS before it (VmHWM, see
  ``bench/unet_vs_diffusers.py``'s CpuMemory; weights excluded). CpuMemory fixes glibc's mmap threshold at 1 MiB
  (freed memory goes back at once), which slows every run; ours' first run replaces it with glibc's steady-state
  values (``svd_model.cpu_runtime`` restores those after each job), so all timed runs see the latter. ComfyUI:
  its process's peak RSS, weights included (another process). CUDA: ``torch.cuda.max_memory_allocated`` during the job.
- max|d| / PSNR vs eager: frames against our eager run at the same seed ([-1, 1], peak-to-peak 2). Diffusers and
  ComfyUI draw their noise differently, so their frames are not compared.

Modes (:data:`MODES`; each is a row, skipped with the reason when this checkout lacks its API; ``exact`` modes
must match eager up to floating-point order): eager; eager-untuned (eager with ``svd_model.cpu_runtime``'s CPU
choices off, the steady heap and the oneDNN linear route: what they gain); compile
(``svd_model.nn.compile.compile_unet`` regional, undone after each run); caching, caching-0.2
(``VideoParams.step_cache`` deepcache at threshold 0.1, 0.2); teacache (at 0.1); few-step (sampler ``lcm`` on
the ``ays`` schedule, :data:`FEW_STEPS` steps). One untimed warm-up of every row (compile compiles there), then
``--reps`` rounds with the rows in alternating order; the minimum over the rounds is shown with every time, and the
machine's load average before and after. The last line is the end-to-end time ratio ours/diffusers in the fastest
exact mode.

The steady heap (``svd_model.cpu_runtime``) leaves freed chunks inside the process's heap that later code reuses,
diffusers' runs in this process included: its rows here can only be faster than in a fresh process, so the ratios,
if anything, favour diffusers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch

# bench/ is sys.path[0] when this runs as a script: one implementation of each helper
from decode_vs_comfyui import ComfyWorker
from memory import write_random_checkpoint
from safetensors.torch import save_file
from torch import Tensor
from unet_vs_diffusers import CpuMemory, diffusers_kwargs, log

from comfyui_svd_lab.svd_model.api import VideoParams, decode_latents, encode_condition, load_bundle, sample_video
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import SVDError
from comfyui_svd_lab.svd_model.nn.model import SVDModel
from comfyui_svd_lab.svd_model.weights.diffusers_keys import (
    clip_vision_openclip_to_hf,
    unet_sgm_to_diffusers,
    vae_sgm_to_diffusers,
)
from comfyui_svd_lab.svd_model.weights.loader import SVDBundle, save_bundle
from comfyui_svd_lab.svd_model.weights.tiny import randomize, tiny_config

try:
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("diffusers / transformers are not installed: pip install -e '.[bench]'  (the optional bench extra)")

CHUNK = 14  # decode chunk (the reference's decoding_t)
FEW_STEPS = 4
SETTINGS = {"fps": 7, "motion_bucket_id": 127, "cond_aug": 0.02, "min_cfg": 1.0, "max_cfg": 2.5}
GIB = 2**30


# ---------------------------------------------------------------------------------------------------
# Modes: one line each to wire (params: VideoParams fields; setup: prepares the bundle, returns the undo)


def _compile(bundle: SVDBundle) -> Callable[[], None]:
    compile_unet = importlib.import_module("comfyui_svd_lab.svd_model.nn.compile").compile_unet
    report = compile_unet(bundle.model.unet, "regional")
    if getattr(report, "message", ""):
        log(f"compile: {report.message}")
    return lambda: compile_unet(bundle.model.unet, "off")


UNTUNED = ("SVD_LAB_STEADY_HEAP", "SVD_LAB_ONEDNN_LINEAR")  # svd_model.cpu_runtime's switches


def _untuned(bundle: SVDBundle) -> Callable[[], None]:
    """Ours with svd_model.cpu_runtime's CPU choices switched off (what they gain; a no-op on a GPU)."""
    for name in UNTUNED:
        os.environ[name] = "0"

    def undo() -> None:
        for name in UNTUNED:
            os.environ.pop(name, None)

    return undo


@dataclass(frozen=True)
class Mode:
    name: str
    exact: bool  # equal to eager up to floating-point order
    params: dict = field(default_factory=dict)  # VideoParams overrides
    setup: Callable[[SVDBundle], Callable[[], None]] | None = None


MODES = (
    Mode("eager", True),
    Mode("eager-untuned", True, setup=_untuned),
    Mode("compile", True, setup=_compile),
    Mode("caching", False, {"step_cache": "deepcache", "cache_threshold": 0.1}),
    Mode("caching-0.2", False, {"step_cache": "deepcache", "cache_threshold": 0.2}),
    Mode("teacache", False, {"step_cache": "teacache", "cache_threshold": 0.1}),
    Mode("few-step", False, {"sampler": "lcm", "schedule": "ays", "steps": FEW_STEPS}),
)


def mode_problem(mode: Mode, base: dict) -> str | None:
    """Why this checkout cannot run `mode` (None: it can)."""
    try:
        VideoParams(**{**base, **mode.params})
    except (TypeError, SVDError) as error:
        return f"VideoParams refuses {mode.params}: {error}"
    if mode.setup is _compile:
        try:
            importlib.import_module("comfyui_svd_lab.svd_model.nn.compile").compile_unet  # noqa: B018
        except (ImportError, AttributeError) as error:
            return f"no svd_model.nn.compile.compile_unet ({error})"
    return None


# ---------------------------------------------------------------------------------------------------
# Peers


@dataclass
class Result:
    job_s: float
    step_s: float
    decode_s: float
    peak: int
    frames: Tensor | None = None  # (t, 3, H, W) in [-1, 1], kept from the warm-up


class Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def per_step(ends: list[float], sampling_s: float, steps: int) -> float:
    return (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else sampling_s / steps


@contextmanager
def peak_of(device: torch.device, cpu_memory: CpuMemory | None):
    """Yields a list that receives the job's peak bytes above what was in use before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result: list[int] = []
        yield result
        result.append(torch.cuda.max_memory_allocated() - before)
    else:
        with cpu_memory.peak() as result:
            yield result


def ours_job(bundle: SVDBundle, image: Tensor, params: VideoParams, seed: int, clock: Clock) -> Result:
    gen = torch.Generator().manual_seed(seed)
    ends: list[float] = []
    start = clock()
    cond, uncond = encode_condition(bundle, image, params, generator=gen)
    sample_start = clock()
    latents = sample_video(bundle, cond, uncond, params, generator=gen, callback=lambda _: ends.append(clock()))
    decode_start = clock()
    frames = decode_latents(bundle, latents, chunk_size=CHUNK)  # (1, t, 3, H, W)
    end = clock()
    return Result(end - start, per_step(ends, decode_start - sample_start, params.steps), end - decode_start, 0,
                  frames[0])


def build_diffusers(bundle: SVDBundle) -> StableVideoDiffusionPipeline:
    """diffusers' pipeline on the meta device, then given our modules' tensors (no copies of the matrices)."""
    cfg = bundle.model.config
    vae_cfg, clip_cfg = cfg.first_stage, cfg.image_encoder
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**diffusers_kwargs(cfg.unet))
        vae = AutoencoderKLTemporalDecoder(
            in_channels=vae_cfg.in_channels, out_channels=vae_cfg.out_channels,
            down_block_types=("DownEncoderBlock2D",) * len(vae_cfg.ch_mult),
            block_out_channels=tuple(vae_cfg.ch * m for m in vae_cfg.ch_mult),
            layers_per_block=vae_cfg.num_res_blocks, latent_channels=vae_cfg.z_channels)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=clip_cfg.width, intermediate_size=clip_cfg.mlp_width,
            num_attention_heads=clip_cfg.width // clip_cfg.head_width, num_hidden_layers=clip_cfg.layers,
            image_size=clip_cfg.image_size, patch_size=clip_cfg.patch_size, projection_dim=clip_cfg.embed_dim,
            hidden_act="gelu", layer_norm_eps=1e-5))
    unet.load_state_dict(unet_sgm_to_diffusers(bundle.model.unet.state_dict()), strict=True, assign=True)
    vae.load_state_dict(vae_sgm_to_diffusers(bundle.model.first_stage.state_dict()), strict=True, assign=True)
    clip_sd = clip_vision_openclip_to_hf(bundle.model.image_encoder.state_dict())
    encoder.load_state_dict(clip_sd, strict=False, assign=True)
    for module in (unet, vae, encoder):  # non-persistent buffers are not in a state dict: make them here
        for name, buffer in list(module.named_buffers()):
            if not buffer.is_meta:
                continue
            if not name.endswith("position_ids"):
                raise SystemExit(f"diffusers module buffer {name} has no value")
            owner = module.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(1, -1), persistent=False)
    device = bundle.device
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002,
        sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous", steps_offset=1)
    pipe = StableVideoDiffusionPipeline(vae=vae.eval(), image_encoder=encoder.eval(), unet=unet.eval(),
                                        scheduler=scheduler, feature_extractor=CLIPImageProcessor())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def diffusers_job(pipe: StableVideoDiffusionPipeline, image: PIL.Image.Image, params: VideoParams, seed: int,
                  clock: Clock) -> Result:
    ends: list[float] = []

    def on_step(_pipe, _i, _t, kwargs):  # noqa: ANN001, ANN202 - diffusers' callback signature
        ends.append(clock())
        return kwargs

    start = clock()
    latents = pipe(
        image, height=params.height, width=params.width, num_frames=params.num_frames,
        num_inference_steps=params.steps, min_guidance_scale=params.min_cfg, max_guidance_scale=params.max_cfg,
        fps=params.fps, motion_bucket_id=params.motion_bucket_id, noise_aug_strength=params.cond_aug,
        decode_chunk_size=CHUNK, generator=torch.Generator().manual_seed(seed), output_type="latent",
        callback_on_step_end=on_step).frames  # (1, t, 4, h, w)
    decode_start = clock()
    pipe.decode_latents(latents, params.num_frames, CHUNK)
    end = clock()
    return Result(end - start, per_step(ends, decode_start - start, params.steps), end - decode_start, 0)


# ---------------------------------------------------------------------------------------------------
# Main


def write_tiny(path: Path) -> Path:
    """The tiny test model with 2 res blocks per VAE level (diffusers' temporal decoder ties its mid block's
    depth to layers_per_block, sgm's mid block always has 2)."""
    cfg = tiny_config(Family.SVD)
    cfg = dataclasses.replace(cfg, first_stage=dataclasses.replace(cfg.first_stage, num_res_blocks=2))
    return save_bundle(randomize(SVDModel(cfg), seed=0), path, {"svd_lab.note": "bench/generation.py tiny"})


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--config", choices=("full", "tiny"), default="full", help="random weights of this size")
    p.add_argument("--checkpoint", type=Path, help="a real SVD-XT .safetensors instead of random weights")
    p.add_argument("--frames", type=int, help="default 25 on CUDA, 6 on the CPU")
    p.add_argument("--width", type=int, help="default 1024 on CUDA, 256 on the CPU")
    p.add_argument("--height", type=int, help="default 576 on CUDA, 128 on the CPU")
    p.add_argument("--steps", type=int, help="default 25 on CUDA, 4 on the CPU")
    p.add_argument("--dtype", help="UNet / image encoder dtype (default bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--reps", type=int, default=2, help="timed interleaved rounds after one warm-up")
    p.add_argument("--modes", default=",".join(m.name for m in MODES))
    p.add_argument("--no-diffusers", action="store_true", help="leave out diffusers' row")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    args.frames = args.frames or (25 if gpu else 6)
    args.width, args.height = args.width or (1024 if gpu else 256), args.height or (576 if gpu else 128)
    args.steps = args.steps or (25 if gpu else 4)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    clock = Clock(device)
    cpu_memory = CpuMemory() if device.type == "cpu" else None
    comfy_path = os.environ.get("COMFYUI_PATH")
    print(f"load average before: {load_average()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    base = {"num_frames": args.frames, "width": args.width, "height": args.height, "steps": args.steps, **SETTINGS}
    wanted = [m.strip() for m in args.modes.split(",")]
    modes = []
    for mode in MODES:
        if mode.name not in wanted:
            continue
        problem = mode_problem(mode, base)
        if problem:
            print(f"mode {mode.name}: skipped: {problem}")
        else:
            modes.append(mode)
    with tempfile.TemporaryDirectory(prefix="svd_lab_generation_") as tmp_dir:
        tmp = Path(tmp_dir)
        checkpoint = args.checkpoint
        if checkpoint is None:
            log("writing random weights ...")
            path = tmp / f"random_{args.config}.safetensors"
            checkpoint = write_random_checkpoint(path) if args.config == "full" else write_tiny(path)
        bundle = load_bundle(checkpoint, device=device, dtype=args.dtype, variant="svd_xt")
        gen = torch.Generator().manual_seed(args.seed)
        pixels = torch.randint(0, 256, (args.height, args.width, 3), dtype=torch.uint8, generator=gen)
        image = (pixels.permute(2, 0, 1)[None].float() / 127.5 - 1).to(device)  # (1, 3, H, W) in [-1, 1]
        pil_image = PIL.Image.fromarray(pixels.numpy())  # diffusers resizes PIL input for CLIP as users give it
        jobs: dict[str, Callable[[], Result]] = {}
        undo: dict[str, Callable[[], None]] = {}
        for mode in modes:
            params = VideoParams(**{**base, **mode.params})
            jobs[f"ours {mode.name}"] = lambda params=params: ours_job(bundle, image, params, args.seed, clock)
        setups = {f"ours {m.name}": m.setup for m in modes if m.setup}
        params = VideoParams(**base)
        if not args.no_diffusers:
            pipe = build_diffusers(bundle)
            jobs["diffusers"] = lambda: diffusers_job(pipe, pil_image, params, args.seed, clock)
        worker = None
        if comfy_path and args.config == "full":
            worker = ComfyWorker(comfy_path, torch.get_num_threads())
            worker.call(op="load_checkpoint", path=str(checkpoint))
            image_file = tmp / "image.safetensors"
            save_file({"image": ((image.float().cpu() + 1) / 2).permute(0, 2, 3, 1).contiguous()}, str(image_file))
            request = {"op": "generate", "image": str(image_file), "frames": args.frames, "steps": args.steps,
                       "cfg": SETTINGS["max_cfg"], "min_cfg": SETTINGS["min_cfg"], "seed": args.seed,
                       "fps": SETTINGS["fps"], "motion_bucket_id": SETTINGS["motion_bucket_id"],
                       "augmentation_level": SETTINGS["cond_aug"]}

            def comfy_job() -> Result:
                r = worker.call(**request)
                return Result(r["job_s"], r["sample_s"] / args.steps, r["decode_s"], r["max_rss"])

            jobs["comfyui"] = comfy_job
        elif comfy_path:
            print("comfyui: skipped: ComfyUI loads only the full-size layout (its CLIP vision configs are fixed)")
        else:
            print("comfyui: skipped: set COMFYUI_PATH to a ComfyUI checkout")

        def run(name: str) -> Result:
            if name in setups:
                undo[name] = setups[name](bundle)
            try:
                if name == "comfyui":
                    return jobs[name]()
                with torch.inference_mode(), peak_of(device, cpu_memory) as peak:
                    result = jobs[name]()
                result.peak = peak[0]
                return result
            finally:
                if name in undo:
                    undo.pop(name)()

        results: dict[str, list[Result]] = {name: [] for name in jobs}
        warm: dict[str, Result] = {}
        for name in jobs:
            log(f"warm-up: {name} ...")
            start = time.perf_counter()
            warm[name] = run(name)
            log(f"warm-up: {name} {time.perf_counter() - start:.1f} s")
        for rep in range(args.reps):
            names = list(jobs) if rep % 2 == 0 else list(reversed(jobs))
            for name in names:
                results[name].append(run(name))
            log(f"round {rep + 1}: " + ", ".join(f"{n} {results[n][-1].job_s:.1f} s" for n in jobs))
        if worker:
            worker.close()
    report(args, results, warm, modes)


def report(args: argparse.Namespace, results: dict[str, list[Result]], warm: dict[str, Result],
           modes: list[Mode]) -> None:
    print(f"load average after: {load_average()}")
    print(f"SVD-XT layout ({args.config}{', ' + str(args.checkpoint) if args.checkpoint else ' random weights'}), "
          f"{args.frames} frames {args.width}x{args.height}, {args.steps} steps (few-step: {FEW_STEPS}), "
          f"{args.dtype} UNet, {args.device}; min of {args.reps} interleaved rounds")
    peak_kind = "CUDA alloc" if args.device == "cuda" else "RSS"
    print(f"{'':18s}{'s/video':>9s}{'s/step':>8s}{'decode s':>9s}{' peak ' + peak_kind + ' GiB':>17s}"
          f"{'max|d| eager':>13s}{'PSNR dB':>8s}   every s/video")
    eager = warm.get("ours eager")
    for name, rs in results.items():
        best = min(rs, key=lambda r: r.job_s)
        diff, psnr = "-", "-"
        frames = warm[name].frames
        if eager is not None and frames is not None and eager.frames is not None:
            d = (frames - eager.frames).float()
            mse = d.square().mean().item()
            diff = f"{d.abs().max().item():.4f}"
            psnr = f"{10 * math.log10(4 / mse):.1f}" if mse > 0 else "inf"
        peak = min(r.peak for r in rs) / GIB
        print(f"{name:18s}{best.job_s:9.2f}{min(r.step_s for r in rs):8.2f}{min(r.decode_s for r in rs):9.2f}"
              f"{peak:17.2f}{diff:>13s}{psnr:>8s}   " + " ".join(f"{r.job_s:.1f}" for r in rs))
    if "comfyui" in results:
        print("(comfyui: s/step = KSampler time / steps; peak = its process's peak RSS, weights included)")
    exact = [f"ours {m.name}" for m in modes if m.exact and f"ours {m.name}" in results]
    if exact and "diffusers" in results:
        fastest = min(exact, key=lambda n: min(r.job_s for r in results[n]))
        ratio = min(r.job_s for r in results[fastest]) / min(r.job_s for r in results["diffusers"])
        where = "GPU" if args.device == "cuda" else "CPU"
        print(f"{where} end-to-end time ratio ours/diffusers in the fastest exact mode ({fastest}): {ratio:.3f}")
    else:
        print("no end-to-end ratio: needs an exact mode of ours and the diffusers row")


if __name__ == "__main__":
    main()
