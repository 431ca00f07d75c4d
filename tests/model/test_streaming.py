"""Block streaming (svd_model.nn.streaming) on the CPU: the target device is the CPU too, so every unit really is
copied in and swapped back, without CUDA streams. Outputs equal to rounding, at most two units resident, the Parameters
untouched, patched weights picked up, errors inside a unit, and detach."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.memory import LOW_VRAM, apply_plan
from comfyui_svd_lab.svd_model.nn import streaming
from comfyui_svd_lab.svd_model.weights.loader import SVDBundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model

T = 3


@pytest.fixture(scope="module")
def model():
    return make_tiny_model().eval()


def _inputs(unet: nn.Module, b: int = 2, size: int = 8) -> tuple:
    g = torch.Generator().manual_seed(1)
    c, rows = unet.config, b * T
    return (torch.randn(rows, c.in_channels, size, size, generator=g), torch.rand(rows, generator=g),
            torch.randn(rows, 1, c.context_dim, generator=g), torch.randn(rows, c.adm_in_channels, generator=g), T)


def _entries(module: nn.Module) -> dict[str, int]:
    return {name: id(t) for name, t in [*module.named_parameters(), *module.named_buffers()]}


def test_streamed_unet_matches_with_at_most_two_units_resident(model):
    unet = model.unet
    args = _inputs(unet)
    before = _entries(unet)
    with torch.inference_mode():
        plain = unet(*args)
    streamer = streaming.attach(unet, "cpu")
    try:
        seen: list[tuple[int, int]] = []  # (unit index, units fetched) while each unit runs
        originals = {id(p) for p in unet.parameters()}
        swapped: list[bool] = []

        def probe(i):
            def hook(module, _args):
                seen.append((i, len(streamer.fetched)))
                swapped.append(all(id(p) not in originals for p in module.parameters()))
            return hook

        probes = [u.register_forward_pre_hook(probe(i)) for i, u in enumerate(streamer.units)]
        with torch.inference_mode():
            out = unet(*args)
            again = unet(*args)  # a second step: nothing carried over from the first
        for handle in probes:
            handle.remove()
    finally:
        streaming.detach(unet)
    # The same kernels on copies of the same values; a copy's address can change the CPU GEMM's blocking, which
    # moves the last bit of some sums (cloning the weights of one attention block does the same), so not equal.
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, plain, rtol=1e-5, atol=1e-6)
    n = len(streamer.units)
    assert [i for i, _ in seen] == list(range(n)) * 2  # every unit, in forward order
    assert all(swapped)  # each ran on its copies, never on the stored Parameters
    assert streamer.peak_resident == 2 and max(k for _, k in seen) <= 2
    assert _entries(unet) == before  # the same Parameter objects back in place
    assert streaming.streamer_of(unet) is None and not streamer.fetched and not streamer.saved


def test_weights_changed_between_calls_are_used_in_place_or_replaced(model):
    """Nothing is prefetched across calls: a patch applied between two steps is never missed."""
    unet = model.unet
    args = _inputs(unet)
    first = unet.time_embed[0]  # the first unit: a cross-call prefetch would hold a stale copy of it
    streaming.attach(unet, "cpu")
    try:
        with torch.inference_mode():
            plain = unet(*args)
        with torch.no_grad():
            first.bias.add_(1.0)  # in place, as ComfyUI's inplace_update patching does
        with torch.inference_mode():
            in_place = unet(*args)
        with torch.no_grad():
            first.bias.sub_(1.0)
        with torch.inference_mode():
            restored = unet(*args)
    finally:
        streaming.detach(unet)
    assert not torch.allclose(in_place, plain, atol=1e-3)
    torch.testing.assert_close(restored, plain, rtol=1e-5, atol=1e-6)


def test_weights_replaced_after_attaching_are_the_ones_streamed(model):
    """ComfyUI's ModelPatcher patches by replacing Parameters; streaming reads them when a unit starts."""
    unet = model.unet
    args = _inputs(unet)
    conv = unet.out[2]
    original = conv._parameters["bias"]
    streaming.attach(unet, "cpu")
    try:
        conv._parameters["bias"] = nn.Parameter(original + 1.0, requires_grad=False)
        with torch.inference_mode():
            shifted = unet(*args)
        conv._parameters["bias"] = original
        with torch.inference_mode():
            plain = unet(*args)
    finally:
        streaming.detach(unet)
    assert torch.allclose(shifted - plain, torch.ones_like(plain), atol=1e-5)


