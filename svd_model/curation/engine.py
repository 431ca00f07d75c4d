"""Running :func:`pipeline.curate_video` over many files, writing the manifest as results arrive.

Engines (all feed the same :class:`~.manifest.ManifestWriter` in the driver, so resume works identically):

* ``"local"``: a process pool (forkserver, else spawn: never a fork of this process), one single-threaded
  decode per process. A worker that dies
  (e.g. a decoder crash) breaks the pool: the videos that were in flight are re-run one at a time in a fresh
  one-process pool, and the one that kills it again becomes an ``error`` row.
* ``"thread"``: a thread pool in this process (PyAV and OpenCV release the GIL). The choice inside ComfyUI,
  where the pack cannot be imported by name in a child process.
* ``"inline"``: one video after the other in this process (debugging, tiny inputs).
* ``"ray"``: one Ray actor per worker (``num_cpus=1``), started once and kept warm; rows come back to the driver
  as JSON text.

Resume: videos whose video_id is in the completion log (and whose part exists) are skipped. A progress
callback runs after every finished video; an exception from it (ComfyUI's interrupt) stops the run after
the finished videos are flushed, so the manifest stays resumable.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
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
from ..fsutil import remove_stale_temps, write_text_atomic
from . import workers as workers_mod
from .captioner_registry import CaptionerRegistry, default_registry
from .dedup import DEDUP_JSON
from .manifest import FILTERED_NAME, MANIFEST_DIR, TIMINGS_NAME, ManifestWriter, completed, crash_point
from .pipeline import STAGES, curate_video
from .records import KEYFRAME_SOURCES, CurationConfig, VideoRef, VideoResult, error_text, status_record

log = logging.getLogger(__name__)

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
    #: per-stage seconds summed over the finished videos (VideoResult.timings; see pipeline.STAGES)
    timings: dict[str, float] = field(default_factory=dict)

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
    #: seconds per worker stage, summed over the workers (pipeline.STAGES order)
    timings: dict[str, float] = field(default_factory=dict)
    #: the driver's own seconds: startup (run start until the first video could start: pool / Ray start-up,
    #: estimated as the first result's arrival minus its own time), manifest (writing parts and the log)
    driver: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = (f"{self.videos} video(s) curated ({self.skipped} already done), {self.clips} clip(s), "
                 f"{self.errors} error(s), {self.empty} without clips; {self.frames} frames in {self.seconds:.1f} s "
                 f"({fps:.0f} frames/s, engine {self.engine}, {self.workers} worker(s)); manifest in {self.out_dir}")
        return lines + ("\n" + self.timings_text() if self.timings or self.driver else "")

    def timings_text(self) -> str:
        """``stage seconds (summed over 2 workers): decode 9.81 (61%), cuts 1.20 (7%), ...; driver: startup ..``"""
        total = sum(self.timings.values()) or 1.0
        stages = ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in self.timings.items())
        driver = ", ".join(f"{k} {v:.2f}" for k, v in self.driver.items())
        return f"stage seconds (summed over {self.workers} worker(s)): {stages or 'none'}; driver: {driver or 'none'}"


def write_timings(summary: RunSummary, **driver: float) -> Path:
    """OUT/timings.json: the run's per-stage seconds (``driver`` adds the caller's stages, e.g. filter, report),
    read by the HTML report's timing table."""
    data = {"engine": summary.engine, "workers": summary.workers, "videos": summary.videos, "frames": summary.frames,
            "wall_seconds": summary.seconds, "stages": _ordered(summary.timings),
            "driver": {**summary.driver, **{k: float(v) for k, v in driver.items()}}}
    path = summary.out_dir / TIMINGS_NAME
    write_text_atomic(json.dumps(data, indent=1), path)
    return path


def _ordered(timings: dict[str, float]) -> dict[str, float]:
    """The pipeline's stage order first, then any other stage."""
    return {k: timings[k] for k in (*STAGES, *sorted(set(timings) - set(STAGES))) if k in timings}


