"""Regional compilation (svd_model.nn.compile): same output as eager, no recompilation for a repeated shape or another
resolution, weights read at run time (streaming, in-place and replaced parameters, fp8 storage), copies, fallbacks.

Most tests compile with a counting backend that runs the captured graphs as they are (TorchDynamo's capture and the
compiled-call path are what they test, in seconds); one slow test and one gpu test compile with inductor.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.nn import compile as compile_module
from comfyui_svd_lab.svd_model.nn import streaming
from comfyui_svd_lab.svd_model.nn.blocks import VideoResBlock
from comfyui_svd_lab.svd_model.nn.cast import convert, store_fp8
from comfyui_svd_lab.svd_model.nn.compile import (
    compile_request,
    compile_unet,
    compiled_regions,
    ensure_compiled,
    regions,
)
from comfyui_svd_lab.svd_model.nn.transformer import SpatialVideoTransformer
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, randomize


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them unchanged."""

    __name__ = "counting"

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward

    def __deepcopy__(self, memo: dict) -> CountingBackend:
        return self  # a copied UNet's request names the same backend (and counter)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    compile_module._warned.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def base_unet() -> nn.Module:
    return make_tiny_model().unet


@pytest.fixture
def unet(base_unet: nn.Module) -> nn.Module:
    return copy.deepcopy(base_unet)


class Pair(nn.Module):
    """Blocks of both compiled classes, as in a UNet level (most tests: two graphs to capture, not nine)."""

    def __init__(self) -> None:
        super().__init__()
        self.res = VideoResBlock(64, 256, 64)
        self.attn = SpatialVideoTransformer(64, 1, 64, 64)
        self.res2 = VideoResBlock(64, 256, 64)  # the same configuration as `res`: shares its compiled code

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        indicator = x.new_zeros(x.shape[0] // frames, frames)
        x = self.attn(self.res(x, emb, frames, indicator), context, frames, indicator)
        return self.res2(x, emb, frames, indicator)


@pytest.fixture
def pair() -> Pair:
    return randomize(convert(Pair()), seed=0).eval()


def _pair_inputs(h: int = 8, w: int = 8, frames: int = 3) -> tuple:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(frames, 64, h, w, generator=g), torch.randn(frames, 256, generator=g),
            torch.randn(frames, 1, 64, generator=g), frames)


