"""Training-state checkpoints: trainable weights + optimizer + EMA + grad scaler + RNG states + step + config,
in ONE safetensors file written atomically (temp file in the same folder, fsync, rename).

A save that fails (full disk, killed process) never touches the previous checkpoint: the temp file is removed
(or, after a SIGKILL, left as ``.state-*.tmp``, which readers ignore and the next save deletes). Tensors are
stored under ``model/``, ``ema/``, ``optim/`` and ``rng/`` prefixes; everything else (optimizer hyper-parameters,
step, config) is JSON in the file's metadata.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from ..weights.checkpoint import CheckpointReader, read_header, save_checkpoint

log = logging.getLogger(__name__)

STATE_FORMAT = "svd_lab.train_state.v1"
_NAME = re.compile(r"^state-step(\d{7})\.safetensors$")


def seed_from(*parts: object) -> int:
    """A 63-bit seed derived from any printable parts (stable across processes and runs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def state_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"state-step{step:07d}.safetensors"


# ------------------------------------------------------------------------------------------------ RNG


def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Global RNG states: torch CPU (+ CUDA), numpy, python random -> (tensors, JSON-able)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    state = random.getstate()
    info = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [state[0], list(state[1]), state[2]]}
    return tensors, info


def restore_rng(tensors: Mapping[str, Tensor], info: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"].clone())
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.clone() for c in cuda][: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().view(np.uint32).copy(), pos, has_gauss, gauss))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------------------------------- optimizer state


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors under optim/<param>/<name>, JSON rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{pid}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    try:
        groups = json.loads(json.dumps(state["param_groups"]))
    except TypeError as exc:
        raise CheckpointError(f"optimizer hyper-parameters are not serialisable: {exc}") from None
    return tensors, {"groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split("/", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in info["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": info["groups"]}


# ------------------------------------------------------------------------------------------- save / load


def save_state(path: str | os.PathLike, *, step: int, model: Mapping[str, Tensor], optimizer: Mapping[str, Any],
               ema: Mapping[str, Tensor] | None, scaler: Mapping[str, Any] | None, config: Mapping[str, Any],
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write one training-state file atomically. Raises CheckpointError naming the problem (disk full, ...)."""
    path = Path(path)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in (ema or {}).items()})
    optim_tensors, optim_info = _flatten_optimizer(optimizer)
    tensors.update(optim_tensors)
    rng_tensors, rng_info = capture_rng()
    tensors.update({f"rng/{k}": v for k, v in rng_tensors.items()})
    meta = {"format": STATE_FORMAT, "step": str(step), "optimizer": json.dumps(optim_info),
            "rng": json.dumps(rng_info), "scaler": json.dumps(dict(scaler) if scaler else None),
            "config": json.dumps(config, default=str), "extra": json.dumps(dict(extra or {}), default=str)}
    for stale in path.parent.glob(".state-step*.tmp") if path.parent.is_dir() else ():
        stale.unlink(missing_ok=True)  # left by a killed save
    try:
        return save_checkpoint(path, tensors, meta)
    except OSError as exc:
        previous = latest_checkpoint(path.parent)
        kind = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        keep = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write the training checkpoint {path}: {kind}; {keep}. Free space or "
                              "set output_dir to another disk, then resume") from exc


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """{step, model, ema, optimizer, scaler, rng_tensors, rng_info, config, extra} from a state file."""
    reader = CheckpointReader(path)
    if reader.metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training-state checkpoint (format "
                              f"{reader.metadata.get('format')!r}); a model or LoRA file cannot be resumed from")
    groups: dict[str, dict[str, Tensor]] = {"model": {}, "ema": {}, "optim": {}, "rng": {}}
    for key in reader:
        prefix, rest = key.split("/", 1)
        groups[prefix][rest if prefix != "optim" else key] = reader[key].clone()
    meta = reader.metadata
    return {"step": int(meta["step"]), "model": groups["model"], "ema": groups["ema"] or None,
            "optimizer": _unflatten_optimizer(groups["optim"], json.loads(meta["optimizer"])),
            "scaler": json.loads(meta["scaler"]), "rng_tensors": groups["rng"], "rng_info": json.loads(meta["rng"]),
            "config": json.loads(meta["config"]), "extra": json.loads(meta.get("extra", "{}")), "path": Path(path)}


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Readable state files in `directory`, oldest step first (temp files and damaged files skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if not match:
            continue
        try:
            read_header(path)
        except CheckpointError as exc:
            log.warning("ignoring a damaged training checkpoint: %s", exc)
            continue
        found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` state files."""
    for path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)