# ------------------------------------------------------------------------------------------ workers

_WORKER = workers_mod._WORKER  # noqa: SLF001 - the per-process state of a worker, shared with workers.py


def _init_worker(config: dict[str, Any], out_dir: str, registry: dict[str, Any] | None = None,
                 driver_pid: int = 0) -> None:
    workers_mod.init_worker(config, out_dir, registry, driver_pid)


class _RayCurator:
    """A Ray actor (``ray.remote(num_cpus=1)`` at run time): one warm curation worker, initialised once (config,
    models), then video after video; results travel as JSON text (nothing is unpickled in the driver)."""

    def __init__(self, config: dict[str, Any], out_dir: str, registry: dict[str, Any] | None = None) -> None:
        _init_worker(config, out_dir, registry)

    def curate(self, path: str, root: str) -> str:
        with workers_mod.alarm(_WORKER["config"].video_timeout):  # sync actors run tasks in the main thread
            try:
                result = workers_mod.work(path, root)
            except workers_mod.VideoTimeout:
                result = workers_mod.timed_out_result(path, root, _WORKER["config"])
        return _to_json(result)


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


@dataclass(frozen=True)
class _Run:
    """What every engine gets besides the jobs."""

    root: Path
    config: CurationConfig
    out: Path
    workers: int
    registry: CaptionerRegistry | None = None
    #: what an engine measured about itself (e.g. ray_init seconds); joins the run's driver timings
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def registry_dict(self) -> dict[str, Any] | None:
        return self.registry.to_dict() if self.registry is not None else None


def _run_inline(jobs: Sequence[Path], run: _Run) -> Iterator[VideoResult]:
    """One after the other; the time limit is a SIGALRM when this is the main thread (else none)."""
    for path in jobs:
        try:
            with workers_mod.alarm(run.config.video_timeout):
                result = curate_video(path, run.root, run.config, run.out, registry=run.registry)
        except workers_mod.VideoTimeout:
            log.warning("%s: %s", path, workers_mod.timeout_text(run.config.video_timeout))
            result = workers_mod.timed_out_result(path, run.root, run.config)
        yield result