def _inputs(unet: nn.Module, h: int = 16, w: int = 16, frames: int = 3, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    return (torch.randn(frames, c.in_channels, h, w, generator=g), torch.rand(frames, generator=g),
            torch.randn(frames, 1, c.context_dim, generator=g), torch.randn(frames, c.adm_in_channels, generator=g),
            frames)


def _run(net: nn.Module, args: tuple) -> torch.Tensor:
    with torch.no_grad():
        return net(*args)


def test_compiled_matches_eager_and_does_not_recompile(pair: Pair) -> None:
    args, other = _pair_inputs(), _pair_inputs(16, 24)
    expected, expected_other = _run(pair, args), _run(pair, other)
    backend = CountingBackend()
    report = compile_unet(pair, "regional", backend=backend)
    assert report.mode == "regional" and report.regions == 3
    assert sorted(pair.state_dict()) == sorted(Pair().state_dict())  # keys unchanged
    torch.testing.assert_close(_run(pair, args), expected, rtol=1e-5, atol=1e-5)
    assert backend.graphs == 2  # res2 reuses res's compiled code
    torch.testing.assert_close(_run(pair, args), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_run(pair, other), expected_other, rtol=1e-5, atol=1e-5)
    assert backend.graphs == 2  # the same shape again, another resolution: no recompilation
    assert compiled_regions(pair) == 3


@pytest.mark.slow
def test_whole_unet_compiled_matches_eager_and_does_not_recompile(unet: nn.Module) -> None:
    args, other = _inputs(unet), _inputs(unet, 24, 32, seed=1)
    expected, expected_other = _run(unet, args), _run(unet, other)
    backend = CountingBackend()
    report = compile_unet(unet, "regional", backend=backend)
    assert report.mode == "regional" and report.regions == len(regions(unet)) > 0
    assert sorted(unet.state_dict()) == sorted(make_tiny_model().unet.state_dict())  # keys unchanged
    torch.testing.assert_close(_run(unet, args), expected, rtol=1e-5, atol=1e-5)
    graphs = backend.graphs
    assert 0 < graphs < report.regions  # blocks of the same configuration share their compiled code
    torch.testing.assert_close(_run(unet, args), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_run(unet, other), expected_other, rtol=1e-5, atol=1e-5)
    assert backend.graphs == graphs  # same shape and another resolution: no recompilation (dynamic h, w, rows)
    assert compiled_regions(unet) == report.regions


def test_weights_are_read_at_run_time(pair: Pair) -> None:
    """In-place changes (an in-place LoRA), replaced Parameters (ComfyUI's ModelPatcher) and streaming's swapped
    entries reach the compiled blocks."""
    args = _pair_inputs()
    reference = copy.deepcopy(pair)
    compile_unet(pair, "regional", backend=CountingBackend())
    _run(pair, args)
    conv, linear = "res.in_layers.2", "attn.transformer_blocks.0.attn1.to_q"
    with torch.no_grad():
        for net in (pair, reference):
            net.get_submodule(conv).weight.mul_(1.5)
        new = reference.get_submodule(linear).weight * -1
        for net in (pair, reference):
            net.get_submodule(linear).weight = nn.Parameter(new.clone(), requires_grad=False)
    expected = _run(reference, args)
    torch.testing.assert_close(_run(pair, args), expected, rtol=1e-5, atol=1e-5)
    streaming.attach(pair, "cpu", [pair.res, pair.attn, pair.res2], pin=False)  # weights copied in, every call
    try:
        torch.testing.assert_close(_run(pair, args), expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            for net in (pair, reference):
                net.get_submodule(conv).weight.mul_(2.0)
        torch.testing.assert_close(_run(pair, args), _run(reference, args), rtol=1e-5, atol=1e-5)
    finally:
        streaming.detach(pair)
    assert compiled_regions(pair) == 3


def test_fp8_cast_on_use_layers(pair: Pair) -> None:
    store_fp8(pair, "fp8_e4m3fn")
    args = _pair_inputs()
    expected = _run(pair, args)
    compile_unet(pair, "regional", backend=CountingBackend())
    torch.testing.assert_close(_run(pair, args), expected, rtol=1e-5, atol=1e-5)
    assert compiled_regions(pair) == 3


def test_copies_run_eager_until_ensure_compiled(pair: Pair) -> None:
    args = _pair_inputs()
    backend = CountingBackend()
    compile_unet(pair, "regional", backend=backend)
    expected = _run(pair, args)
    clone = copy.deepcopy(pair)  # as apply_lora's structural copy
    assert compiled_regions(clone) == 0 and compile_request(clone) == compile_request(pair)
    report = ensure_compiled(clone)
    assert report is not None and report.mode == "regional" and compiled_regions(clone) == report.regions == 3
    assert ensure_compiled(clone) is None  # nothing left to do
    graphs = backend.graphs
    torch.testing.assert_close(_run(clone, args), expected, rtol=1e-5, atol=1e-5)
    assert backend.graphs == graphs  # the copy's blocks reuse the compiled code
    assert compile_unet(pair, "off").mode == "off" and compiled_regions(pair) == 0 and compile_request(pair) is None


def test_torch_compile_raising_falls_back_to_eager(pair: Pair, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    args = _pair_inputs()
    expected = _run(pair, args)

    def refuse(*_a: object, **_k: object) -> None:
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    with caplog.at_level(logging.WARNING, logger=compile_module.__name__):
        report = compile_unet(pair, "regional", backend=CountingBackend())
    assert report.mode == "off" and "Dynamo is not supported" in report.message
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert compiled_regions(pair) == 0
    torch.testing.assert_close(_run(pair, args), expected)
    assert ensure_compiled(pair) is None  # a failure is not retried


def test_compiler_failing_at_first_call_warns_once_and_reruns_eager(pair: Pair,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    args = _pair_inputs()
    expected = _run(pair, args)

    def broken(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        raise OSError("cc1plus: fatal error: out of disk")

    with caplog.at_level(logging.WARNING, logger=compile_module.__name__):
        assert compile_unet(pair, "regional", backend=broken).mode == "regional"
        torch.testing.assert_close(_run(pair, args), expected)
        torch.testing.assert_close(_run(pair, args), expected)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running eager" in warnings[0].getMessage()
    assert "out of disk" in warnings[0].getMessage()
    assert compiled_regions(pair) == 0


def test_unavailable_compiler_is_reported(pair: Pair, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(compile_module.shutil, "which", lambda _name: None)
    monkeypatch.delenv("CXX", raising=False)
    with caplog.at_level(logging.WARNING, logger=compile_module.__name__):
        report = compile_unet(pair, "regional")  # inductor on the CPU needs a C++ compiler
    assert report.mode == "off" and "C++ compiler" in report.message
    assert "C++ compiler" in caplog.text and compiled_regions(pair) == 0


def test_cudagraphs_refusals(unet: nn.Module) -> None:
    with pytest.raises(ConfigError, match="unknown compile mode"):
        compile_unet(unet, "everything")
    report = compile_unet(unet, "regional+cudagraphs", backend=CountingBackend())  # on the CPU
    assert report.mode == "regional" and "CUDA graphs need a CUDA device" in report.message
    streaming.attach(unet, "cpu", pin=False)
    try:
        with pytest.raises(ConfigError, match="streams its blocks"):
            compile_unet(unet, "regional+cudagraphs")
    finally:
        streaming.detach(unet)


@pytest.mark.slow
def test_inductor_matches_eager_on_cpu(pair: Pair) -> None:
    """inductor (C++ on the CPU): minutes on a busy 2-core machine, hence slow."""
    args = _pair_inputs()
    expected = _run(pair, args)
    report = compile_unet(pair, "regional")
    assert report.mode == "regional", report.message
    torch.testing.assert_close(_run(pair, args), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_run(pair, _pair_inputs(16, 8)), _run(copy.deepcopy(pair), _pair_inputs(16, 8)),
                               rtol=1e-4, atol=1e-4)
    assert compiled_regions(pair) == report.regions == 3


@pytest.mark.gpu
def test_inductor_and_cudagraphs_on_cuda(base_unet: nn.Module) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for mode in ("regional", "regional+cudagraphs"):
        torch._dynamo.reset()
        unet = copy.deepcopy(base_unet).cuda().half()
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in _inputs(unet))
        expected = _run(unet, args).float()
        report = compile_unet(unet, mode)
        assert report.mode == mode, report.message
        for _ in range(3):  # CUDA graphs record on a later call and replay after
            out = _run(unet, args).float()
            torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
        with torch.no_grad():  # a patched weight (ModelPatcher, in-place LoRA) is used by the replay
            unet.input_blocks[1][0].in_layers[2].weight.mul_(1.5)
        eager = copy.deepcopy(unet)  # copies run eager
        torch.testing.assert_close(_run(unet, args).float(), _run(eager, args).float(), rtol=2e-2, atol=2e-2)


def test_sampling_recompiles_a_copied_compiled_unet(tmp_path) -> None:
    """apply_lora (and any deep copy) leaves a compiled UNet's copy eager; sample_video compiles it again as the
    original was requested, and the copy's video equals the eager one."""
    from comfyui_svd_lab.svd_model.api import VideoParams, encode_condition, sample_video
    from comfyui_svd_lab.svd_model.lora.apply import _with_unet
    from comfyui_svd_lab.svd_model.weights.loader import load_bundle
    from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

    bundle = load_bundle(write_tiny_checkpoint(tmp_path / "svd.safetensors", seed=3))
    params = VideoParams.for_variant("svd", num_frames=2, width=64, height=64, steps=1)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond, uncond = encode_condition(bundle, image, params, generator=torch.Generator().manual_seed(0))
    eager = sample_video(bundle, cond, uncond, params, generator=torch.Generator().manual_seed(1))
    backend = CountingBackend()
    compile_unet(bundle.model.unet, "regional", backend=backend)
    copied = _with_unet(bundle, copy.deepcopy(bundle.model.unet))
    assert compile_request(copied.model.unet) is not None and compiled_regions(copied.model.unet) == 0
    out = sample_video(copied, cond, uncond, params, generator=torch.Generator().manual_seed(1))
    assert compiled_regions(copied.model.unet) == len(regions(copied.model.unet)) and backend.graphs > 0
    torch.testing.assert_close(out, eager, rtol=1e-3, atol=1e-3)  # traced graphs may order float ops differently
