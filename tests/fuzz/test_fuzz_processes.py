"""Processes of a curation run: a hang becomes a timeout row (every engine) and the run goes on, a resumed run
retries timed-out videos only when asked, workers die with their parent (SIGKILL of the driver), SIGTERM works
like Ctrl-C, stale temp files of killed runs are removed (and nothing else). Hangs are made deterministic with
a test hook (a job that sleeps), never by timing luck; limits are 1 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfyui_svd_lab.svd_model import fsutil
from comfyui_svd_lab.svd_model.curation import engine, manifest, workers
from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig
from comfyui_svd_lab.svd_model.curation.synthetic import make_video

CONFIG = CurationConfig.from_dict({"text": False, "keyframe_max_side": 32, "split": {"min_seconds": 0.5},
                                   "video_timeout": 1.0})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("proc_videos")
    for i, name in enumerate(("a.mp4", "hang.mp4", "c.mp4")):
        make_video(root / name, shots=(20,), size=(64, 48), seed=i, gop=10)
    return root


def hang_on_hang(path: str, root: str):
    """Worker job (module level, so worker processes import it): sleeps 'forever' on hang.mp4."""
    if Path(path).name == "hang.mp4":
        time.sleep(3600)
    return workers.work(path, root)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state  # a zombie has ended


def test_local_engine_turns_a_hang_into_a_timeout_row(videos, tmp_path):
    jobs = list(engine.list_videos(videos).paths)
    start = time.monotonic()
    results = list(engine._run_processes(jobs, engine._Run(videos, CONFIG, tmp_path, 2), work=hang_on_hang))
    by_name = {Path(r.source).name: r for r in results}
    assert set(by_name) == {"a.mp4", "hang.mp4", "c.mp4"} and time.monotonic() - start < 60
    assert by_name["hang.mp4"].status == "error"
    assert by_name["hang.mp4"].rows[0]["error"].startswith("timed out after 1 s")
    assert by_name["a.mp4"].status == by_name["c.mp4"].status == "ok"


def _hanging_curate(release: threading.Event, original):
    def curate(path, *args, **kwargs):
        if Path(path).name == "hang.mp4":
            release.wait(30)  # the test's hook: a decoder that never returns (until the test ends)
            raise RuntimeError("released")
        return original(path, *args, **kwargs)
    return curate


@pytest.mark.parametrize("engine_name", ["thread", "inline"])
def test_timeout_rows_and_retry_only_when_asked(engine_name, videos, tmp_path, monkeypatch):
    release = threading.Event()
    original = engine.curate_video
    if engine_name == "inline":  # SIGALRM interrupts a sleeping main thread
        def curate(path, *args, **kwargs):
            if Path(path).name == "hang.mp4":
                time.sleep(30)
            return original(path, *args, **kwargs)
        monkeypatch.setattr(engine, "curate_video", curate)
    else:
        monkeypatch.setattr(engine, "curate_video", _hanging_curate(release, original))
    out = tmp_path / "out"
    try:
        summary = engine.run_curation(videos, out, CONFIG, engine=engine_name, workers=2)
    finally:
        release.set()
    assert summary.videos == 3 and summary.errors == 1
    rows = {Path(r["source"]).name: r for r in manifest.read_manifest(out).to_pylist()}
    assert rows["hang.mp4"]["status"] == "error" and rows["hang.mp4"]["error"].startswith("timed out after 1 s")
    monkeypatch.setattr(engine, "curate_video", original)
    again = engine.run_curation(videos, out, CONFIG, engine=engine_name, workers=2, resume=True)
    assert (again.videos, again.skipped) == (0, 3)  # the timed-out video stays an error row
    retried = engine.run_curation(videos, out, CONFIG, engine=engine_name, workers=2, resume=True,
                                  retry_timeouts=True)
    assert (retried.videos, retried.skipped, retried.errors) == (1, 2, 0)
    after = [r for r in manifest.read_manifest(out).to_pylist() if r["source"].endswith("hang.mp4")]
    assert after and all(r["status"] == "ok" for r in after)


def test_timeout_config_refuses_negative_and_nan():
    with pytest.raises(engine.ConfigError, match="video_timeout must be >= 0"):
        CurationConfig(video_timeout=-1.0)
    with pytest.raises(engine.ConfigError, match="config.video_timeout must be a finite number"):
        CurationConfig(video_timeout=float("nan"))


DRIVER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
from comfyui_svd_lab.svd_model.curation import workers
from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig
import {module} as helper


def main():
    from comfyui_svd_lab.svd_model.fsutil import sigterm_as_interrupt

    handler = sigterm_as_interrupt()
    if {sigterm!r}:
        handler.__enter__()
    pool = workers.WorkerPool(2, CurationConfig(), Path({out!r}), None)
    futures = [pool.submit(helper.hang_on_hang, Path("/x/hang.mp4"), Path("/x")) for _ in range(2)]
    deadline = time.monotonic() + 60
    while not pool.started and time.monotonic() < deadline:
        pool.poll()
        time.sleep(0.05)
    try:  # the test may send SIGTERM as soon as the line is out, even before print returns
        print(" ".join(str(p) for p in pool.executor._processes), flush=True)
        time.sleep(3600)
    except KeyboardInterrupt:
        pool.kill()
        print("interrupted", flush=True)
        sys.exit(130)


if __name__ == "__main__":  # worker processes import this module too
    main()
"""


