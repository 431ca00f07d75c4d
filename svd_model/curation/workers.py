"""Worker processes and per-video time limits for the curation engines.

* Workers die with their parent: on Linux each worker asks the kernel for SIGKILL when its parent goes
  (``prctl(PR_SET_PDEATHSIG)``), and every worker runs a watchdog thread that exits the process once the driver
  (the process that started the run) is gone or the worker was re-parented, so a killed ``svd-lab curate``
  leaves no orphans on any platform.
* :class:`WorkerPool` is a process pool whose workers report when they *start* a video, so a per-video time
  limit is measured from the real start (not from the submission, nor including a worker's start-up); a video
  past its limit is stopped by killing the pool (a hung decoder cannot be interrupted otherwise).
* :func:`alarm` is the in-process variant (main thread only, SIGALRM), for the inline engine.

A timed-out video becomes an ``error`` row "timed out after N s" (:func:`timed_out_result`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fsutil import pid_alive

if TYPE_CHECKING:
    from .records import CurationConfig, VideoResult

# The pipeline (av, cv2, numpy, ...) is imported where a worker needs it, not with this module: the CLI imports
# this module first, to start the forkserver (start_server) before its own heavier imports.

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 0.5
TIMEOUT_PREFIX = "timed out after"
#: The engine names (``svd-lab curate --engine``, engine.run_curation's ``engine``), here so that the CLI lists
#: them without importing the engines.
ENGINES = ("local", "thread", "inline", "ray")


class VideoTimeout(BaseException):
    """Raised in the main thread by :func:`alarm` (a BaseException: per-video ``except Exception`` handlers
    must not turn it into an ordinary error)."""


def timeout_text(seconds: float) -> str:
    return f"{TIMEOUT_PREFIX} {seconds:g} s (the per-video time limit, config video_timeout / --video-timeout)"


def is_timeout(reason: str | None) -> bool:
    return bool(reason) and str(reason).startswith(TIMEOUT_PREFIX)


def timed_out_result(path: str | os.PathLike[str], root: str | os.PathLike[str], config: CurationConfig) -> VideoResult:
    from .records import VideoRef, VideoResult, status_record

    ref = VideoRef.of(path, root)
    rec = status_record(ref, "error", timeout_text(config.video_timeout), config.hash())
    return VideoResult(ref.video_id, ref.source, [rec.row], config.video_timeout, 0)


# --------------------------------------------------------------------------------------- parent death


def _set_pdeathsig() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError) as exc:  # pragma: no cover - musl without prctl, sandboxes
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)


def _watch(driver_pid: int, parent_pid: int) -> None:
    while True:
        time.sleep(WATCH_SECONDS)
        if os.getppid() != parent_pid or not pid_alive(driver_pid):
            os._exit(3)  # the run is gone: nobody will read this worker's results


def die_with_parent(driver_pid: int) -> None:
    """Make this (worker) process end when its parent or the run's driver process ``driver_pid`` ends."""
    parent = os.getppid()
    _set_pdeathsig()
    if os.getppid() != parent or not pid_alive(driver_pid):  # the parent died before prctl took effect
        os._exit(3)
    threading.Thread(target=_watch, args=(driver_pid, parent), name="svdlab-parent-watch", daemon=True).start()


# -------------------------------------------------------------------------------------- worker state

_WORKER: dict[str, Any] = {}


