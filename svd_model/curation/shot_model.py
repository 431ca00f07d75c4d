"""Optional learned shot-boundary detector: a user-supplied ONNX network (TransNetV2-style) as a level of the cut
cascade, run on the thumbnails the annotator already decodes (no second decode). The classical cascade
(:mod:`.cuts`) stays the default; ``CutConfig.detector`` chooses ``"learned"`` or ``"cascade+learned"``.

**The network's contract** (TransNetV2, Souček & Lokoč 2020, and exports of it): one input of frames resized to
48 x 27 px (width x height), RGB, uint8 0..255 (float exports take the same 0..255 values), in windows of 100
frames; ``(batch, frames, 27, 48, 3)`` as the original models take it, ``(batch, 3, frames, 27, 48)`` in some
ports (both accepted; a fixed height, width or window length in the file is honoured). Outputs per frame: the
"single-frame transition" logit and optionally the "many-hot" logit (every frame of a transition),
``(batch, frames, 1)`` or ``(batch, frames)``: an output whose name contains ``many`` is the many-hot one, else
the order decides (torch.onnx.export names the outputs of TransNetV2's ``(logits, {"many_hot": ...})`` by
number, single-frame first). Probabilities are their sigmoid. The single-frame head marks the *last frame of the
old shot* for a hard cut (the middle of a gradual one); the many-hot head covers the old shot's last frame and the
transition's frames.

**Windows** (as the reference inference): the video is padded with ``context`` (25) copies of its first frame in
front and copies of its last frame behind; windows of ``window`` (100) frames advance by ``window - 2 * context``
(50) frames, and only the predictions of their middle frames are kept, so every frame is predicted with 25
frames of context on each side. Windows run as soon as their frames are decoded (up to 4 per call when the
batch size is free), so memory is bounded by a few windows of 48 x 27 thumbnails. The frames are the cascade's
own small Y, U, V images (about 48 px wide, coded orientation: a rotation flag is not applied), converted to RGB
(BT.601, video range) and stretched to the network's size. onnxruntime runs with the annotator's ``threads`` (1
per worker process by default; 0 = its own choice).

**Cuts** from the probabilities: each run of frames whose single-frame probability exceeds ``shot_threshold`` (0.5)
gives one cut at its highest frame ``p`` (score: that probability); runs closer than ``min_scene_s`` keep the higher
score. The transition is the many-hot run around ``p`` (above the threshold, at most ``max_transition_s``) minus the
old shot's last frame (none without a many-hot output). The kind follows its shape, as the clip splitter reads it:
``"hard"`` when no frame lies between the shots (``frame = end_frame = p + 1``, the first frame of the new shot, as
:class:`~.cuts.Cut` defines it), else ``"learned"`` (a transition of frames ``frame..end_frame`` whose type the
network does not tell). The learned detector is the cascade's level ``len(levels) + 1`` (``Cut.level``) and its
score a probability between ``shot_threshold`` and 1 (the cascade's are ratios of 2.5 and more). With
``"cascade+learned"`` the learned cuts that lie within ``min_scene_s`` of a cascade cut are dropped (the cascade's
cut, with its kind and span, is kept) and the others added.

**Files**: a user-supplied ``.onnx`` file, loaded from a configured models folder by name (:func:`find_shot_model`;
inside ComfyUI ``models/shot_detectors``), never downloaded. An ONNX file holds a graph of standard operators and
weights, no code; still, it must be a regular file of at most :data:`MAX_MODEL_BYTES`, is read into memory and
handed to onnxruntime as bytes (so no external-data file next to it is opened), its inputs and outputs are
checked (:func:`layout_of`) before anything runs, and only the CPU execution provider is used.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np

from ..errors import CheckpointError, ConfigError, InputError, ShapeError, shorten
from ..fsutil import stat_regular
from .cuts import CascadeDetector, CascadeFrames, Cut, CutConfig, _Event
from .transitions import GrowingArray

logger = logging.getLogger(__name__)

SUFFIX = ".onnx"
#: Largest model file read (TransNetV2 is about 30 MB).
MAX_MODEL_BYTES = 1 << 30
#: TransNetV2's frame size (height, width) and window, used where the file leaves a dimension free.
DEFAULT_SIZE = (27, 48)
DEFAULT_WINDOW = 100
#: Largest frame side a model may ask for: the annotator's thumbnails are about 48 px wide.
MAX_SIDE = 128
#: Windows per inference call when the model's batch size is free.
BATCH_WINDOWS = 4
#: Kind of a learned cut with frames between the shots (a learned cut without any is "hard").
LEARNED_KIND = "learned"
INSTALL_HINT = "pip install onnxruntime (or the pack's extra: pip install 'comfyui-svd-lab[onnx]')"


# ---------------------------------------------------------------------------------------------- files


def find_shot_model(name: str, folders: Sequence[str | os.PathLike[str]]) -> Path:
    """The absolute path of the ``.onnx`` file ``name`` (relative to a folder, e.g. ``transnetv2.onnx`` or
    ``sub/model.onnx``) in the first of ``folders`` that has it. ``name`` may not be absolute, contain ``..`` or a
    hidden part, or leave the folder by its spelling (a symlink placed in the folder by its owner is followed, as
    for other model files).

    Raises:
        ConfigError: ``name`` is empty, not a relative ``.onnx`` name, or no folder is configured.
        InputError: no folder has a file of that name.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("shot_model is empty: give the name of an .onnx file in the shot-detector folder")
    pure = PurePath(name.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise ConfigError(f"shot_model {shorten(name)} is a path: give a file name relative to the shot-detector "
                          "folder (models are loaded from that folder only)")
    if any(part in ("..", ".") or part.startswith(".") for part in pure.parts):
        raise ConfigError(f"shot_model {shorten(name)}: names may not contain '..' or hidden ('.') parts")
    if pure.suffix.lower() != SUFFIX:
        raise ConfigError(f"shot_model {shorten(name)} is not an {SUFFIX} file: export the network to ONNX")
    roots = [Path(f) for f in folders]
    if not roots:
        raise ConfigError("no shot-detector folder is configured: put the .onnx file into models/shot_detectors "
                          "(ComfyUI) or pass --shot-model-dir / set $SVD_LAB_SHOT_MODELS")
    for root in roots:
        path = root / pure
        base = os.path.normpath(os.path.abspath(root))
        if not os.path.normpath(os.path.abspath(path)).startswith(base.rstrip(os.sep) + os.sep):
            continue
        if path.is_file():
            return path.absolute()
    where = ", ".join(str(r) for r in roots)
    raise InputError(f"shot detector {shorten(name)} not found in {where}: put the .onnx file there (nothing is "
                     "downloaded)")


def _onnxruntime() -> Any:
    """The onnxruntime module, or a ConfigError saying how to install it (an optional dependency)."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"the learned shot detector needs onnxruntime, which is not installed: {INSTALL_HINT}. "
                          "Or use detector 'cascade' (the default)") from None
    return onnxruntime


# ---------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """How to feed and read a shot-detector network (from its declared inputs and outputs).

    ``channels_last``: input ``(batch, frames, height, width, 3)``, else ``(batch, 3, frames, height, width)``;
    ``dtype``: uint8 or a float type (values 0..255 either way); ``window`` frames per window, of which
    ``context`` on each side are context only; ``batch``: the fixed batch size, None = free; ``single`` /
    ``many``: the output names of the single-frame and many-hot logits (``many`` None = absent).
    """

    input: str
    channels_last: bool
    dtype: str
    height: int
    width: int
    window: int
    context: int
    batch: int | None
    single: str
    many: str | None

    @property
    def step(self) -> int:
        return self.window - 2 * self.context


_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}


def _dim(value: Any) -> int | None:
    """A declared dimension: its size, or None when it is free (a name, None, or <= 0)."""
    return int(value) if isinstance(value, int) and value > 0 else None


def layout_of(inputs: Sequence[tuple[str, Sequence[Any], str]], outputs: Sequence[tuple[str, Sequence[Any], str]],
              what: str = "shot detector") -> Layout:
    """Check a network's declared ``(name, shape, type)`` inputs and outputs (as onnxruntime lists them) against
    the shot-detector contract (module docstring); ShapeError / CheckpointError say what was found otherwise."""
    if len(inputs) != 1:
        found = ", ".join(f"{n} {list(s)}" for n, s, _ in inputs) or "none"
        raise ShapeError(f"{what} must have exactly one input (the frames), found {len(inputs)}: {found}")
    name, shape, kind = inputs[0]
    shape = list(shape)
    expected = "(batch, frames, 27, 48, 3) or (batch, 3, frames, 27, 48)"
    if len(shape) != 5:
        raise ShapeError(f"{what} input {name!r} has shape {shape}; a shot detector takes windows of frames "
                         f"{expected} (TransNetV2 layout)")
    dims = [_dim(d) for d in shape]
    if dims[4] == 3 or (dims[4] is None and dims[1] != 3):
        channels_last, (t, h, w) = True, dims[1:4]
    elif dims[1] == 3 or dims[1] is None:
        channels_last, (t, h, w) = False, dims[2:5]
    else:
        raise ShapeError(f"{what} input {name!r} has shape {shape}: no axis of 3 colour channels (first after the "
                         f"batch, or last); expected {expected}")
    if kind not in _DTYPES:
        raise ShapeError(f"{what} input {name!r} has type {kind}; expected uint8 or float frames (0..255)")
    h, w = h or DEFAULT_SIZE[0], w or DEFAULT_SIZE[1]
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ShapeError(f"{what} input {name!r} wants {w}x{h} frames; at most {MAX_SIDE} px per side are "
                         "supported (the cut detector's thumbnails are about 48 px wide; TransNetV2 uses 48x27)")
    window = t or DEFAULT_WINDOW
    context = window // 4
    if window < 4:
        raise ShapeError(f"{what} input {name!r} takes windows of {window} frames; at least 4 are needed")
    if not outputs:
        raise ShapeError(f"{what} has no output")
    for out_name, out_shape, out_kind in outputs:
        out_dims = [_dim(d) for d in out_shape]
        if out_kind not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
            raise ShapeError(f"{what} output {out_name!r} has type {out_kind}; expected float logits per frame")
        ok_rank = len(out_dims) == 2 or (len(out_dims) == 3 and out_dims[2] in (1, None))
        if not ok_rank or out_dims[1] not in (None, window):
            raise ShapeError(f"{what} output {out_name!r} has shape {list(out_shape)}; expected per-frame logits "
                             f"(batch, {window}, 1) or (batch, {window})")
    many = next((o[0] for o in outputs if "many" in o[0].lower()), None)
    single = next((o[0] for o in outputs if o[0] != many), None)
    if single is None:
        raise ShapeError(f"{what} has only a many-hot output ({many!r}); the single-frame output is needed")
    if many is None and len(outputs) > 1:
        many = outputs[1][0]
    return Layout(name, channels_last, _DTYPES[kind], h, w, window, context, _dim(shape[0]), single, many)


# ---------------------------------------------------------------------------------------------- the network


class ShotModel:
    """A loaded shot-detector network. :meth:`load` caches sessions per (file, size, mtime, threads)."""

    def __init__(self, path: Path, session: Any, layout: Layout) -> None:
        self.path, self.session, self.layout = path, session, layout

    @classmethod
    def load(cls, path: str | os.PathLike[str], threads: int = 1) -> ShotModel:
        """Load ``path`` (an .onnx file) with onnxruntime on the CPU, ``threads`` intra-op threads (0 = its
        default). Raises ConfigError (onnxruntime missing), CheckpointError (unreadable, too big, not ONNX),
        ShapeError (inputs / outputs not those of a shot detector)."""
        info = stat_regular(path, "shot detector", CheckpointError)
        return _load(str(path), info.st_size, info.st_mtime_ns, int(threads))

    def predict(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``windows`` uint8 (k, window, height, width, 3) RGB -> per-frame probabilities ``(single, many)``,
        float32 (k, window) each in 0..1 (``many`` None when the network has no many-hot output)."""
        lay = self.layout
        k = len(windows)
        batch = windows
        if lay.batch is not None and lay.batch != k:  # a fixed batch: fill up with copies of the last window
            batch = np.concatenate([windows, np.repeat(windows[-1:], lay.batch - k, 0)])[: lay.batch]
            if k > lay.batch:
                raise InputError(f"{k} windows for a network with a fixed batch of {lay.batch}")  # pragma: no cover
        x = batch if lay.channels_last else np.ascontiguousarray(batch.transpose(0, 4, 1, 2, 3))  # (b c t h w)
        x = x.astype(lay.dtype, copy=False)
        names = [lay.single] + ([lay.many] if lay.many else [])
        try:
            results = self.session.run(names, {lay.input: x})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own (pybind) exception types
            raise CheckpointError(f"shot detector {self.path.name} failed on a window of frames {list(x.shape)}: "
                                  f"{_first_line(exc)}") from None
        probs = []
        for name, value in zip(names, results, strict=True):
            value = np.asarray(value, np.float32)
            if value.ndim == 3 and value.shape[2] == 1:
                value = value[..., 0]
            if value.shape != (len(batch), lay.window):
                raise ShapeError(f"shot detector {self.path.name} output {name!r} has shape {list(value.shape)}; "
                                 f"expected ({len(batch)}, {lay.window}) or ({len(batch)}, {lay.window}, 1)")
            if not np.isfinite(value).all():
                raise CheckpointError(f"shot detector {self.path.name} output {name!r} is not finite (NaN / Inf)")
            probs.append(_sigmoid(value[:k]))
        return probs[0], probs[1] if len(probs) > 1 else None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # = 1 / (1 + e^-x), without overflow


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return shorten(text[0] if text else type(exc).__name__, 300)


@functools.lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int, threads: int) -> ShotModel:
    """One session per file version and thread count, reused across the videos a worker annotates."""
    ort = _onnxruntime()
    name = Path(path).name
    if not path.lower().endswith(SUFFIX):
        raise CheckpointError(f"shot detector {name} is not an {SUFFIX} file")
    if size == 0 or size > MAX_MODEL_BYTES:
        raise CheckpointError(f"shot detector {name} has {size} bytes; expected 1 byte to "
                              f"{MAX_MODEL_BYTES >> 20} MiB")
    with open(path, "rb") as handle:
        data = handle.read(MAX_MODEL_BYTES + 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: its errors come back as the exceptions reported below
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own (pybind) exception types
        external = any(k in str(exc).lower() for k in ("external", "model_path must not be empty"))
        hint = (" (its weights are in external data files, which are not supported: export them inside the .onnx "
                "file)" if external else "")
        raise CheckpointError(f"shot detector {name} is not a readable ONNX model{hint}: onnxruntime says "
                              f"{_first_line(exc)}") from None
    inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
    outputs = [(o.name, o.shape, o.type) for o in session.get_outputs()]
    layout = layout_of(inputs, outputs, f"shot detector {name}")
    logger.info("shot detector %s: input %s %s, window %d, outputs %s / %s", name, layout.input,
                "b t h w c" if layout.channels_last else "b c t h w", layout.window, layout.single, layout.many)
    return ShotModel(Path(path), session, layout)


# ---------------------------------------------------------------------------------------------- frames


#: BT.601 Y'CbCr -> R'G'B' (rows R, G, B; columns Y, Cb - 128, Cr - 128 after range expansion to 0..255).
_YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], np.float32)


