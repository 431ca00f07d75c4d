"""`svd-lab`: the pack's command line (no ComfyUI server needed).

  svd-lab run WORKFLOW.json [--set NODE_ID.INPUT=VALUE ...] [--output-dir DIR] [--input-dir DIR] [--models-dir DIR]
              [--allow-any-path] [--tiny-if-missing]
  svd-lab image-to-video [--checkpoint PATH] [--image IMG] [--output-dir DIR] [...]
  svd-lab make-tiny-checkpoint PATH [--family svd|sv3d_u|sv3d_p]
  svd-lab info CHECKPOINT
  svd-lab curate INPUT --out DIR [...]      (see cli/curate.py)
  svd-lab curate-report DIR [--filter RULE ...]
  svd-lab train CONFIG [--nproc N] [--set KEY=VALUE ...]   (see cli/train.py)

Bad input (a malformed workflow, checkpoint or config, a missing file) is one error on stderr and exit code 2,
never a traceback (``--debug`` or ``SVD_LAB_DEBUG=1`` shows it); a closed stdout (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .errors import DEBUG_ENV, guarded

log = logging.getLogger("svd_lab")

CHECKPOINT_ENV = "SVD_LAB_CHECKPOINT"


def _find_checkpoint(arg: str | None) -> Path | None:
    for candidate in (arg, os.environ.get(CHECKPOINT_ENV)):
        if candidate:
            path = Path(candidate)
            if not path.exists():
                from ..svd_model.errors import InputError

                raise InputError(f"checkpoint not found: {path}")
            return path
    return None


def _cmd_make_tiny(args: argparse.Namespace) -> int:
    from ..svd_model.config import Family
    from ..svd_model.weights.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(args.path, Family(args.family), seed=args.seed)
    print(f"wrote a tiny RANDOM-weight {args.family} checkpoint (for tests and demos, not real video): {path}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..svd_model.errors import shorten
    from ..svd_model.weights.detect import guess_variant
    from ..svd_model.weights.loader import check_checkpoint

    checked = check_checkpoint(args.checkpoint)  # the same checks as a load, without reading the weights
    config = checked.config
    dtypes = sorted({str(d).replace("torch.", "") for d in checked.dtypes.values()})
    print(f"file: {checked.path.name} ({len(checked.dtypes)} tensors, dtypes {', '.join(dtypes)})")
    print(f"family: {config.family.value}; sampling variant guess: {guess_variant(config.family, checked.path.name)}")
    for name in ("unet", "first_stage", "cond_vae", "image_encoder"):
        print(f"{name}: {getattr(config, name)}")
    if checked.metadata:
        print(f"metadata: {{{', '.join(f'{shorten(k, 60)}: {shorten(v, 200)}' for k, v in checked.metadata.items())}}}")
    return 0


def _cmd_image_to_video(args: argparse.Namespace) -> int:
    from .jobs import run_image_to_video

    checkpoint = _find_checkpoint(args.checkpoint)
    result = run_image_to_video(
        checkpoint=checkpoint,
        image=args.image,
        output_dir=Path(args.output_dir),
        num_frames=args.frames,
        steps=args.steps,
        seed=args.seed,
        width=args.width,
        height=args.height,
        device=args.device,
        memory=args.memory,
        weight_storage=args.weight_storage,
        step_cache=args.step_cache,
        cache_threshold=args.cache_threshold,
        attention=args.attention,
        compile=args.compile,
        unet=Path(args.unet) if args.unet else None,
        sampler=args.sampler,
        schedule=args.schedule,
    )
    print(result.summary())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import tempfile

    from .. import NODE_CLASS_MAPPINGS
    from ..nodes import bridge
    from ..workflow import WorkflowError, apply_overrides, check_core_nodes, load_workflow, run_workflow_cli

    bridge.configure(models_dirs=args.models_dir or None, output_dir=args.output_dir, input_dir=args.input_dir,
                     allow_any_path=args.allow_any_path)
    sets = list(args.set or [])
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny_if_missing:
            from .jobs import missing_checkpoints, tiny_families, tiny_overrides, write_tiny_stand_ins

            try:
                loaded, _ = load_workflow(args.workflow, NODE_CLASS_MAPPINGS)
                check_core_nodes((n["class_type"] for n in loaded.values()), NODE_CLASS_MAPPINGS)
                prompt = apply_overrides(loaded, sets, NODE_CLASS_MAPPINGS)
            except WorkflowError:
                prompt = {}  # run_workflow_cli reports the problem (no tiny stand-ins for a workflow it refuses)
            missing = missing_checkpoints(prompt)
            if missing:
                # SV3D loaders get SV3D-shaped stand-ins
                tiny = write_tiny_stand_ins(tmp, "tiny-random-svd.safetensors", tiny_families(prompt))
                bridge.configure(models_dirs=[*bridge.model_dirs(), tmp])
                sets += tiny_overrides(prompt, tiny.name)
                print(f"NOTE: {', '.join(missing)} not found in {', '.join(map(str, bridge.model_dirs()[:-1]))}: "
                      "running on a tiny RANDOM-weight model at reduced size instead. The video will be noise; "
                      "put a real checkpoint there (or pass --models-dir) for real output.")
        return run_workflow_cli(args.workflow, sets, args.output_dir, NODE_CLASS_MAPPINGS, host=bridge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svd-lab", description="Stable Video Diffusion tools (comfyui-svd-lab)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of errors (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a workflow JSON (UI or API format) of this pack's nodes without a server")
    p.add_argument("workflow", help="workflow file saved by the ComfyUI editor, or its API-format export")
    p.add_argument("--set", action="append", metavar="NODE_ID.INPUT=VALUE", help="override a node input (repeatable)")
    p.add_argument("--output-dir", help="where output nodes write (default: $SVD_LAB_OUTPUT or ./output)")
    p.add_argument("--models-dir", action="append", help="checkpoint folder (repeatable; default: $SVD_LAB_MODELS "
                   "or ./models/svd)")
    p.add_argument("--input-dir", help="the input folder loaders read from (default: ./input)")
    p.add_argument("--allow-any-path", action="store_true", help="let the workflow read and write files anywhere "
                   "this user can (your own absolute paths); without it, only the input, output, temp and model "
                   "folders are allowed")
    p.add_argument("--tiny-if-missing", action="store_true", help="when a named checkpoint is missing, run on a tiny "
                   "random-weight model at reduced size instead (a demo that the whole graph runs)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("image-to-video", help="generate a video from one image and write PNG frames")
    p.add_argument("--checkpoint", help=f"SVD-family .safetensors or diffusers folder (or ${CHECKPOINT_ENV}); "
                   "without one, a tiny random-weight model is used and the output is noise")
    p.add_argument("--image", help="conditioning image (PNG/JPEG); default: a built-in test pattern")
    p.add_argument("--output-dir", default="output", help="where the frames go (default: ./output)")
    p.add_argument("--frames", type=int, help="frame count (default: the variant's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the variant's)")
    p.add_argument("--width", type=int, help="width, multiple of 64 (default: the variant's)")
    p.add_argument("--height", type=int, help="height, multiple of 64 (default: the variant's)")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--memory", default="normal", choices=["normal", "low_vram"], help="low_vram: the UNet streams "
                   "from CPU memory block by block, encoders offloaded, decode one frame at a time on tiles")
    p.add_argument("--weight-storage", choices=["fp8_e4m3fn", "fp8_e5m2"], help="keep the UNet's linear and conv "
                   "weights in fp8 (half the memory), computed in the load dtype")
    p.add_argument("--step-cache", default="off", metavar="MODE", help="off, deepcache or teacache: skip most of "
                   "the UNet on steps where its output changes little; faster, not exact (deepcache closer, teacache "
                   "faster; default off)")
    p.add_argument("--cache-threshold", type=float, default=0.1, help="step cache: estimated relative output change "
                   "tolerated before a full step; higher is faster and less exact, 0 skips nothing (default 0.1)")
    p.add_argument("--attention", default="fp32", choices=["fp32", "prescale", "half", "auto"], help="fp16 attention "
                   "precision: fp32 (exact, the default), prescale / auto (fused fp16 kernels, ~1e-3 relative), half")
    p.add_argument("--compile", default="off", choices=["off", "regional", "regional+cudagraphs"], help="torch.compile "
                   "the UNet's repeated blocks (the first run compiles; falls back to eager with a warning)")
    p.add_argument("--unet", metavar="FILE", help="a UNet-only .safetensors (e.g. AnimateLCM-SVD-xt) replacing the "
                   "checkpoint's; a few-step file brings its recommended steps, guidance, sampler and schedule")
    # names checked by VideoParams (a wrong one lists the choices); importing the lists here would load torch
    p.add_argument("--sampler", metavar="NAME", help="sampling method, e.g. euler, dpmpp_2m, lcm (default: the "
                   "variant's)")
    p.add_argument("--schedule", metavar="NAME", help="noise schedule, e.g. karras, ays, animatelcm (default: the "
                   "variant's)")
    p.set_defaults(func=_cmd_image_to_video)

    p = sub.add_parser("make-tiny-checkpoint", help="write a tiny random-weight checkpoint in the official layout")
    p.add_argument("path")
    p.add_argument("--family", default="svd", choices=["svd", "sv3d_u", "sv3d_p"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_tiny)

    p = sub.add_parser("info", help="detect a checkpoint's variant and architecture")
    p.add_argument("checkpoint")
    p.set_defaults(func=_cmd_info)

    from .curate import add_commands

    add_commands(sub)

    from .train import add_commands as add_train_commands

    add_train_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svd-lab` console script: the exit code (2 for bad input, shown as one line)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return guarded(args.func, args, "svd-lab", debug=args.debug)
