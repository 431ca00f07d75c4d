"""Keep large CPU buffers in the heap while networks run on the CPU (glibc only), then give the memory back.

Why. oneDNN's CPU convolution re-lays out its weight into a fresh buffer on every call. For the UNet's 1280-channel
3x3 convolutions that buffer is 59 MB (118 MB for the 2560-input ones), above glibc's largest automatic mmap
threshold (32 MiB on 64-bit), so every call maps new pages, the kernel zero-fills them on first touch (about
15 000 page faults per call) and unmaps them again when the call returns. On small CPU videos, where the
convolutions themselves are short, that churn is a fifth of the UNet's time (2-core CPU, 4 frames 128x128:
about 4.3 s -> 3.4 s per step; ``bench/generation.py``). The values do not change: only where the bytes live.

What. :func:`steady_heap` raises glibc's mmap and trim thresholds for its duration, so such buffers come from the
heap and are reused call after call. On exit it sets them to glibc's own steady-state values (the 32 MiB mmap
threshold its dynamic rule climbs to, trim at twice that) and calls ``malloc_trim(0)``, which hands the freed
heap memory back to the system, except what glibc keeps anyway (a free top chunk below the trim threshold, at most
64 MiB per arena). Nested and concurrent uses share one tuning (a counter under a lock); the last one out restores.
The main thread gains most: glibc serves other threads (a ComfyUI server's prompt worker) from arenas of at most
64 MiB, so there the 59 MB buffers are held but the 118 MB ones are still mapped per call.

When not. It does nothing (and says so through its value) on a non-CPU device, off Linux/glibc, when the user
tuned the allocator already (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``, or another
malloc in ``LD_PRELOAD`` such as jemalloc or tcmalloc), or when the environment variable ``SVD_LAB_STEADY_HEAP``
is ``0`` (set by the person running the process, never by a workflow).
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

__all__ = ["ENV_VAR", "steady_heap", "tuning_problem"]

log = logging.getLogger(__name__)

#: Environment variable: "0" turns the tuning off for the process.
ENV_VAR = "SVD_LAB_STEADY_HEAP"

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


def tuning_problem() -> str | None:
    """Why :func:`steady_heap` would leave the allocator alone in this process (None: it tunes it)."""
    if os.environ.get(ENV_VAR, "").strip() == "0":
        return f"{ENV_VAR}=0"
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
    """Hold large buffers in the heap while the block runs networks on `device` (see the module doc).

    Yields True when the allocator is tuned for the block, False when it is left alone (a non-CPU device, or
    :func:`tuning_problem`). Values computed inside are unaffected either way.
    """
    global _depth
    if torch.device(device).type != "cpu" or tuning_problem() is not None:
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
