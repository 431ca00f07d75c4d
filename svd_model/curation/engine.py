"""Running :func:`pipeline.curate_video` over many files, writing the manifest as results arrive.

Engines (all feed the same :class:`~.manifest.ManifestWriter` in the driver, so resume works identically):

* ``"local"``: a process pool (forkserver, else spawn: never a fork of this process), one single-threaded
  decode per process. A worker that dies
  (e.g. a decoder crash) breaks the pool: the videos that were in flight are re-run one at a time in a fresh
  one-process pool, and the one that kills it again becomes an ``error`` row.
* ``"thread"``: a thread pool in this process (PyAV and OpenCV release the GIL). The choice inside ComfyUI,
  where the pack cannot be imported by name in a child process.
* ``"inline"``: one video after the other in this process (debugging, tiny inputs).
* ``"ray"``: ``ray.data.from_items(jobs).map(curate, num_cpus=1)``; rows come back to the driver.

Resume: videos whose video_id is in the completion log (and whose part exists) are skipped. A progress
callback runs after every finished video; an exception from it (ComfyUI's interrupt) stops the run after
the finished videos are flushed, so the manifest stays resumable.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, SVDError
from ..fsutil import write_text_atomic
from .manifest import FILTERED_NAME, MANIFEST_DIR, ManifestWriter, completed
from .pipeline import CurationConfig, VideoRef, VideoResult, curate_video, error_text, status_record

log = logging.getLogger(__name__)

ENGINES = ("local", "thread", "inline", "ray")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
                    ".flv", ".wmv", ".3gp", ".ogv", ".vob", ".mxf", ".gif")
CONFIG_NAME = "curation_config.json"


@dataclass(frozen=True)
class VideoList:
    """Files to curate and the folder their video ids are relative to. ``ignored``: extension -> count."""

    root: Path
    paths: tuple[Path, ...]
    ignored: tuple[tuple[str, int], ...] = ()

    def __len__(self) -> int:
        return len(self.paths)


def list_videos(source: str | os.PathLike[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> VideoList:
    """A folder (recursive; files with other extensions and hidden files are skipped and counted) or a text
    file with one path per line (relative to the list's folder; every entry is kept, so a missing or
    unsupported file becomes an error row; '#' starts a comment)."""
    path = Path(source)
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    if path.is_dir():
        files, ignored = [], Counter()
        for item in sorted(path.rglob("*")):
            rel = item.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or not item.is_file():
                continue
            if item.suffix.lower() in exts:
                files.append(item)
            else:
                ignored[item.suffix.lower() or "(none)"] += 1
        if ignored:
            log.info("%s: skipped %d file(s) with other extensions: %s", path, sum(ignored.values()), dict(ignored))
        return VideoList(path, tuple(files), tuple(sorted(ignored.items())))
    if path.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        files = [Path(ln) if Path(ln).is_absolute() else path.parent / ln for ln in lines if ln]
        return VideoList(path.parent, tuple(dict.fromkeys(files)))
    raise InputError(f"input {str(path)!r} is neither a folder nor a list file (one video path per line)")


@dataclass
class RunProgress:
    """Counters after each finished video (the progress callback's argument)."""

    total: int
    done: int = 0
    skipped: int = 0
    clips: int = 0
    errors: int = 0
    empty: int = 0
    frames: int = 0
    started: float = field(default_factory=time.monotonic)
    last: VideoResult | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, width: int = 24) -> str:
        """``curate |#####-----| 3/6 videos  17 clips  1 error  412 frames/s  ETA 0:12``."""
        filled = width * self.done // max(self.total, 1)
        rate = self.frames / self.elapsed if self.elapsed > 0 else 0.0
        eta = self.elapsed / self.done * (self.total - self.done) if self.done else 0.0
        errors = f"  {self.errors} error{'s' if self.errors != 1 else ''}" if self.errors else ""
        return (f"curate |{'#' * filled}{'-' * (width - filled)}| {self.done}/{self.total} videos  {self.clips} clips"
                f"{errors}  {rate:.0f} frames/s  ETA {int(eta // 60)}:{int(eta % 60):02d}")


@dataclass(frozen=True)
class RunSummary:
    out_dir: Path
    videos: int
    skipped: int
    clips: int
    errors: int
    empty: int
    frames: int
    seconds: float
    engine: str
    workers: int

    def text(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.videos} video(s) curated ({self.skipped} already done), {self.clips} clip(s), "
                f"{self.errors} error(s), {self.empty} without clips; {self.frames} frames in {self.seconds:.1f} s "
                f"({fps:.0f} frames/s, engine {self.engine}, {self.workers} worker(s)); manifest in {self.out_dir}")