def init_worker(config: dict[str, Any], out_dir: str, registry: dict[str, Any] | None, driver_pid: int,
                started: Any = None) -> None:
    """Initializer of every curation worker process (and of Ray workers, without ``started``): runs once per
    process; the process then curates video after video with what it set up here (warm): one thread per library,
    the config, and the CLIP scorer and captioners when the config names them (loaded now, not per video).
    torch is imported only when a model needs it (its import is the largest part of a worker's start-up);
    ``OMP_NUM_THREADS=1`` keeps a later import single-threaded."""
    if driver_pid:
        die_with_parent(driver_pid)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker: the pool is the parallelism
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    from .captioner_registry import CaptionerRegistry
    from .records import CurationConfig

    cfg = CurationConfig.from_dict(config)
    if cfg.clip_checkpoint or cfg.captioners or "torch" in sys.modules:
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
    _WORKER["config"] = cfg
    _WORKER["out"] = out_dir
    _WORKER["registry"] = CaptionerRegistry.from_dict(registry) if registry else None
    _WORKER["started"] = started
    _WORKER["inits"] = _WORKER.get("inits", 0) + 1  # once per process (tests check the workers stay warm)
    if cfg.clip_checkpoint or cfg.captioners:
        from . import scoring

        try:  # load the models once now; a failure is reported per clip by the pipeline, as before
            scoring.get_models(cfg, _WORKER["registry"])
        except Exception as exc:  # noqa: BLE001 - the per-video path reports it with the video
            log.info("worker model preload failed (%s); the videos will report it", exc)


def work(path: str, root: str) -> VideoResult:
    """The default job: one video through the pipeline with the worker's config."""
    from .pipeline import curate_video

    return curate_video(path, root, _WORKER["config"], _WORKER["out"], registry=_WORKER.get("registry"))


def _job(fn: Callable[[str, str], VideoResult], path: str, root: str) -> VideoResult:
    started = _WORKER.get("started")
    if started is not None:
        started.put(path)
    return fn(path, root)


# ---------------------------------------------------------------------------------------- the pool


def mp_context() -> multiprocessing.context.BaseContext:
    """Worker processes never fork this (possibly threaded) process: a forkserver where the platform has one
    (a fresh server process imports this module and the pipeline once (worker_preload.py), then every worker,
    including replacements after a crash, forks from it), else spawn (each worker starts a fresh interpreter)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, f"{__package__}.worker_preload"])
        return ctx
    return multiprocessing.get_context("spawn")


def start_server() -> bool:
    """Start the forkserver of the local engine's workers now (see :func:`mp_context`); returns whether there is
    one. It imports the pipeline in its own process (about 0.3 s) while the caller goes on, e.g. with its own
    imports, so that a run's worker start-up overlaps the driver's instead of following it. Idempotent; the
    server ends with this process."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    mp_context()
    forkserver.ensure_running()
    return True


class WorkerPool:
    """A process pool of curation workers that report the start of each video (see the module docstring)."""

    def __init__(self, workers: int, config: CurationConfig, out: Path, registry: dict[str, Any] | None) -> None:
        ctx = mp_context()
        self._started_q = ctx.Queue()
        self.started: dict[str, float] = {}
        self.executor = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=init_worker,
            initargs=(config.to_dict(), str(out), registry, os.getpid(), self._started_q))

    def submit(self, fn: Callable[[str, str], VideoResult], path: Path, root: Path) -> cf.Future:
        return self.executor.submit(_job, fn, str(path), str(root))

    def poll(self) -> None:
        """Note the start time of the videos workers reported since the last call."""
        while True:
            try:
                path = self._started_q.get_nowait()
            except (queue_mod.Empty, OSError, ValueError, EOFError):
                return
            self.started.setdefault(path, time.monotonic())

    def overdue(self, paths: list[Path], limit: float) -> list[Path]:
        """Those of ``paths`` that started more than ``limit`` seconds ago (none when limit is 0)."""
        if not limit:
            return []
        self.poll()
        now = time.monotonic()
        return [p for p in paths if str(p) in self.started and now - self.started[str(p)] > limit]

    def kill(self) -> None:
        """Stop every worker now (SIGKILL) and drop queued work."""
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        for proc in processes:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                proc.kill()
        self.close()
        for proc in processes:
            with contextlib.suppress(OSError, AttributeError, ValueError, AssertionError):
                proc.join(timeout=5)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._started_q.close()
            self._started_q.cancel_join_thread()


def poll_interval(limit: float) -> float | None:
    """How long to wait for results between deadline checks (None: no limit, wait for a result)."""
    return None if not limit else min(0.25, max(0.02, limit / 8))


# ---------------------------------------------------------------------------------------- in-process


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`VideoTimeout` in the main thread after ``seconds`` (0, or another thread: no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise VideoTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
