"""Checks on weight tables and values shared by the loaders (:mod:`.loader` for checkpoints, :mod:`.vae_file` for
separate VAE files, :mod:`.unet_file` for UNet files): every weight floating point and in the layout the model needs,
and no NaN / Inf (one cheap sum per tensor as it is materialised, an exact count only for the suspects)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError, shorten
from ..nn.model import check_keys
from .checkpoint import dtype_name

log = logging.getLogger(__name__)

_CHUNK = 1 << 22  # elements per step of the exact NaN/Inf count (a bounded temporary)


def check_weight_table(name: str, table: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                       expected: Mapping[str, tuple[int, ...]]) -> None:
    """Weights are floating point; a tensor with the right element count but another layout is named."""
    for key, shape in expected.items():
        if key not in table:
            continue
        found, dtype = table[key]
        if not dtype.is_floating_point:
            raise CheckpointError(
                f"{name}: tensor {shorten(key)} is {dtype_name(dtype)}, expected a floating-point dtype (F32, F16, "
                "BF16, F8_E4M3, F8_E5M2): a weight stored as integers or booleans means a damaged or mislabelled file"
            )
        if tuple(found) != tuple(shape) and math.prod(found) == math.prod(shape):
            raise CheckpointError(
                f"{name}: tensor {shorten(key)} has shape {list(found)}, the model inferred from the file needs "
                f"{list(shape)}: the same number of elements in another layout (a transposed or reshaped weight)"
            )


def quick_sum(t: Tensor) -> Tensor:
    """One reduction per tensor in its own dtype (no temporary copy; an upcast sum would allocate one):
    finite when every element is finite, unless the sum overflowed (then the exact count decides)."""
    if not t.dtype.is_floating_point:
        return torch.zeros((), device=t.device)
    if t.dtype.itemsize == 1:  # fp8 (only if asked for): no reductions on every device; fp16 holds every value
        total = torch.zeros((), dtype=torch.float16, device=t.device)
        for chunk in t.reshape(-1).split(_CHUNK):
            total += chunk.to(torch.float16).sum()
        return total
    return t.sum()


def count_non_finite(t: Tensor) -> int:
    """The exact number of NaN/Inf elements, in chunks (a bounded temporary)."""
    wide = torch.float16 if t.dtype.itemsize == 1 else t.dtype  # isfinite has no fp8 kernel
    return sum(int((~torch.isfinite(chunk.to(wide))).sum()) for chunk in t.reshape(-1).split(_CHUNK))


def non_finite_report(name: str, state: Mapping[str, Tensor], sums: list[Tensor]) -> str | None:
    """None when every weight is finite, else which tensors hold NaN/Inf (first few) and how many values."""
    if not sums:
        return None
    finite = torch.stack([s.float() for s in sums]).isfinite().tolist()  # one device sync for all tensors
    suspects = [k for k, ok in zip(state, finite, strict=True) if not ok]
    counts = {k: count_non_finite(state[k]) for k in suspects}  # a finite sum can overflow: count exactly
    bad = {k: n for k, n in counts.items() if n}
    if not bad:
        return None
    listed = ", ".join(f"{k!r} ({n} of {state[k].numel()} values)" for k, n in list(bad.items())[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return (f"{name}: {len(bad)} tensor(s) hold NaN or Inf values: {listed}{more}. The file is damaged or was "
            "saved from a diverged training run (its videos would be flat grey)")


def refuse_non_finite(report: str | None, allow_non_finite: bool, node: str = "the loader node's") -> None:
    """Act on a :func:`non_finite_report`: nothing for None; else a CheckpointError that says how to load the file
    anyway (``node``: whose allow_non_finite input does it), or with `allow_non_finite` a logged warning."""
    if report and not allow_non_finite:
        raise CheckpointError(f"{report}. To load it anyway pass allow_non_finite=True ({node} allow_non_finite "
                              "input).")
    if report:
        log.warning("%s; loading it anyway (allow_non_finite)", report)


def checked_state(name: str, tensors: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], *,
                  dtype: torch.dtype, device: torch.device | str, allow_non_finite: bool, what: str,
                  node: str) -> dict[str, Tensor]:
    """The tensors of one network's file, checked and materialised: floating point, exactly the keys and shapes of
    `expected` (errors name the file `name` and call it a `what`, e.g. "VAE file"), converted to `dtype` on `device`,
    and finite (:func:`refuse_non_finite`; `node` names the input that allows otherwise)."""
    check_weight_table(name, {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}, expected)
    try:
        check_keys(expected, {k: tuple(t.shape) for k, t in tensors.items()})
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {str(exc).replace('checkpoint', what, 1)}") from None
    state = {k: t.to(device=device, dtype=dtype) for k, t in tensors.items()}
    refuse_non_finite(non_finite_report(name, state, [quick_sum(t) for t in state.values()]), allow_non_finite, node)
    return state
