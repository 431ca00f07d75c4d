"""`svd-lab train`: finetune an SVD model from a config file (JSON or TOML), on one process or many (DDP).

  svd-lab train CONFIG [--nproc N] [--set KEY=VALUE ...] [--resume auto|none|PATH] [--device DEV]
  svd-lab train CONFIG --cache-only       (build the latent cache only, e.g. before a multi-GPU run)
  svd-lab train --print-config            (the default configuration, every key, as JSON)

With --nproc N > 1 the command starts torchrun (torch.distributed.run) on 127.0.0.1 with N workers, each
running ``python -m comfyui_svd_lab.cli.train CONFIG ...``; they use NCCL on GPUs (one per worker) and gloo
on the CPU. Running that module under your own torchrun (several nodes) works the same way. A run that stops
(Ctrl-C, a crash, a full disk) resumes from its newest checkpoint when started again with the same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys

from .errors import guarded


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="training config (.toml or .json); see --print-config")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) to train on with DDP (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. optim.lr=3e-5 or data.num_frames=25 (repeatable)")
    p.add_argument("--resume", help="auto (newest checkpoint in output_dir), none, or a checkpoint path")
    p.add_argument("--device", help="auto, cpu, cuda (overrides the config)")
    p.add_argument("--print-config", action="store_true", help="print the default configuration and exit")
    p.add_argument("--cache-only", action="store_true", help="build (or complete) the latent cache and exit")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `train` on the `svd-lab` parser."""
    p = sub.add_parser("train", help="finetune a model (LoRA or full weights) from a config file")
    add_arguments(p)
    p.set_defaults(func=cmd_train)


def _overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set)
    if args.resume:
        sets.append(f"resume={json.dumps(args.resume)}")
    if args.device:
        sets.append(f"device={json.dumps(args.device)}")
    return sets


def launch(args: argparse.Namespace) -> int:
    """Start torchrun with args.nproc local workers running this module."""
    from ..svd_model.training.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={args.nproc}",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", f"{__package__}.train",
           args.config]
    for text in _overrides(args):
        cmd += ["--set", text]
    print(f"svd-lab train: starting {args.nproc} processes with torchrun", flush=True)
    return subprocess.call(cmd)


def _build_cache(config) -> int:
    import torch

    from ..svd_model.training.distributed import DistInfo, resolve_device
    from ..svd_model.training.run import ensure_cache
    from ..svd_model.weights.loader import load_bundle

    device = resolve_device(config.device)
    bundle = load_bundle(config.checkpoint, device="cpu",
                         dtype=torch.float16 if device.type == "cuda" else torch.float32)
    cache = ensure_cache(config, bundle, DistInfo(device=device),
                         callback=lambda done, total: print(f"cache {done}/{total}", flush=True))
    print(cache.describe())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..svd_model.training.config import TrainConfig, load_config

    if args.print_config:
        print(json.dumps(TrainConfig().to_dict(), indent=1))
        return 0
    if not args.config:
        print("svd-lab train: a CONFIG file is needed (see --print-config)", file=sys.stderr)
        return 2
    config = load_config(args.config, overrides=_overrides(args))
    if args.cache_only:
        return _build_cache(config)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch(args)
    from ..svd_model.training.distributed import RankFilter, init_distributed, shutdown
    from ..svd_model.training.loop import NonFiniteLossError
    from ..svd_model.training.run import StepEvent, run_training

    dist = init_distributed(config.device)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RankFilter(dist.rank))

    def report(event: StepEvent) -> None:
        s = event.stats
        if s.step % config.log_every == 0 or s.step == event.total:
            print(f"step {s.step}/{event.total} loss {s.loss:.5f} lr {s.lr:.3g} grad_norm {s.grad_norm:.3g} "
                  f"{s.seconds:.2f} s", flush=True)

    try:
        result = run_training(config, dist=dist, on_step=report,
                              on_cache=lambda done, total: print(f"cache {done}/{total}", flush=True))
    except NonFiniteLossError as exc:
        print(f"svd-lab train: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"svd-lab train: interrupted; run the same command again to resume from {config.output_dir}",
              file=sys.stderr)
        return 130
    finally:
        shutdown(dist)
    if dist.is_main:
        print(f"trained {result.step} steps; result: {result.weights_path}; state: {result.state_path}; "
              f"loss log: {result.log_path}; plot: {result.plot_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m comfyui_svd_lab.cli.train` (torchrun workers)."""
    parser = argparse.ArgumentParser(prog="svd-lab train", description=__doc__.split("\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return guarded(cmd_train, args, "svd-lab train")


if __name__ == "__main__":
    sys.exit(main())