def _run_driver(tmp_path: Path, sigterm: bool = False) -> tuple[subprocess.Popen, list[int]]:
    script = tmp_path / "driver.py"
    here = str(Path(__file__).parent)
    script.write_text(DRIVER.format(here=here, module=Path(__file__).stem, out=str(tmp_path), sigterm=sigterm))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    pids = [int(p) for p in line.split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids), line
    return proc, pids


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_the_driver_is_killed(tmp_path):
    proc, pids = _run_driver(tmp_path)
    proc.kill()  # SIGKILL: no cleanup code runs in the driver
    proc.wait(10)
    assert _wait_gone(pids) == [], "orphaned curation workers"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_is_an_interrupt_that_stops_the_workers(tmp_path):
    proc, pids = _run_driver(tmp_path, sigterm=True)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 130 and proc.stdout.read().strip() == "interrupted"
    assert _wait_gone(pids) == []


def test_sigterm_handler_raises_keyboard_interrupt_and_restores():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), fsutil.sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    old = time.time() - 3600
    keep = {
        f".clip.mp4.{alive}-0123abcd.part": b"x",  # a live writer's
        "clip.mp4": b"user file",
        ".clip.mp4.part": b"not our naming",
        f"notes.{dead}.1.tmp": b"no leading dot: not ours",
        f".x.{dead}-0123ABCD.part": b"upper-case hex: not ours",
    }
    stale = {f".clip.mp4.{dead}-0123abcd.part": b"x", f".manifest.json.{dead}.140.tmp": b"x"}
    (tmp_path / "sub").mkdir()
    for name, data in {**keep, **stale}.items():
        for folder in (tmp_path, tmp_path / "sub"):
            (folder / name).write_bytes(data)
            os.utime(folder / name, (old, old))
    fresh = tmp_path / f".new.mp4.{dead}-fedcba98.part"
    fresh.write_bytes(b"x")  # written after the run started: left alone
    (tmp_path / f".link.{dead}-00000000.part").symlink_to(tmp_path / "clip.mp4")
    removed = fsutil.remove_stale_temps(tmp_path, recursive=True, before=time.time() - 60)
    assert sorted(p.name for p in removed) == sorted([*stale, *stale])
    assert all((tmp_path / n).exists() and (tmp_path / "sub" / n).exists() for n in keep)
    assert fresh.exists() and (tmp_path / f".link.{dead}-00000000.part").is_symlink()
    assert fsutil.remove_stale_temps(tmp_path, kinds=("part",)) == [fresh]


def test_write_video_cleans_stale_parts_and_names_its_own_with_its_pid(tmp_path, monkeypatch):
    import numpy as np

    from comfyui_svd_lab.svd_model.media import write as videoio_write

    dead = _dead_pid()
    stale = tmp_path / f".old.mp4.{dead}-0123abcd.part"
    stale.write_bytes(b"left by a SIGKILLed run")
    seen = []
    real = videoio_write._write_pyav

    def spy(tmp, *args, **kwargs):
        seen.append(tmp.name)
        return real(tmp, *args, **kwargs)

    monkeypatch.setattr(videoio_write, "_write_pyav", spy)
    videoio_write.write_video(np.zeros((2, 16, 16, 3), np.uint8), tmp_path / "v.mp4", fps=8)
    assert not stale.exists() and (tmp_path / "v.mp4").is_file()
    assert fsutil.PART_RE.match(seen[0]) and f".{os.getpid()}-" in seen[0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
