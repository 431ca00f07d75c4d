"""cpu_runtime: the steady heap (big buffers reused inside, glibc's values back after) and the oneDNN linear route."""

from __future__ import annotations

import resource
import threading

import pytest
import torch
import torch.nn.functional as F

from comfyui_svd_lab.svd_model import cpu_runtime
from comfyui_svd_lab.svd_model.cpu_runtime import (
    HEAP_ENV,
    LINEAR_ENV,
    OneDNNLinear,
    cpu_inference,
    heap_problem,
    linear_problem,
    steady_heap,
)
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model

PAGE = resource.getpagesize()
# the (mmap, trim) thresholds steady_heap sets on entry and on exit
HOLD = (cpu_runtime._HOLD_MMAP, cpu_runtime._HOLD_TRIM)
GLIBC = (cpu_runtime._GLIBC_MMAP, cpu_runtime._GLIBC_TRIM)


def _conv_faults(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Minor page faults of one CPU convolution (oneDNN re-lays its weight out into a new buffer per call)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    F.conv2d(x, weight, padding=1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (HEAP_ENV, LINEAR_ENV, "LD_PRELOAD", *cpu_runtime._USER_TUNING):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_a_big_convolutions_weight_buffer_is_reused_inside() -> None:
    if heap_problem() is not None:
        pytest.skip(f"allocator not tunable here: {heap_problem()}")
    # the UNet's deepest 3x3 convolution: a 59 MB weight, above glibc's largest automatic mmap threshold
    x, weight = torch.randn(2, 1280, 4, 4), torch.randn(1280, 1280, 3, 3)
    pages = weight.nbytes // PAGE
    with torch.inference_mode():
        outside = min(_conv_faults(x, weight) for _ in range(2))
        with steady_heap("cpu") as tuned:
            assert tuned
            inside = min(_conv_faults(x, weight) for _ in range(3))
    if outside < pages // 2:
        pytest.skip(f"this oneDNN / allocator does not map the re-laid weight afresh ({outside} faults outside)")
    assert inside < pages // 10, f"{inside} page faults per convolution inside steady_heap ({outside} outside)"


@pytest.fixture
def set_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (mmap, trim) thresholds steady_heap sets, in order (it still sets them); skips where it cannot tune."""
    if heap_problem() is not None:
        pytest.skip(f"allocator not tunable here: {heap_problem()}")
    calls: list[tuple[int, int]] = []
    real_set = cpu_runtime._set
    monkeypatch.setattr(cpu_runtime, "_set", lambda m, t: calls.append((m, t)) or real_set(m, t))
    return calls


@pytest.mark.usefixtures("clean_env")
def test_nested_and_threaded_uses_restore_once_at_the_end(set_calls: list[tuple[int, int]]) -> None:
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
        assert set_calls == [HOLD], "an inner exit restored while others were inside"
        release.set()
        thread.join(5)
        assert set_calls == [HOLD]
    assert set_calls == [HOLD, GLIBC]
    assert cpu_runtime._depth == 0


@pytest.mark.usefixtures("clean_env")
def test_restored_when_the_block_raises(set_calls: list[tuple[int, int]]) -> None:
    with pytest.raises(KeyboardInterrupt), steady_heap("cpu"):
        raise KeyboardInterrupt
    assert set_calls[-1] == GLIBC and cpu_runtime._depth == 0


@pytest.mark.parametrize("env", [{HEAP_ENV: "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
                                 {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}])
@pytest.mark.usefixtures("clean_env")
def test_left_alone_when_the_user_tuned_or_disabled_it(monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cpu_runtime, "_set", lambda m, t: pytest.fail("mallopt called"))
    assert heap_problem() is not None
    with steady_heap("cpu") as tuned:
        assert not tuned


@pytest.mark.usefixtures("clean_env")
def test_left_alone_on_other_devices_and_other_allocators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_runtime, "_set", lambda m, t: pytest.fail("mallopt called"))
    with steady_heap("meta") as tuned:
        assert not tuned
    monkeypatch.setattr(cpu_runtime, "_glibc", lambda: None)
    assert heap_problem() == "not glibc (Linux) malloc"
    with steady_heap("cpu") as tuned:
        assert not tuned


# ------------------------------------------------------------------------------------------- oneDNN linear


@pytest.fixture
def onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Shapes of the calls that reached oneDNN's linear kernel."""
    if linear_problem() is not None:
        pytest.skip(f"oneDNN linear route not used here: {linear_problem()}")
    calls: list[tuple] = []
    real = torch.ops.mkldnn._linear_pointwise

    def counting(x, w, *rest):  # type: ignore[no-untyped-def]
        calls.append((tuple(x.shape), tuple(w.shape)))
        return real(x, w, *rest)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
    return calls


@pytest.mark.usefixtures("clean_env")
def test_float32_inference_linears_run_onednn_with_the_same_values(onednn_calls: list[tuple]) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 5, 64, generator=gen), torch.randn(48, 64, generator=gen), torch.randn(48, generator=gen)
    expected = F.linear(x, w, b)
    with torch.no_grad(), OneDNNLinear():
        out = F.linear(x, w, b)
        no_bias = F.linear(input=x, weight=w)  # keyword call, bias None
    assert onednn_calls == [((15, 64), (48, 64))] * 2
    assert out.shape == (3, 5, 48) and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(no_bias, F.linear(x, w), rtol=1e-5, atol=1e-5)


class _HostTensor(torch.Tensor):
    """Stands for a tensor subclass a host wraps weights in (quantized, patched)."""


@pytest.mark.usefixtures("clean_env")
def test_other_calls_stay_with_pytorch(onednn_calls: list[tuple]) -> None:
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(4, 16)
    with OneDNNLinear():
        F.linear(x, w).sum().backward()  # autograd on: PyTorch's kernel, gradients flow
        with torch.no_grad():
            F.linear(x.double(), w.double())  # float64
            F.linear(x, w.t().contiguous().t())  # weight a non-contiguous view
            F.linear(x[:0], w)  # empty
            F.linear(x, w.detach().as_subclass(_HostTensor))  # a host's tensor subclass keeps its own dispatch
    assert w.grad is not None and onednn_calls == []
    done = threading.Event()

    def elsewhere() -> None:  # the mode is this thread's: another thread's linears are untouched
        with torch.no_grad():
            F.linear(x, w)
        done.set()

    with torch.no_grad(), OneDNNLinear():
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(5)
    assert done.is_set() and onednn_calls == []


@pytest.mark.usefixtures("clean_env")
def test_the_unet_under_cpu_inference_matches_the_default_path(onednn_calls: list[tuple],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    unet = make_tiny_model(seed=3).unet
    cfg = unet.config
    gen = torch.Generator().manual_seed(1)
    frames, rows = 2, 4
    args = (torch.randn(rows, cfg.in_channels, 8, 8, generator=gen), torch.rand(rows, generator=gen),
            torch.randn(rows, 1, cfg.context_dim, generator=gen), torch.randn(rows, cfg.adm_in_channels, generator=gen),
            frames)
    with torch.no_grad():
        reference = unet(*args)
        with cpu_inference("cpu"):
            fast = unet(*args)
        assert onednn_calls, "no linear of the UNet reached oneDNN"
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
        monkeypatch.setenv(LINEAR_ENV, "0")  # switched off by the person running the process
        onednn_calls.clear()
        with cpu_inference("cpu"):
            unet(*args)
        assert onednn_calls == [] and linear_problem() == f"{LINEAR_ENV}=0"
        with cpu_inference("meta"):  # another device: nothing changes
            pass