def rgb_thumbnails(small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The annotator's small images -> the network's frames.

    ``small``: float32 (c, 3, h, w) Y, U, V planes as decoded (0..255, video ("limited") range, BT.601 matrix
    assumed, as FFmpeg's default conversion; a video without chroma has U = V = 128). Returns uint8
    (c, height, width, 3) RGB, ``size`` = (height, width), stretched (no crop), as TransNetV2's frames are scaled.

    NumPy and OpenCV, not kornia: on these (128, 3, 27, 48) chunks in the annotator's worker processes kornia's
    ycbcr_to_rgb + resize took ~0.8 s per chunk against ~10 ms here (torch's per-op overhead and thread pool
    competing with the decoders on busy cores), and the annotator stays free of torch.
    """
    c, _, h, w = small.shape
    y = (small[:, 0] - 16.0) * (255.0 / 219.0)  # limited -> full range
    chroma = (small[:, 1:] - 128.0) * (255.0 / 224.0)
    ycc = np.concatenate([y[:, None], chroma], 1).reshape(c, 3, h * w)
    rgb = np.clip(np.einsum("ij,cjp->cpi", _YCBCR_TO_RGB, ycc), 0, 255).reshape(c, h, w, 3)  # (c h w 3)
    if (h, w) != tuple(size):  # area averaging (downscales are the rule: ~48 px wide thumbnails to 48x27)
        rgb = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in rgb])
    return np.rint(rgb).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- streaming


class LearnedDetector:
    """Streams a video's small images through a :class:`ShotModel` (see the module docstring): :meth:`push`
    chunks, then :meth:`finish` for the cuts. ``final_before``: no cut found later starts before it."""

    def __init__(self, model: ShotModel, cfg: CutConfig, fps: float) -> None:
        self.model, self.cfg = model, cfg
        self.frames = CascadeFrames.of(cfg, fps)
        self.level = len(cfg.levels) + 1
        lay = model.layout
        self.per_call = lay.batch or BATCH_WINDOWS
        self.buffer = np.zeros((0, lay.height, lay.width, 3), np.uint8)  # padded frames not yet consumed
        self.single, self.many = GrowingArray(), GrowingArray()
        self.n = 0  # frames pushed
        self.scanned = 0  # frames whose runs are decided
        self.events: list[_Event] = []

    @property
    def latency(self) -> int:
        """Most frames pushed but not yet final (bounds the motion ring the annotator keeps)."""
        lay = self.model.layout
        return lay.window + self.per_call * lay.step + 2 * self.frames.span_max + self.frames.min_scene + 2

    @property
    def predicted(self) -> int:
        return self.single.n

    @property
    def final_before(self) -> int:
        return max(0, self.scanned - self.frames.span_max - 1)

    def push(self, small: np.ndarray) -> None:
        """Append ``small`` float32 (c, 3, h, w) YUV images of the next frames; run the windows that are full."""
        if len(small) == 0:
            return
        lay = self.model.layout
        rgb = rgb_thumbnails(small, (lay.height, lay.width))
        if self.n == 0:  # the first window is padded with copies of the first frame
            rgb = np.concatenate([np.repeat(rgb[:1], lay.context, 0), rgb])
        self.buffer = np.concatenate([self.buffer, rgb])
        self.n += len(small)
        self._run(final=False)
        self._scan(final=False)

    def finish(self, times: np.ndarray) -> list[Cut]:
        """Predict the last frames (padded with copies of the last one) and return the cuts."""
        lay = self.model.layout
        if self.n:
            missing = self.n - self.predicted
            windows = math.ceil(missing / lay.step) if missing > 0 else 0
            need = (windows - 1) * lay.step + lay.window if windows else 0
            if need > len(self.buffer):
                self.buffer = np.concatenate([self.buffer, np.repeat(self.buffer[-1:], need - len(self.buffer), 0)])
            self._run(final=True)
        self._scan(final=True)
        return self.cuts(times)

    def _run(self, final: bool) -> None:
        lay = self.model.layout
        while self.predicted < self.n:
            full = (len(self.buffer) - lay.window) // lay.step + 1 if len(self.buffer) >= lay.window else 0
            k = min(full, self.per_call)
            if k == 0 or (k < self.per_call and not final):
                return
            starts = np.arange(k) * lay.step
            windows = self.buffer[starts[:, None] + np.arange(lay.window)]  # (k window h w 3)
            single, many = self.model.predict(windows)
            keep = slice(lay.context, lay.context + lay.step)
            take = min(k * lay.step, self.n - self.predicted)
            self.single.extend(single[:, keep].reshape(-1)[:take])
            # without a many-hot head no transition span is known: every cut is a hard cut after its peak
            self.many.extend((many if many is not None else np.zeros_like(single))[:, keep].reshape(-1)[:take])
            self.buffer = self.buffer[k * lay.step :]

    def _scan(self, final: bool) -> None:
        """Decide the runs above the threshold that ended (or are longer than the longest transition)."""
        probs, n = self.single.view, self.predicted
        lo = self.scanned
        if n <= lo:
            return
        above = np.concatenate([[False], probs[lo:n] > self.cfg.shot_threshold, [False]])
        edges = np.flatnonzero(np.diff(above.astype(np.int8)))
        starts, ends = edges[0::2] + lo, edges[1::2] + lo - 1  # inclusive runs
        scanned = n
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            if b == n - 1 and not final and n - a <= self.frames.span_max:
                scanned = a  # the run may go on: decide it later
                break
            self._add(a + int(np.argmax(probs[a : b + 1])))
        self.scanned = scanned

    def _add(self, peak: int) -> None:
        """One cut at the peak frame ``peak`` (the old shot's last frame); its span from the many-hot run."""
        thr, span_max = self.cfg.shot_threshold, self.frames.span_max
        many = self.many.view
        a = b = peak
        if many[peak] > thr:  # the many-hot run through the peak: the old shot's last frame, then the transition
            while a > max(0, peak - span_max) and many[a - 1] > thr:
                a -= 1
            while b + 1 < len(many) and b < peak + span_max and many[b + 1] > thr:
                b += 1
        first = a + 1  # the old shot ends at a
        if first >= self.n or first < self.frames.min_scene:
            return  # no new shot after it, or a first shot shorter than min_scene
        kind = LEARNED_KIND if b > a else "hard"  # frames a + 1 .. b lie between the shots, or none
        event = _Event(first, max(first, b), kind, float(self.single.view[peak]), self.level, 0.0)
        last = self.events[-1] if self.events else None
        if last is not None and event.start - last.end - 1 < self.frames.min_scene:
            if event.score > last.score:
                self.events[-1] = event
            return
        self.events.append(event)

    def pending(self) -> list[_Event]:
        return list(self.events)

    def cuts(self, times: np.ndarray) -> list[Cut]:
        return [Cut(e.start, float(times[e.start]) if e.start < len(times) else float("nan"), e.kind,
                    round(e.score, 4), e.end, e.level, 0.0) for e in self.events]


def merge_cuts(cascade: Sequence[Cut], learned: Sequence[Cut], gap: int) -> list[Cut]:
    """The cascade's cuts plus the learned ones that lie more than ``gap`` frames from every cascade cut's span
    (those are the same boundary: the cascade's kind and span are kept), in frame order."""
    out = list(cascade)
    for cut in learned:
        if all(cut.frame - gap > c.end_frame or cut.end_frame + gap < c.frame for c in cascade):
            out.append(cut)
    return sorted(out, key=lambda c: c.frame)


class CombinedDetector:
    """The cascade and / or the learned detector behind the cascade's streaming interface (``push``,
    ``final_before``, ``pending``, ``finish``, ``ring_size``), as ``CutConfig.detector`` chooses."""

    def __init__(self, cascade: CascadeDetector, learned: LearnedDetector, use_cascade: bool, ring_extra: int):
        self.cascade, self.learned, self.use_cascade = cascade, learned, use_cascade
        self.ring_size = max(cascade.ring_size, learned.latency + ring_extra + 8)

    def push(self, small: np.ndarray) -> None:
        if self.use_cascade:
            self.cascade.push(small)
        self.learned.push(small)

    @property
    def final_before(self) -> int:
        fb = self.learned.final_before
        return min(fb, self.cascade.final_before) if self.use_cascade else fb

    def pending(self) -> list[Any]:
        events = [*(self.cascade.pending() if self.use_cascade else ()), *self.learned.pending()]
        return sorted(events, key=lambda e: e.start)

    def finish(self, times: np.ndarray) -> list[Cut]:
        learned = self.learned.finish(times)
        if not self.use_cascade:
            return learned
        return merge_cuts(self.cascade.finish(times), learned, self.learned.frames.min_scene)


def preload(cfg: CutConfig, threads: int = 1) -> None:
    """Load the network ``cfg`` names, if its detector uses one, before any video is curated: a missing
    onnxruntime or a wrong file is then one clear error instead of an error row per video (the load is cached,
    so the workers of this process reuse it)."""
    if cfg.detector != "cascade":
        ShotModel.load(cfg.shot_model, threads)


def make_detector(cfg: CutConfig, fps: float, shape: tuple[int, int, int], *, ring_extra: int = 64,
                  scan_every: int = 256, threads: int = 1) -> CascadeDetector | CombinedDetector:
    """The streaming cut detector ``cfg.detector`` names: the cascade alone (the default), the learned network
    alone, or both. ``shape``: the small images' (channels, height, width); ``threads``: onnxruntime threads."""
    cascade = CascadeDetector(cfg, fps, shape, ring_extra=ring_extra, scan_every=scan_every)
    if cfg.detector == "cascade":
        return cascade
    learned = LearnedDetector(ShotModel.load(cfg.shot_model, threads), cfg, fps)
    return CombinedDetector(cascade, learned, cfg.detector != "learned", ring_extra)
