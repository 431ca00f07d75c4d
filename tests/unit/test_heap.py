"""steady_heap: large CPU buffers are reused inside it (no page faults), glibc's values come back after it."""

from __future__ import annotations

import resource
import threading

import pytest
import torch

from comfyui_svd_lab.svd_model import heap
from comfyui_svd_lab.svd_model.heap import ENV_VAR, steady_heap, tuning_problem

PAGE = resource.getpagesize()
BIG = 64 * 2**20  # above glibc's largest automatic mmap threshold (32 MiB): mapped afresh per allocation by default


def _faults_of_second_allocation() -> int:
    """Minor page faults of filling a freshly allocated BIG buffer, after one of the same size was freed."""
    torch.empty(BIG, dtype=torch.uint8).fill_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG, dtype=torch.uint8).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_VAR, "LD_PRELOAD", *heap._USER_TUNING):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_big_buffers_are_reused_inside_and_mapped_again_after() -> None:
    if tuning_problem() is not None:
        pytest.skip(f"allocator not tunable here: {tuning_problem()}")
    pages = BIG // PAGE
    with torch.inference_mode(), steady_heap("cpu") as tuned:
        assert tuned
        inside = _faults_of_second_allocation()
    after = _faults_of_second_allocation()
    assert inside < pages // 10, f"{inside} page faults for a reused {BIG >> 20} MiB buffer inside steady_heap"
    # restored to glibc's 32 MiB threshold: a 64 MiB buffer is a fresh mapping again, every page faults in
    assert after > pages // 2, f"only {after} of {pages} pages faulted after steady_heap: thresholds not restored"


@pytest.mark.usefixtures("clean_env")
def test_nested_and_threaded_uses_restore_once_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    if tuning_problem() is not None:
        pytest.skip(f"allocator not tunable here: {tuning_problem()}")
    calls: list[tuple[int, int]] = []
    real_set = heap._set
    monkeypatch.setattr(heap, "_set", lambda m, t: calls.append((m, t)) or real_set(m, t))
    inner_started, release = threading.Event(), threading.Event()

    def other() -> None:
        with steady_heap("cpu"):
            inner_started.set()
            release.wait(5)

    with steady_heap("cpu"):
        thread = threading.Thread(target=other)
        thread.start()
        assert inner_started.wait(5)
        with steady_heap("cpu"):
            pass
        assert calls == [(heap._HOLD_MMAP, heap._HOLD_TRIM)], "an inner exit restored while others were inside"
        release.set()
        thread.join(5)
        assert calls == [(heap._HOLD_MMAP, heap._HOLD_TRIM)]
    assert calls == [(heap._HOLD_MMAP, heap._HOLD_TRIM), (heap._GLIBC_MMAP, heap._GLIBC_TRIM)]
    assert heap._depth == 0


@pytest.mark.usefixtures("clean_env")
def test_restored_when_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    if tuning_problem() is not None:
        pytest.skip(f"allocator not tunable here: {tuning_problem()}")
    calls: list[tuple[int, int]] = []
    real_set = heap._set
    monkeypatch.setattr(heap, "_set", lambda m, t: calls.append((m, t)) or real_set(m, t))
    with pytest.raises(KeyboardInterrupt), steady_heap("cpu"):
        raise KeyboardInterrupt
    assert calls[-1] == (heap._GLIBC_MMAP, heap._GLIBC_TRIM) and heap._depth == 0


@pytest.mark.parametrize("env", [{ENV_VAR: "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
                                 {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}])
@pytest.mark.usefixtures("clean_env")
def test_left_alone_when_the_user_tuned_or_disabled_it(monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(heap, "_set", lambda m, t: pytest.fail("mallopt called"))
    assert tuning_problem() is not None
    with steady_heap("cpu") as tuned:
        assert not tuned


@pytest.mark.usefixtures("clean_env")
def test_left_alone_on_other_devices_and_other_allocators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_set", lambda m, t: pytest.fail("mallopt called"))
    with steady_heap("meta") as tuned:
        assert not tuned
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    assert tuning_problem() == "not glibc (Linux) malloc"
    with steady_heap("cpu") as tuned:
        assert not tuned
