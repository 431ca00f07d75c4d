"""How the pack's networks run on a CPU: two process-level choices PyTorch leaves at slow defaults for them.

:func:`cpu_inference` wraps every sampling run and decode (:mod:`.pipelines`). On any other device, and with
gradients on (training), it changes nothing. The values computed are the same up to float32 summation order
(``tests/unit/test_cpu_runtime.py`` holds the UNet to 1e-5 of the default path).

1. **A steady heap** (:func:`steady_heap`, glibc only). oneDNN's CPU convolution re-lays out its weight into a
   fresh buffer on every call. For the UNet's 1280-channel 3x3 convolutions that buffer is 59 MB (118 MB for the
   2560-input ones), above glibc's largest automatic mmap threshold (32 MiB on 64-bit), so every call maps new
   pages, the kernel zero-fills them on first touch (about 15 000 page faults per call) and unmaps them when the
   call returns; on small CPU videos, where the convolutions are short, that is a fifth of the UNet's time. The
   context raises glibc's mmap and trim thresholds for its duration, so such buffers come from the heap and are
   reused call after call. On exit it sets them to glibc's own steady-state values (the 32 MiB mmap threshold its
   dynamic rule climbs to, trim at twice that) and calls ``malloc_trim(0)``, which hands freed heap memory back to
   the system except what glibc keeps anyway (a free top chunk below the trim threshold, at most 64 MiB per arena).
   The main thread gains most: glibc serves other threads (a ComfyUI server's prompt worker) from arenas of at
   most 64 MiB, so there the 59 MB buffers are held but the 118 MB ones are still mapped per call. Freed chunks
   left inside the heap can also serve later code in the process (a peer run in the same benchmark process
   gains from them too).
2. **oneDNN for float32 linear layers** (:class:`OneDNNLinear`, x86-64). PyTorch's float32 ``F.linear`` calls MKL's
   sgemm, which on AMD CPUs runs a narrower code path than the AVX-512 kernels oneDNN (PyTorch's own CPU backend,
   ``torch.ops.mkldnn._linear_pointwise``, the kernel torch.compile's CPU backend emits) picks by instruction set;
   on a 2-core AMD EPYC oneDNN ran the UNet's linear shapes 1.2-1.4x faster and the whole UNet 12 % faster. The
   mode reroutes ``F.linear`` calls on float32 CPU tensors without autograd; everything else goes to PyTorch as
   before. Not on other architectures (oneDNN's float32 matmul is not PyTorch's choice there) or while
   torch.compile traces (inductor picks its own kernels).

Either is left out when the person running the process says so: environment variable ``SVD_LAB_STEADY_HEAP=0``
or ``SVD_LAB_ONEDNN_LINEAR=0`` (process settings, never read from a workflow). The heap is also left alone off
Linux/glibc and when the user tuned the allocator already (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``, or another malloc in ``LD_PRELOAD`` such as jemalloc or tcmalloc).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["HEAP_ENV", "LINEAR_ENV", "OneDNNLinear", "cpu_inference", "heap_problem", "linear_problem",
           "steady_heap"]

log = logging.getLogger(__name__)

#: Environment variables: "0" turns the steady heap / the oneDNN linear route off for the process.
HEAP_ENV = "SVD_LAB_STEADY_HEAP"
LINEAR_ENV = "SVD_LAB_ONEDNN_LINEAR"

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: While tuned: requests below these come from the heap / free memory above this stays in it. Older glibc
#: versions refuse an mmap threshold above 32 MiB: mallopt says so and the allocator is left at glibc's values.
_HOLD_MMAP = 1 << 30
_HOLD_TRIM = 2**31 - 1  # mallopt takes a C int
#: glibc's steady state: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, and its dynamic trim threshold (twice the mmap one).
_GLIBC_MMAP = 32 * 2**20
_GLIBC_TRIM = 2 * _GLIBC_MMAP

_USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_depth = 0
_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc with mallopt and malloc_trim, else None."""
    global _libc
    if _libc is None:
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return None
        try:
            lib = ctypes.CDLL(None)
            lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def heap_problem() -> str | None:
    """Why :func:`steady_heap` would leave the allocator alone in this process (None: it tunes it)."""
    if os.environ.get(HEAP_ENV, "").strip() == "0":
        return f"{HEAP_ENV}=0"
    for name in _USER_TUNING:
        if os.environ.get(name):
            return f"the allocator is tuned by {name}"
    preload = os.environ.get("LD_PRELOAD", "")
    if "malloc" in preload or "jemalloc" in preload:
        return "another malloc is preloaded"
    if _glibc() is None:
        return "not glibc (Linux) malloc"
    return None


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    lib = _glibc()
    assert lib is not None
    return bool(lib.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(lib.mallopt(_M_TRIM_THRESHOLD, trim_threshold))


@contextlib.contextmanager
def steady_heap(device: torch.device | str) -> Iterator[bool]:
    """Hold large buffers in the heap while the block runs networks on `device` (see the module doc, 1).

    Yields True when the allocator is tuned for the block, False when it is left alone (a non-CPU device, or
    :func:`heap_problem`). Values computed inside are unaffected either way.
    """
    global _depth
    if torch.device(device).type != "cpu" or heap_problem() is not None:
        yield False
        return
    with _lock:
        if _depth == 0 and not _set(_HOLD_MMAP, _HOLD_TRIM):
            log.debug("mallopt refused the steady-heap thresholds; allocator left as it was")
            _set(_GLIBC_MMAP, _GLIBC_TRIM)
            tuned = False
        else:
            _depth += 1
            tuned = True
    try:
        yield tuned
    finally:
        if tuned:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _set(_GLIBC_MMAP, _GLIBC_TRIM)
                    _glibc().malloc_trim(0)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------- linear layers


def linear_problem() -> str | None:
    """Why :class:`OneDNNLinear` would not be used in this process (None: it is)."""
    if os.environ.get(LINEAR_ENV, "").strip() == "0":
        return f"{LINEAR_ENV}=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not x86-64 ({platform.machine()})"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this PyTorch has no oneDNN linear kernel"
    return None


class OneDNNLinear(TorchFunctionMode):
    """While active (in this thread), ``F.linear`` on float32 CPU tensors without autograd runs oneDNN's kernel.

    x (..., in) -> (..., out), as ``F.linear``; any other call (other dtypes, devices, grad enabled, a weight
    that is a non-contiguous view, tensor subclasses, torch.compile tracing) is PyTorch's own.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        # plain tensors only: a tensor subclass (a host's quantized or patched weight) keeps its own dispatch
        if func is F.linear and all(t in _PLAIN for t in types):
            out = _onednn_linear(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _onednn_linear(input: torch.Tensor, weight: torch.Tensor,  # noqa: A002 - F.linear's parameter names
                   bias: torch.Tensor | None = None) -> torch.Tensor | None:
    x = input
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or (bias is not None and bias.dtype != torch.float32) or not weight.is_contiguous()
            or torch.is_grad_enabled() or x.numel() == 0 or torch.compiler.is_compiling()):
        return None
    rows = x.reshape(-1, x.shape[-1])  # (n, in)
    out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")  # (n, out)
    return out.view(*x.shape[:-1], weight.shape[0])


@contextlib.contextmanager
def cpu_inference(device: torch.device | str) -> Iterator[None]:
    """The CPU choices of the module doc for a block that runs networks on `device` (nothing elsewhere)."""
    on_cpu = torch.device(device).type == "cpu"
    with contextlib.ExitStack() as stack:
        stack.enter_context(steady_heap(device))
        if on_cpu and linear_problem() is None:
            stack.enter_context(OneDNNLinear())
        yield
