"""Batch jobs behind the `svd-lab` CLI (image files in, PNG frames and an animated preview out)."""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..svd_model.api import VideoParams, decode_latents, image_to_video, load_bundle, with_unet
from ..svd_model.config import Family
from ..svd_model.errors import ConfigError, InputError
from ..svd_model.jsonfile import read_bytes
from ..svd_model.media.resize import resize_cover
from ..svd_model.memory import apply_plan, plan_for
from ..svd_model.nn.attention import set_attention_precision
from ..svd_model.nn.compile import compile_unet
from ..svd_model.weights.loader import resolve_dtype
from ..svd_model.weights.tiny import write_tiny_checkpoint

log = logging.getLogger(__name__)

# A tiny random model at full SVD size would only burn time: smaller defaults for the demo path.
TINY_DEFAULTS = {"num_frames": 14, "width": 256, "height": 192, "steps": 10}
IMAGE_MAX_BYTES = 256 * 2**20


@dataclass
class JobResult:
    output_dir: Path
    frames: list[Path] = field(default_factory=list)
    preview: Path | None = None
    model: str = ""
    tiny: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        lines = []
        if self.tiny:
            lines.append("NOTE: no checkpoint given, so a tiny RANDOM-weight model was used: the frames are noise and "
                         "only show that the pipeline runs. Pass --checkpoint (or set SVD_LAB_CHECKPOINT) for video.")
        lines.append(f"model: {self.model}")
        lines.append(f"wrote {len(self.frames)} frames to {self.output_dir} (preview: {self.preview}) "
                     f"in {self.seconds:.1f} s")
        return "\n".join(lines)


def demo_image(width: int, height: int) -> torch.Tensor:
    """A built-in conditioning image (colour gradient with a disc), (1, 3, H, W) in [-1, 1]."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    disc = ((x * width / height - 0.3) ** 2 + (y + 0.1) ** 2 < 0.25).float()
    rgb = torch.stack([x, y, 0.8 * disc - 0.4 * (1 - disc)])  # (3, H, W)
    return rgb.clamp(-1, 1)[None]


def read_image(path: str | Path, width: int, height: int) -> torch.Tensor:
    """Read an image file, scale to cover width x height, centre-crop: (1, 3, H, W) in [-1, 1]."""
    try:  # read_bytes refuses a directory or FIFO (opening a FIFO would block) and oversized files by name
        data = read_bytes(path, what="image", max_bytes=IMAGE_MAX_BYTES)
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    except Image.UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not an image format Pillow can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3)
    return resize_cover(arr.permute(2, 0, 1)[None], width, height)  # (1, 3, height, width)


def write_frames(frames: torch.Tensor, output_dir: Path, fps: int) -> tuple[list[Path], Path]:
    """frames (t, 3, H, W) in [-1, 1] -> frame_00000.png ... and an animated video.webp."""
    output_dir.mkdir(parents=True, exist_ok=True)
    pixels = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(p) for p in pixels]
    paths = []
    for i, img in enumerate(images):
        paths.append(output_dir / f"frame_{i:05d}.png")
        img.save(paths[-1])
    preview = output_dir / "video.webp"
    images[0].save(preview, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, quality=90)
    return paths, preview


def run_image_to_video(
    *, checkpoint: Path | None, image: str | None, output_dir: Path, num_frames: int | None = None,
    steps: int | None = None, seed: int = 23, width: int | None = None, height: int | None = None,
    device: str = "auto", memory: str = "normal", weight_storage: str | None = None, step_cache: str = "off",
    cache_threshold: float = 0.1, attention: str = "fp32", compile: str = "off", unet: Path | None = None,
    sampler: str | None = None, schedule: str | None = None,
) -> JobResult:
    """`memory`: a svd_model.memory mode (normal / low_vram); `weight_storage`: fp8 storage of the UNet;
    `unet`: a UNet-only file (e.g. a few-step AnimateLCM-SVD-xt) replacing the checkpoint's, whose variant's
    recommended steps / guidance / sampler / schedule become the defaults; `sampler` / `schedule`: overrides;
    `step_cache` / `cache_threshold`: VideoParams' step cache (off by default; what it reused is logged);
    `attention` / `compile`: the UNet's svd_model.nn.attention / svd_model.nn.compile modes."""
    start = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    plan = plan_for(memory)
    result = JobResult(output_dir=output_dir, tiny=checkpoint is None)
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            checkpoint = write_tiny_checkpoint(Path(tmp) / "tiny-random-svd.safetensors")
        keep_in_ram = plan.stream_unet or plan.offload_encoders
        bundle = load_bundle(checkpoint, device="cpu" if keep_in_ram else device,
                             dtype=resolve_dtype(None, torch.device(device)), weight_storage=weight_storage)
        apply_plan(bundle, plan, device)
        if unet is not None:
            bundle, replaced = with_unet(bundle, unet)
            log.info("UNet replaced: %s", replaced)
        set_attention_precision(bundle.model.unet, attention)
        if compile != "off":
            log.info(compile_unet(bundle.model.unet, compile, device=device).summary())
        result.model = f"{bundle.variant} from {checkpoint}" + (" (tiny random weights)" if result.tiny else "")
        overrides = dict(TINY_DEFAULTS) if result.tiny else {}
        if unet is not None:
            overrides.pop("steps", None)  # a few-step UNet's own step count, also on a tiny demo model
        given = {"num_frames": num_frames, "steps": steps, "width": width, "height": height,
                 "step_cache": step_cache, "cache_threshold": cache_threshold, "sampler": sampler,
                 "schedule": schedule}
        overrides.update({k: v for k, v in given.items() if v is not None})
        params = VideoParams.for_variant(bundle.variant, **overrides)
        cond_image = read_image(image, params.width, params.height) if image else demo_image(params.width,
                                                                                                params.height)
        generator = torch.Generator(device).manual_seed(seed)
        latents = image_to_video(bundle, cond_image, params, generator=generator,
                                 callback=lambda s: log.info("step %d/%d sigma %.4g", s.index + 1, s.total, s.sigma))
        frames = decode_latents(bundle, latents)[0]
    result.frames, result.preview = write_frames(frames, output_dir, params.fps)
    result.seconds = time.perf_counter() - start
    return result