def _run_threads(jobs: Sequence[Path], run: _Run) -> Iterator[VideoResult]:
    """A thread pool. A video past its time limit becomes a timeout row; its thread cannot be stopped, so it is
    left to finish in the background and a fresh pool takes the remaining videos."""
    limit = run.config.video_timeout
    started: dict[Path, float] = {}

    def job(path: Path) -> VideoResult:
        started[path] = time.monotonic()
        return curate_video(path, run.root, run.config, run.out, registry=run.registry)

    pool = cf.ThreadPoolExecutor(max_workers=run.workers, thread_name_prefix="curate")
    queue: deque[Path] = deque(jobs)
    running: dict[cf.Future, Path] = {}
    try:
        while queue or running:
            while queue and len(running) < 2 * run.workers:
                path = queue.popleft()
                running[pool.submit(job, path)] = path
            finished, _ = cf.wait(running, timeout=workers_mod.poll_interval(limit), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                yield future.result()
            now = time.monotonic()
            late = [f for f, p in running.items() if limit and p in started and now - started[p] > limit]
            for future in late:
                path = running.pop(future)
                log.warning("%s: %s; its thread keeps running in the background", path,
                            workers_mod.timeout_text(limit))
                yield workers_mod.timed_out_result(path, run.root, run.config)
            if late:  # the hung threads hold their slots: queued videos go to a fresh pool
                queue.extendleft(reversed([p for f, p in running.items() if p not in started]))
                for future in [f for f, p in running.items() if p not in started]:
                    future.cancel()
                    running.pop(future)
                pool.shutdown(wait=False, cancel_futures=True)
                pool = cf.ThreadPoolExecutor(max_workers=run.workers, thread_name_prefix="curate")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _run_processes(jobs: Sequence[Path], run: _Run,
                   work: Callable[[str, str], VideoResult] = workers_mod.work) -> Iterator[VideoResult]:
    """A process pool (workers die with the driver). ``work(path, root)`` runs in the workers: a module-level
    function, pickled by reference, so a worker imports its module before its first video; the default lives in
    workers.py, not here (this module imports pyarrow for the manifest); tests pass one that crashes or hangs. A
    worker that dies breaks the pool: the videos in flight are re-run one at a time, and the one that kills its
    worker again becomes an error row. A video past its time limit becomes a timeout row; the pool is killed (the
    only way to stop a hung decoder) and the other videos in flight start again in a fresh one."""
    limit = run.config.video_timeout
    queue: deque[Path] = deque(jobs)
    while queue:
        pool = workers_mod.WorkerPool(run.workers, run.config, run.out, run.registry_dict)
        running: dict[cf.Future, Path] = {}
        done = False
        try:
            while queue or running:
                while queue and len(running) < 2 * run.workers:
                    path = queue.popleft()
                    running[pool.submit(work, path, run.root)] = path
                finished, _ = cf.wait(running, timeout=workers_mod.poll_interval(limit),
                                      return_when=cf.FIRST_COMPLETED)
                broken = []
                for future in finished:
                    path = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken.append(path)
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. MemoryError in the worker, unpicklable result
                        result = _crashed(path, run.root, run.config, error_text(exc))
                    yield result
                if broken:
                    suspects = broken + list(running.values())
                    running.clear()
                    pool.kill()
                    log.warning("a curation worker died; re-running %d video(s) one at a time", len(suspects))
                    yield from _isolate(suspects, run, work)
                    break  # a fresh pool for the rest of the queue
                late = pool.overdue(list(running.values()), limit)
                if late:
                    for path in late:
                        log.warning("%s: %s", path, workers_mod.timeout_text(limit))
                        yield workers_mod.timed_out_result(path, run.root, run.config)
                    queue.extendleft(reversed([p for p in running.values() if p not in late]))
                    running.clear()
                    pool.kill()
                    break
            else:
                done = True
        finally:
            pool.close() if done else pool.kill()


def _isolate(paths: Sequence[Path], run: _Run, work: Callable[[str, str], VideoResult]) -> Iterator[VideoResult]:
    """Each suspect alone in a one-process pool: the one that kills its worker becomes an error row.
    When the first three all die, the workers cannot run at all: stop instead of failing every file."""
    limit = run.config.video_timeout
    deaths = 0
    pool = None
    try:
        for i, path in enumerate(paths):
            pool = pool or workers_mod.WorkerPool(1, run.config, run.out, run.registry_dict)
            future = pool.submit(work, path, run.root)
            while True:
                try:
                    result = future.result(timeout=workers_mod.poll_interval(limit))
                    break
                except cf.TimeoutError:
                    if pool.overdue([path], limit):
                        pool.kill()
                        pool = None
                        result = workers_mod.timed_out_result(path, run.root, run.config)
                        break
                except BrokenProcessPool:
                    pool.kill()
                    pool = None
                    deaths += 1
                    if deaths == i + 1 == 3:
                        raise SVDError("curation worker processes die even on one file at a time (three in a "
                                       "row): they cannot start here; try --engine thread") from None
                    result = _crashed(path, run.root, run.config, "the worker process died, e.g. a decoder crash")
                    break
                except Exception as exc:  # noqa: BLE001
                    result = _crashed(path, run.root, run.config, error_text(exc))
                    break
            yield result
    finally:
        if pool is not None:
            pool.kill()


def _run_ray(jobs: Sequence[Path], run: _Run) -> Iterator[VideoResult]:
    """Ray: one actor per worker (at most the cluster's CPUs), each started once and kept warm, two videos in
    flight per actor so none waits for the driver. An actor that dies (e.g. a decoder crash) costs its video an
    error row and is replaced. A local cluster this run starts is shut down when the run ends or is interrupted
    (SIGTERM is an interrupt in `svd-lab curate`); Ray's own processes fate-share with the driver when it is
    killed. (Ray Data's map ran one task at a time on 2 CPUs here and added ~6 s of start-up.)"""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("engine 'ray' needs Ray: pip install 'ray' (or use --engine local)") from exc

    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    if started_here:
        ray.init(num_cpus=run.workers, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level=logging.WARNING)
    run.stats["ray_init"] = time.perf_counter() - t0
    curator = ray.remote(num_cpus=1)(_RayCurator)
    args = (run.config.to_dict(), str(run.out), run.registry_dict)
    cpus = int(ray.cluster_resources().get("CPU", run.workers))
    actors = [curator.remote(*args) for _ in range(max(1, min(run.workers, cpus, len(jobs))))]
    queue: deque[Path] = deque(jobs)
    pending: dict[Any, tuple[Any, Path]] = {}

    def feed(actor: Any) -> None:
        if queue:
            path = queue.popleft()
            pending[actor.curate.remote(str(path), str(run.root))] = (actor, path)

    try:
        for actor in actors:
            feed(actor)
            feed(actor)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, path = pending.pop(ref)
            try:
                result = _from_json(ray.get(ref))
            except ray.exceptions.RayActorError:
                result = _crashed(path, run.root, run.config, "the Ray worker died, e.g. a decoder crash")
                lost = [(r, p) for r, (a, p) in pending.items() if a is actor]
                for r, p in lost:  # the dead actor's other video goes to its replacement
                    pending.pop(r)
                    queue.appendleft(p)
                actor = curator.remote(*args)
                actors.append(actor)
                feed(actor)
            except ray.exceptions.RayTaskError as exc:
                result = _crashed(path, run.root, run.config, error_text(getattr(exc, "cause", None) or exc))
            feed(actor)
            yield result
    except BaseException:
        if started_here:
            ray.shutdown()  # stops the workers of an interrupted run now, not when the driver exits
        raise
    finally:
        if ray.is_initialized():
            for actor in actors:
                ray.kill(actor)  # their CPUs go back to a cluster this run did not start


_ENGINES: dict[str, Callable[..., Iterator[VideoResult]]] = {
    "local": _run_processes, "thread": _run_threads, "inline": _run_inline, "ray": _run_ray}
#: The engine names (``svd-lab curate --engine``, :func:`run_curation`'s ``engine``), the keys of _ENGINES.
ENGINES = workers_mod.ENGINES


# --------------------------------------------------------------------------------------------- driver


def _check_config(out: Path, config: CurationConfig, resume: bool) -> None:
    """Store the config at the first run; a resumed run must use the same one (rows would not match)."""
    path = out / CONFIG_NAME
    data = {"config_hash": config.hash(), "config": config.to_dict()}
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if resume and stored.get("config_hash") != data["config_hash"]:
            was = (stored.get("config") or {}).get("keyframe_source", "exact")
            hint = (f" (it used keyframe_source={was!r}: add --set keyframe_source={was})"
                    if was in KEYFRAME_SOURCES and was != config.keyframe_source
                    and config.replace(keyframe_source=was).hash()
                    == stored.get("config_hash") else "")
            raise ConfigError(f"{out} was curated with another configuration (hash {stored.get('config_hash')}, now "
                              f"{data['config_hash']}){hint}; resume with the same settings, or use a new --out folder")
    write_text_atomic(json.dumps(data, indent=1), path)


def prepare_output(out_dir: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> Path:
    """Create OUT; refuse to mix with an existing manifest unless resuming, or wipe it when overwriting."""
    out = Path(out_dir)
    manifest_dir = out / MANIFEST_DIR
    if manifest_dir.is_dir() and any(manifest_dir.iterdir()):
        if overwrite:
            for item in [*manifest_dir.iterdir(), out / FILTERED_NAME, out / "filter.json", out / "report.html",
                         out / TIMINGS_NAME, out / DEDUP_JSON]:  # the old run's dedup setting and pairs too
                item.unlink(missing_ok=True)
        elif not resume:
            raise ConfigError(f"{out} already holds a curation manifest: pass resume (--resume) to continue it, or "
                              "overwrite (--overwrite) to start again, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_curation(videos: VideoList | str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 config: CurationConfig | None = None, *, engine: str = "local", workers: int = 0,
                 resume: bool = False, overwrite: bool = False, videos_per_part: int = 32,
                 flush_seconds: float = 30.0, progress: Callable[[RunProgress], None] | None = None,
                 registry: CaptionerRegistry | None = None, retry_timeouts: bool = False) -> RunSummary:
    """Curate every video into ``out_dir/manifest`` (see manifest.py); returns the run's counts.

    workers: processes / threads / Ray CPUs (0 = all cores). The run continues past bad files; an exception
    raised by ``progress`` stops it after flushing what finished (the folder can then be resumed).
    registry: where the config's captioner names are looked up (default: captioner_registry.default_registry()).
    retry_timeouts: a resumed run also re-runs the videos that timed out before (else they stay error rows).
    """
    if engine not in _ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    config = config or CurationConfig()
    if CurationConfig.from_dict(config.to_dict()) != config:  # workers rebuild it from this dict
        raise ConfigError(f"the curation config does not survive a JSON round trip: {config}")
    if config.captioners:
        registry = registry if registry is not None else default_registry()
        for i, name in enumerate(config.captioners):  # unknown names fail now, not once per clip
            registry.get(name, f"config.captioners[{i}]")
    videos = videos if isinstance(videos, VideoList) else list_videos(videos)
    workers = workers or os.cpu_count() or 1
    run_start = time.time()
    out = prepare_output(out_dir, resume=resume, overwrite=overwrite)
    remove_stale_temps(out, recursive=True, before=run_start)  # temp files of killed runs (dead pids)
    _check_config(out, config, resume)
    crash_point("config-written")  # test hook (environment only)
    writer = ManifestWriter(out, worker=engine, videos_per_part=videos_per_part, flush_seconds=flush_seconds)
    done = completed(writer.dir)
    seen: set[str] = set()
    jobs = []
    for path in videos.paths:
        vid = VideoRef.of(path, videos.root).video_id
        redo = retry_timeouts and vid in done and done[vid].timed_out
        if (vid not in done or redo) and vid not in seen:
            seen.add(vid)
            jobs.append(path)
    state = RunProgress(total=len(jobs), skipped=len(videos.paths) - len(jobs))
    if progress is not None:
        progress(state)
    run = _Run(videos.root, config, out, workers, registry)
    results = _ENGINES[engine](jobs, run) if jobs else iter(())
    driver = {"startup": 0.0, "manifest": 0.0}
    try:
        for result in results:
            crash_point("result-received")  # test hook (environment only)
            if not state.done:  # the first result: what came before its own work was start-up
                driver["startup"] = max(0.0, state.elapsed - result.seconds)
            t0 = time.perf_counter()
            writer.add(result.video_id, result.source, result.rows)
            driver["manifest"] += time.perf_counter() - t0
            for stage, seconds in (result.timings or {}).items():
                state.timings[stage] = state.timings.get(stage, 0.0) + float(seconds)
            state.done += 1
            state.clips += result.clips
            state.errors += result.status == "error"
            state.empty += result.status == "empty"
            state.frames += result.frames
            state.last = result
            if progress is not None:
                progress(state)
    finally:
        t0 = time.perf_counter()
        writer.close()
        driver["manifest"] += time.perf_counter() - t0
        close = getattr(results, "close", None)
        if close is not None:
            close()
    summary = RunSummary(out, state.done, state.skipped, state.clips, state.errors, state.empty, state.frames,
                         state.elapsed, engine, workers, _ordered(state.timings), {**driver, **run.stats})
    write_timings(summary)
    return summary