# ------------------------------------------------------------------------------------------ workers

_WORKER: dict[str, Any] = {}


def _init_worker(config: dict[str, Any], out_dir: str) -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _WORKER["config"] = CurationConfig.from_dict(config)
    _WORKER["out"] = out_dir


def _work(path: str, root: str) -> VideoResult:
    return curate_video(path, root, _WORKER["config"], _WORKER["out"])


def _ray_map(item: dict[str, Any], *, config: dict[str, Any], out_dir: str) -> dict[str, Any]:
    if "config" not in _WORKER:
        _init_worker(config, out_dir)
    result = _work(item["path"], item["root"])
    return {"video_id": result.video_id, "payload": _to_json(result)}


def _to_json(result: VideoResult) -> str:
    """A VideoResult as JSON text (plain data between Ray workers and the driver: nothing is unpickled)."""
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"manifest value of type {type(value).__name__} is not plain data")

    return json.dumps(dataclasses.asdict(result), default=plain)


def _from_json(text: str) -> VideoResult:
    return VideoResult(**json.loads(text))


def _crashed(path: Path, root: Path, config: CurationConfig, why: str) -> VideoResult:
    ref = VideoRef.of(path, root)
    rec = status_record(ref, "error", f"the worker failed on this file ({why})", config.hash())
    return VideoResult(ref.video_id, ref.source, [rec.row])


def _run_inline(jobs: Sequence[Path], root: Path, config: CurationConfig, out: Path, _: int) -> Iterator[VideoResult]:
    for path in jobs:
        yield curate_video(path, root, config, out)


def _run_threads(jobs: Sequence[Path], root: Path, config: CurationConfig, out: Path,
                 workers: int) -> Iterator[VideoResult]:
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="curate")
    try:
        yield from _drain(pool, deque(jobs), workers, lambda p: pool.submit(curate_video, p, root, config, out))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _drain(pool: cf.Executor, queue: deque[Path], workers: int,
           submit: Callable[[Path], cf.Future]) -> Iterator[VideoResult]:
    """Keep 2 x workers videos in flight; yield results as they finish."""
    running: dict[cf.Future, Path] = {}
    while queue or running:
        while queue and len(running) < 2 * workers:
            path = queue.popleft()
            running[submit(path)] = path
        finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for future in finished:
            running.pop(future)
            yield future.result()