#: Sizes a tiny random model runs at in the demo path (class -> input -> value).
TINY_RUN = {
    "SVDLab_ImageToVideoConditioning": {"width": 256, "height": 192, "frames": 8},
    "SVDLab_Sampler": {"steps": 8},
    "SVDLab_LoadVideo": {"frame_cap": 8, "width": 256, "height": 192},
    "SVDLab_OrbitCameras": {"frames": 5},
    "SVDLab_PrepareObjectImage": {"size": 128},
    "SVDLab_OrbitConditioning": {"size": 128},
    "SVDLab_ExtendVideo": {"frames": 6, "steps": 8},
    "SVDLab_DatasetFromManifest": {"frames": 3, "width": 64, "height": 64},
    "SVDLab_DatasetFromFolder": {"frames": 3, "width": 64, "height": 64},
    "SVDLab_Train": {"steps": 2, "validate_every": 0, "save_every": 0, "gradient_checkpointing": False,
                     "lora_rank": 4},
}


def checkpoint_family(name: str) -> Family:
    """The family a checkpoint name asks for: "sv3d_p" / "sv3d_u" in the name (any case), else SVD."""
    lowered = str(name).lower()
    return next((f for f in (Family.SV3D_P, Family.SV3D_U) if f.value in lowered), Family.SVD)


def tiny_name(ckpt_name: str, family: Family) -> str:
    """File name of the tiny stand-in of `family`: `ckpt_name` for SVD, else `<stem>_<family><suffix>`."""
    if family is Family.SVD:
        return ckpt_name
    path = Path(ckpt_name)
    return f"{path.stem}_{family.value}{path.suffix}"


def tiny_families(prompt: dict) -> set[Family]:
    """Families the workflow's checkpoint loaders ask for (from their checkpoint names)."""
    return {checkpoint_family(n["inputs"].get("ckpt_name", "")) for n in prompt.values()
            if n.get("class_type") == "SVDLab_CheckpointLoader"}


def write_tiny_stand_ins(folder: str | Path, name: str, families: Iterable[Family] = (), seed: int = 0) -> Path:
    """Write the tiny SVD stand-in `folder/name` and, for each SV3D family in `families`, its :func:`tiny_name`
    twin (what :func:`tiny_overrides` points SV3D loaders at). Returns the SVD file."""
    svd = write_tiny_checkpoint(Path(folder) / name, seed=seed)
    for family in set(families) - {Family.SVD}:
        write_tiny_checkpoint(Path(folder) / tiny_name(name, family), family, seed=seed)
    return svd


def tiny_overrides(prompt: dict, ckpt_name: str, sizes: dict[str, dict[str, object]] = TINY_RUN) -> list[str]:
    """`--set` strings that point every checkpoint loader at `ckpt_name` (SV3D loaders, by their checkpoint
    name, at :func:`tiny_name` of it) and shrink sizes and steps."""
    sets = []
    for nid, node in prompt.items():
        if node.get("class_type") == "SVDLab_CheckpointLoader":
            family = checkpoint_family(node.get("inputs", {}).get("ckpt_name", ""))
            sets.append(f"{nid}.ckpt_name={tiny_name(ckpt_name, family)}")
        sets += [f"{nid}.{name}={value}" for name, value in sizes.get(node.get("class_type"), {}).items()]
    return sets


def missing_checkpoints(prompt: dict) -> list[str]:
    """Checkpoint names the workflow's loaders ask for that no model folder holds."""
    from ..nodes import bridge

    names = [n["inputs"].get("ckpt_name", "") for n in prompt.values()
             if n.get("class_type") == "SVDLab_CheckpointLoader"]
    return [name for name in names if not isinstance(name, list) and bridge.find_checkpoint(str(name)) is None]
