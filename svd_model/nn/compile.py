"""Opt-in regional compilation of the VideoUNet (``torch.compile`` of its repeated blocks), with a clean fallback.

:func:`compile_unet` compiles every :class:`~.blocks.VideoResBlock` and :class:`~.transformer.SpatialVideoTransformer`
of a UNet in place, the way ``nn.Module.compile`` does (the module's ``_compiled_call_impl``): the modules, their
parameters and the state-dict keys stay what they were. Blocks of the same class share their ``forward`` code, so
TorchDynamo compiles each block *configuration* once (about a dozen for SVD-XT) instead of one big graph, and the
spatial and batch axes of the block input are marked dynamic so other resolutions reuse the compiled code
(compile time and speed: bench/compile_speed.py). Modes (:data:`COMPILE_MODES`):

* ``"off"``: eager (the default); also undoes an earlier compile.
* ``"regional"``: the blocks compiled with inductor (CUDA: Triton kernels; CPU: C++ through the system compiler).
* ``"regional+cudagraphs"``: inductor's ``"reduce-overhead"`` mode (CUDA graphs) on top; CUDA only (on another
  device it falls back to ``"regional"`` with a warning), and refused for a UNet that streams its blocks
  (:mod:`.streaming`): a CUDA graph replays fixed weight addresses, streaming brings new copies every call.

Composition (each checked by tests on the CPU):

* Parameters are read when a compiled block runs (Dynamo lifts them to graph inputs), so weights changed in place
  or replaced (a LoRA merged in place, ComfyUI's ``ModelPatcher`` replacing Parameters, block streaming swapping
  ``_parameters`` entries for device copies) are the ones used. Replacing a Parameter by a tensor of another kind
  (a plain tensor, an inference tensor) costs one recompilation per kind, not one per patch; so does a cast-on-use
  layer whose ``comfy_cast_weights`` flag changes (fp8 storage, ComfyUI's partial loading).
* The streaming hooks sit on the UNet's blocks (``UNetBlock``), outside the compiled regions.
* A copy of the UNet (``copy.deepcopy``, e.g. the structural copy of ``apply_lora``) is eager: torch drops
  ``_compiled_call_impl`` from copies. The copy keeps the request, and :func:`ensure_compiled` (cheap when there
  is nothing to do) compiles it again; the compiled code is reused, the copy's blocks have the same structure.

Fallback: where compiling cannot work (:func:`compile_unavailable`: no TorchDynamo for this Python / platform, no
Triton for CUDA, e.g. Windows without ``triton-windows``, no C++ compiler for the CPU) or where compiling raises
(at ``torch.compile`` or, since compilation is lazy, at the first call of a block), one warning is logged with the
cause and the UNet runs eager from then on; the call that failed is rerun eager, so a run never fails because of
compilation. Out-of-memory errors and the pack's own errors are raised as they are.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError, SVDError
from . import streaming
from .blocks import VideoResBlock
from .transformer import SpatialVideoTransformer

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "regional", "regional+cudagraphs")
#: The repeated blocks compiled as regions.
REGION_TYPES: tuple[type[nn.Module], ...] = (VideoResBlock, SpatialVideoTransformer)
#: Dynamo's per-function recompile limit is raised to at least this: every block configuration (channels,
#: kind of weight tensor) is one cache entry of its class's forward; SVD-XT has about 12 + 3, twice with streaming.
RECOMPILE_LIMIT = 64
#: Axes of a block's input x ((b t), c, h, w) compiled as dynamic: rows, height, width.
DYNAMIC_AXES = (0, 2, 3)

_MARK = "_svd_lab_compile"  # the request, kept on the UNet (survives copies, unlike the compiled calls)
_FAILED = "_svd_lab_compile_failed"  # why compiling failed; ensure_compiled does not retry then
_warned: set[str] = set()


@dataclass(frozen=True)
class CompileSettings:
    """What :func:`compile_unet` was asked for. backend: a ``torch.compile`` backend name ("inductor"; tests use
    "eager" / "aot_eager", which compile in a fraction of the time). dynamic: mark :data:`DYNAMIC_AXES` dynamic."""

    mode: str = "regional"
    backend: str | Callable[..., object] = "inductor"
    dynamic: bool = True


@dataclass(frozen=True)
class CompileReport:
    """What :func:`compile_unet` did. requested: the mode asked for; mode: the mode in effect ("off" after a
    fallback); regions: blocks compiled; message: why the mode differs from the request, else ""."""

    requested: str
    mode: str
    regions: int
    backend: str
    message: str = ""

    def summary(self) -> str:
        if self.mode == "off":
            return f"compile off{': ' + self.message if self.message else ''}"
        note = f" ({self.message})" if self.message else ""
        return f"compile {self.mode}: {self.regions} blocks with {self.backend}{note}"


@dataclass
class _State:
    """Shared by the compiled calls of one UNet: the first failure turns them all back to eager."""

    settings: CompileSettings
    unet: weakref.ReferenceType[nn.Module]
    regions: list[weakref.ReferenceType[nn.Module]] = field(default_factory=list)
    handles: list[RemovableHandle] = field(default_factory=list)
    failure: str | None = None

    def fail(self, exc: BaseException) -> None:
        self.failure = _describe(exc)
        warn_once(f"torch.compile failed, running eager: {self.failure}")
        unet = self.unet()
        if unet is not None:
            unet.__dict__[_FAILED] = self.failure
        self.release()

    def release(self) -> None:
        for ref in self.regions:
            module = ref()
            if module is not None and isinstance(module.__dict__.get("_compiled_call_impl"), _CompiledCall):
                module._compiled_call_impl = None
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _describe(exc: BaseException) -> str:
    """The exception and its root cause (Dynamo wraps a backend's error), one line each."""
    def line(e: BaseException) -> str:
        text = next((t.strip() for t in str(e).splitlines() if t.strip()), "")
        return f"{type(e).__name__}: {text}" if text else type(e).__name__

    root = exc
    for _ in range(8):
        inner = getattr(root, "inner_exception", None) or root.__cause__ or root.__context__
        if not isinstance(inner, BaseException) or inner is root:
            break
        root = inner
    return line(exc) if root is exc else f"{line(exc)} (caused by {line(root)})"


class _CompiledCall:
    """A block's ``_compiled_call_impl``: the compiled ``_call_impl``, the dynamic marks, the eager fallback."""

    def __init__(self, module: nn.Module, compiled: Callable[..., object], state: _State) -> None:
        self.module = weakref.ref(module)
        self.compiled = compiled
        self.state = state

    def __call__(self, *args: object, **kwargs: object) -> object:
        module = self.module()
        assert module is not None  # the module calls this
        if self.state.failure is not None:
            return module._call_impl(*args, **kwargs)
        x = args[0] if args else None
        if self.state.settings.dynamic and isinstance(x, torch.Tensor) and x.ndim == 4:
            for axis in DYNAMIC_AXES:
                torch._dynamo.maybe_mark_dynamic(x, axis)
        try:
            return self.compiled(*args, **kwargs)
        except (torch.OutOfMemoryError, SVDError):
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure: warn once, rerun eager (module doc)
            self.state.fail(exc)
            return module._call_impl(*args, **kwargs)


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def compile_unavailable(device: torch.device, backend: str | Callable[..., object] = "inductor") -> str | None:
    """Why `backend` cannot compile for `device` here (a sentence naming the fix), or None when it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs torch 2.0 or later)"
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]} on {sys.platform} with torch " \
               f"{torch.__version__}"
    if backend != "inductor":
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            fix = "pip install triton-windows" if sys.platform == "win32" else "install triton"
            return f"inductor needs Triton for CUDA and it is not installed ({fix})"
    elif device.type == "cpu":
        names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++", "cl"]
        if not any(shutil.which(name) for name in names):
            return "inductor needs a C++ compiler for the CPU and none was found (install g++ / clang, or MSVC " \
                   "on Windows, or set CXX)"
    return None


def regions(unet: nn.Module) -> list[nn.Module]:
    """The blocks :func:`compile_unet` compiles, in module order."""
    return [m for m in unet.modules() if isinstance(m, REGION_TYPES)]


def _compute_device(unet: nn.Module) -> torch.device:
    streamer = streaming.streamer_of(unet)
    if streamer is not None:
        return streamer.device
    param = next(unet.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < RECOMPILE_LIMIT:
        log.info("raising torch._dynamo.config.%s from %d to %d (one entry per block configuration)", name,
                 getattr(config, name), RECOMPILE_LIMIT)
        setattr(config, name, RECOMPILE_LIMIT)


def _uncompile(unet: nn.Module) -> None:
    for module in regions(unet):
        if isinstance(module.__dict__.get("_compiled_call_impl"), _CompiledCall):
            module._compiled_call_impl.state.release()
    for module in regions(unet):
        module._compiled_call_impl = None


def compile_unet(unet: nn.Module, mode: str = "regional", *, backend: str | Callable[..., object] = "inductor",
                 dynamic: bool = True, device: torch.device | str | None = None) -> CompileReport:
    """Compile `unet`'s repeated blocks in place (see the module doc); `mode` one of :data:`COMPILE_MODES`.

    `device`: where it computes (default: the streaming target, else its weights' device). Calling again
    replaces the earlier compile ("off" undoes it). Never raises for a compiler problem (a warning and eager
    instead, in the report); raises ConfigError for an unknown mode and for CUDA graphs on a streamed UNet.
    """
    name = backend if isinstance(backend, str) else getattr(backend, "__name__", "custom")
    if mode not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    _uncompile(unet)
    unet.__dict__.pop(_MARK, None)
    unet.__dict__.pop(_FAILED, None)
    if mode == "off":
        return CompileReport(mode, "off", 0, name)
    device = torch.device(device) if device is not None else _compute_device(unet)
    if mode == "regional+cudagraphs" and streaming.streamer_of(unet) is not None:
        raise ConfigError("compile mode 'regional+cudagraphs' cannot run a UNet that streams its blocks (memory "
                          "low_vram): CUDA graphs replay fixed weight addresses; use compile 'regional'")
    settings = CompileSettings(mode, backend, dynamic)
    unet.__dict__[_MARK] = settings
    message = ""
    if mode == "regional+cudagraphs" and device.type != "cuda":
        message = f"CUDA graphs need a CUDA device, not {device.type}: compiled without them"
        warn_once(message)
        mode = "regional"
    problem = compile_unavailable(device, backend)
    if problem is not None:
        warn_once(f"torch.compile unavailable, running eager: {problem}")
        unet.__dict__[_FAILED] = problem
        return CompileReport(settings.mode, "off", 0, name, problem)
    _raise_recompile_limit()
    state = _State(settings, weakref.ref(unet))
    options: dict[str, object] = {"backend": backend}
    if mode == "regional+cudagraphs":
        options["mode"] = "reduce-overhead"
        # one CUDA-graph step per UNet call: the outputs of the previous call's graphs may then be overwritten
        state.handles.append(unet.register_forward_pre_hook(lambda *_: torch.compiler.cudagraph_mark_step_begin()))
    blocks = regions(unet)
    try:
        for module in blocks:
            module._compiled_call_impl = _CompiledCall(module, torch.compile(module._call_impl, **options), state)
            state.regions.append(weakref.ref(module))
    except Exception as exc:  # noqa: BLE001 - torch.compile itself refused (an old torch, a bad backend)
        state.fail(exc)
        return CompileReport(settings.mode, "off", 0, name, state.failure or "")
    log.info("compiled %d UNet blocks (%s, backend %s, dynamic %s)", len(blocks), mode, name, dynamic)
    return CompileReport(settings.mode, mode, len(blocks), name, message)


def compile_request(unet: nn.Module) -> CompileSettings | None:
    """The compile settings `unet` (or the network it was copied from) was compiled with, or None."""
    return unet.__dict__.get(_MARK)


def compiled_regions(unet: nn.Module) -> int:
    """How many of `unet`'s blocks run compiled now (0 when off, after a fallback, or in an uncompiled copy)."""
    return sum(isinstance(m.__dict__.get("_compiled_call_impl"), _CompiledCall) and
               m._compiled_call_impl.state.failure is None for m in regions(unet))


def ensure_compiled(unet: nn.Module) -> CompileReport | None:
    """Compile `unet` again as requested when it carries a request but runs eager (a copy, e.g. after
    ``apply_lora``); None when there is nothing to do (no request, already compiled, or an earlier failure)."""
    settings = compile_request(unet)
    if settings is None or _FAILED in unet.__dict__:
        return None
    calls = [m.__dict__.get("_compiled_call_impl") for m in regions(unet)]
    if any(isinstance(c, _CompiledCall) for c in calls):
        return None
    return compile_unet(unet, settings.mode, backend=settings.backend, dynamic=settings.dynamic)