def test_an_error_inside_a_unit_restores_everything(model):
    unet = model.unet
    before = _entries(unet)
    streamer = streaming.attach(unet, "cpu")
    block = unet.input_blocks[1]

    def fail(*_args):
        assert streamer.saved  # the block's copies are in place while it runs
        raise RuntimeError("out of memory inside the block")

    block.forward = fail
    try:
        with pytest.raises(RuntimeError, match="out of memory inside the block"), torch.inference_mode():
            unet(*_inputs(unet))
        assert not streamer.saved and _entries(unet) == before
    finally:
        del block.forward
        streaming.detach(unet)
    assert _entries(unet) == before and not streamer.fetched


def test_a_lora_copy_of_a_streamed_unet_streams_its_own_weights():
    """apply_lora copies the UNet structure (deepcopy): the copy gets hooks of its own, the original keeps its."""
    from lora_support import run, tiny_unet, trained_lora, unet_inputs

    from comfyui_svd_lab.svd_model.lora import apply_lora

    unet, inputs = tiny_unet(2), unet_inputs()
    _, state, _ = trained_lora()
    merged = run(apply_lora(unet, state, 0.7), inputs)
    plain = run(unet, inputs)
    streaming.attach(unet, "cpu")
    try:
        clone = apply_lora(unet, state, 0.7)
        original, copy = streaming.streamer_of(unet), streaming.streamer_of(clone)
        assert original is not None and copy is not None and original is not copy
        assert all(len(u._forward_pre_hooks) == 1 for u in copy.units)  # its own hook only, none copied
        stored = {id(p) for p in clone.parameters()}
        swapped: list[bool] = []
        probes = [u.register_forward_pre_hook(lambda m, _a: swapped.append(
            all(id(p) not in stored for p in m.parameters()))) for u in copy.units]
        out = run(clone, inputs)
        for handle in probes:
            handle.remove()
        assert len(swapped) == len(copy.units) and all(swapped)  # the copy's own units ran on device copies
        torch.testing.assert_close(out, merged, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(run(unet, inputs), plain, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(merged, plain, atol=1e-3)
    finally:
        streaming.detach(unet)


def test_tensors_outside_the_units_are_refused():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="outside its blocks.*'1.weight'"):
        streaming.attach(net, "cpu", units=[net[0]])
    assert streaming.streamer_of(net) is None


def test_unit_bytes_cover_the_whole_unet(model):
    units = streaming.unet_units(model.unet)
    total = sum(t.numel() * t.element_size() for t in [*model.unet.parameters(), *model.unet.buffers()])
    assert sum(streaming.unit_bytes(units)) == total


def test_low_vram_plan_streams_nothing_on_a_cpu_device(model):
    bundle = SVDBundle(model=model, variant="svd_xt", source="tiny")
    apply_plan(bundle, LOW_VRAM, "cpu")
    assert streaming.streamer_of(model.unet) is None  # a no-op on the CPU: the weights already compute there
    assert bundle.memory is LOW_VRAM and bundle.device == torch.device("cpu")


# ------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_streaming_matches_the_resident_unet_with_less_weight_memory(model):
    """On a GPU: the streamed UNet (pinned CPU weights, side-stream prefetch) computes what the resident one does,
    and holds at most two units' weights on the device (fp8 storage: those bytes halve)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import copy

    from comfyui_svd_lab.svd_model.nn.cast import store_fp8

    unet = copy.deepcopy(model.unet).half()
    args = tuple(a.cuda().half() if torch.is_tensor(a) else a for a in _inputs(unet))
    with torch.inference_mode():
        resident = unet.cuda()(*args)
    unet.cpu()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    streamer = streaming.attach(unet, "cuda")
    try:
        assert all(p.is_pinned() for p in unet.parameters())
        with torch.inference_mode():
            streamed = unet(*args)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    finally:
        streaming.detach(unet)
    torch.testing.assert_close(streamed, resident, rtol=1e-3, atol=1e-3)  # the same values; fp16 kernels may differ
    largest = max(streaming.unit_bytes(streamer.units))
    assert streamer.peak_resident == 2 and next(unet.parameters()).device.type == "cpu"
    total = sum(streaming.unit_bytes(streamer.units))
    print(f"streamed peak {peak / 2**20:.1f} MiB (weights {total / 2**20:.1f} MiB, largest unit "
          f"{largest / 2**20:.1f} MiB)")
    store_fp8(unet, "fp8_e4m3fn")
    unet.compute_dtype = torch.float16
    streaming.attach(unet, "cuda")
    try:
        with torch.inference_mode():
            fp8 = unet(*args)
    finally:
        streaming.detach(unet)
    assert torch.isfinite(fp8).all()