def _mp_context() -> multiprocessing.context.BaseContext:
    """Worker processes never fork this (possibly threaded) process: a forkserver where the platform has one
    (a fresh server process imports this module once, then every worker, including replacements after a
    crash, forks from it), else spawn (each worker starts a fresh interpreter)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _process_pool(workers: int, config: CurationConfig, out: Path) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), initializer=_init_worker,
                                  initargs=(config.to_dict(), str(out)))


def _run_processes(jobs: Sequence[Path], root: Path, config: CurationConfig, out: Path, workers: int,
                   work: Callable[[str, str], VideoResult] = _work) -> Iterator[VideoResult]:
    """``work(path, root)`` runs in the workers (a module-level function; tests pass one that crashes)."""
    queue: deque[Path] = deque(jobs)
    while queue:
        pool = _process_pool(workers, config, out)
        running: dict[cf.Future, Path] = {}
        try:
            while queue or running:
                while queue and len(running) < 2 * workers:
                    path = queue.popleft()
                    running[pool.submit(work, str(path), str(root))] = path
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                broken = []
                for future in finished:
                    path = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken.append(path)
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. MemoryError in the worker, unpicklable result
                        result = _crashed(path, root, config, error_text(exc))
                    yield result
                if broken:
                    suspects = broken + list(running)
                    running.clear()
                    log.warning("a curation worker died; re-running %d video(s) one at a time", len(suspects))
                    yield from _isolate(suspects, root, config, out, work)
                    break  # a fresh pool for the rest of the queue
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _isolate(paths: Sequence[Path], root: Path, config: CurationConfig, out: Path,
             work: Callable[[str, str], VideoResult]) -> Iterator[VideoResult]:
    """Each suspect alone in a one-process pool: the one that kills its worker becomes an error row.
    When the first three all die, the workers cannot run at all: stop instead of failing every file."""
    deaths = 0
    pool = None
    try:
        for i, path in enumerate(paths):
            pool = pool or _process_pool(1, config, out)
            try:
                result = pool.submit(work, str(path), str(root)).result()
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
                deaths += 1
                if deaths == i + 1 == 3:
                    raise SVDError("curation worker processes die even on one file at a time (three in a row): "
                                   "they cannot start here; try --engine thread") from None
                result = _crashed(path, root, config, "the worker process died, e.g. a decoder crash")
            except Exception as exc:  # noqa: BLE001
                result = _crashed(path, root, config, error_text(exc))
            yield result
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _run_ray(jobs: Sequence[Path], root: Path, config: CurationConfig, out: Path,
             workers: int) -> Iterator[VideoResult]:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("engine 'ray' needs Ray Data: pip install 'ray[data]' (or use --engine local)") from exc
    import functools

    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    for name in ("enable_progress_bars", "enable_operator_progress_bars"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)
    items = [{"path": str(p), "root": str(root)} for p in jobs]
    fn = functools.partial(_ray_map, config=config.to_dict(), out_dir=str(out))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 50_000))).map(fn, num_cpus=1)
    for row in dataset.iter_rows():
        yield _from_json(row["payload"])


_ENGINES: dict[str, Callable[..., Iterator[VideoResult]]] = {
    "local": _run_processes, "thread": _run_threads, "inline": _run_inline, "ray": _run_ray}


# --------------------------------------------------------------------------------------------- driver


def _check_config(out: Path, config: CurationConfig, resume: bool) -> None:
    """Store the config at the first run; a resumed run must use the same one (rows would not match)."""
    path = out / CONFIG_NAME
    data = {"config_hash": config.hash(), "config": config.to_dict()}
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if resume and stored.get("config_hash") != data["config_hash"]:
            raise ConfigError(f"{out} was curated with another configuration (hash {stored.get('config_hash')}, now "
                              f"{data['config_hash']}); resume with the same settings, or use a new --out folder")
    write_text_atomic(json.dumps(data, indent=1), path)


def prepare_output(out_dir: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> Path:
    """Create OUT; refuse to mix with an existing manifest unless resuming, or wipe it when overwriting."""
    out = Path(out_dir)
    manifest_dir = out / MANIFEST_DIR
    if manifest_dir.is_dir() and any(manifest_dir.iterdir()):
        if overwrite:
            for item in [*manifest_dir.iterdir(), out / FILTERED_NAME, out / "filter.json", out / "report.html"]:
                item.unlink(missing_ok=True)
        elif not resume:
            raise ConfigError(f"{out} already holds a curation manifest: pass resume (--resume) to continue it, or "
                              "overwrite (--overwrite) to start again, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_curation(videos: VideoList | str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 config: CurationConfig | None = None, *, engine: str = "local", workers: int = 0,
                 resume: bool = False, overwrite: bool = False, videos_per_part: int = 32,
                 flush_seconds: float = 30.0, progress: Callable[[RunProgress], None] | None = None) -> RunSummary:
    """Curate every video into ``out_dir/manifest`` (see manifest.py); returns the run's counts.

    workers: processes / threads / Ray CPUs (0 = all cores). The run continues past bad files; an exception
    raised by ``progress`` stops it after flushing what finished (the folder can then be resumed).
    """
    if engine not in _ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    config = config or CurationConfig()
    if CurationConfig.from_dict(config.to_dict()) != config:  # workers rebuild it from this dict
        raise ConfigError(f"the curation config does not survive a JSON round trip: {config}")
    videos = videos if isinstance(videos, VideoList) else list_videos(videos)
    workers = workers or os.cpu_count() or 1
    out = prepare_output(out_dir, resume=resume, overwrite=overwrite)
    _check_config(out, config, resume)
    writer = ManifestWriter(out, worker=engine, videos_per_part=videos_per_part, flush_seconds=flush_seconds)
    done = completed(writer.dir)
    seen: set[str] = set()
    jobs = []
    for path in videos.paths:
        vid = VideoRef.of(path, videos.root).video_id
        if vid not in done and vid not in seen:
            seen.add(vid)
            jobs.append(path)
    state = RunProgress(total=len(jobs), skipped=len(videos.paths) - len(jobs))
    if progress is not None:
        progress(state)
    results = _ENGINES[engine](jobs, videos.root, config, out, workers) if jobs else iter(())
    try:
        for result in results:
            writer.add(result.video_id, result.source, result.rows)
            state.done += 1
            state.clips += result.clips
            state.errors += result.status == "error"
            state.empty += result.status == "empty"
            state.frames += result.frames
            state.last = result
            if progress is not None:
                progress(state)
    finally:
        writer.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()
    return RunSummary(out, state.done, state.skipped, state.clips, state.errors, state.empty, state.frames,
                      state.elapsed, engine, workers)
