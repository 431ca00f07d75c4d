"""torch.distributed helpers: process-group setup from torchrun's environment (gloo on CPU, NCCL on GPUs),
DDP wrapping, rank-aware reductions, logging and barriers. One process (no environment) is the default.

Sharding: every process builds the same global batch of ``batch_size * world_size`` cache indices (the batch
plan is a pure function of the seed) and takes its own slice ``[rank * batch_size, (rank + 1) * batch_size)``;
per-sample random draws are keyed by the position in the global batch, so N processes compute what one
process with the N-times larger batch computes (up to the floating-point order of the gradient all-reduce).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import Tensor, nn

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # this module created a process group (destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto": cuda:<local_rank> when CUDA is available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
    return device


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 7200.0) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT); without
    those variables (or WORLD_SIZE 1) a single-process DistInfo on `device`. `timeout_s` bounds every collective,
    including the wait of the other processes while rank 0 builds the latent cache (build big caches first with
    ``svd-lab train CONFIG --cache-only``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    import torch.distributed as dist

    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        created = True
    else:
        created = False
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, created)
    log.info("process %d of %d on %s (%s)", info.rank, info.world_size, dev, backend)
    return info


def shutdown(info: DistInfo) -> None:
    if info.initialized:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around `module` when distributed (gradients of the trained parameters are averaged), else itself."""
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def all_mean(value: Tensor, info: DistInfo) -> float:
    """The mean of a scalar over all processes (a plain float when single-process)."""
    if not info.distributed:
        return float(value)
    import torch.distributed as dist

    t = value.detach().float().reshape(1).to(info.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t) / info.world_size


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only if `flag` is True on every process (so all processes stop together)."""
    if not info.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([0.0 if flag else 1.0], device=info.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t) == 0.0


def broadcast_text(text: str | None, info: DistInfo) -> str | None:
    """Rank 0's string on every process (e.g. the checkpoint to resume from)."""
    if not info.distributed:
        return text
    import torch.distributed as dist

    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RankFilter(logging.Filter):
    """Let only rank 0's INFO/DEBUG records through (warnings and errors from every rank)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.rank == 0 or record.levelno >= logging.WARNING


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a local torchrun rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
