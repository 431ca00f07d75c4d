"""Encoder offload (MemoryPlan.offload_encoders): the image encoder and the conditioning VAE visit the compute
device only while they encode, in every pipeline, with results identical to the resident default."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import ShapeError
from comfyui_svd_lab.svd_model.memory import MemoryPlan
from comfyui_svd_lab.svd_model.pipelines import image_to_video as i2v_module
from comfyui_svd_lab.svd_model.pipelines.decode import encode_frames
from comfyui_svd_lab.svd_model.pipelines.image_to_video import VideoParams, encode_condition
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

H, W, T = 64, 64, 3
OFFLOAD = MemoryPlan(offload_encoders=True)
# On a CPU-only machine the compute device and the CPU coincide; "cpu:0" is the same memory under another
# name, so a move to the compute device is told apart from the move back to "cpu".
COMPUTE = torch.device("cpu", 0)
PIPELINES = Path(i2v_module.__file__).parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "svd.safetensors", seed=5))


def _image() -> torch.Tensor:
    return torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _params() -> VideoParams:
    return VideoParams.for_variant("svd", num_frames=T, width=W, height=H, steps=1)


@pytest.fixture
def spy(monkeypatch):
    """spy(modules, runs) -> events: each `.to(device)` of `modules` and each forward of `runs`, in order."""
    handles = []

    def install(modules: dict[str, torch.nn.Module], runs: dict[str, torch.nn.Module]) -> list[tuple]:
        events: list[tuple] = []
        for name, module in modules.items():
            def to(*args, _name=name, _to=module.to, **kwargs):
                events.append((_name, "to", str(torch.device(args[0] if args else kwargs["device"]))))
                return _to(*args, **kwargs)

            monkeypatch.setattr(module, "to", to)
        for name, module in runs.items():
            handles.append(module.register_forward_pre_hook(lambda _m, _a, _name=name: events.append((_name, "run"))))
        return events

    yield install
    for handle in handles:
        handle.remove()


def _encoders(bundle) -> tuple[dict, dict]:
    model = bundle.model
    return ({"image_encoder": model.image_encoder, "cond_vae": model.cond_vae},
            {"image_encoder": model.image_encoder, "cond_vae": model.cond_vae.encoder})


def test_offloaded_encoders_give_identical_conditioning_and_end_on_the_cpu(bundle):
    resident = encode_condition(bundle, _image(), _params(), generator=torch.Generator().manual_seed(3))
    offloaded = replace(bundle, memory=OFFLOAD)
    moved = encode_condition(offloaded, _image(), _params(), generator=torch.Generator().manual_seed(3))
    for a, b in zip(resident, moved, strict=True):
        for name in ("crossattn", "concat", "vector"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    for module in (bundle.model.image_encoder, bundle.model.cond_vae):
        assert {p.device.type for p in module.parameters()} == {"cpu"}


def test_encoders_visit_the_compute_device_only_while_encoding(bundle, spy):
    offloaded = replace(bundle, memory=OFFLOAD, compute_device=COMPUTE)
    events = spy(*_encoders(bundle))
    encode_condition(offloaded, _image(), _params(), generator=torch.Generator().manual_seed(3))
    assert events == [
        ("image_encoder", "to", "cpu:0"), ("cond_vae", "to", "cpu:0"),
        ("image_encoder", "run"), ("cond_vae", "run"),
        ("image_encoder", "to", "cpu"), ("cond_vae", "to", "cpu"),
    ]


def test_resident_encoders_are_not_moved(bundle, spy):
    events = spy(*_encoders(bundle))
    encode_condition(bundle, _image(), _params(), generator=torch.Generator().manual_seed(3))
    assert events == [("image_encoder", "run"), ("cond_vae", "run")]


def test_encoders_go_back_to_the_cpu_when_encoding_fails(bundle, spy):
    offloaded = replace(bundle, memory=OFFLOAD, compute_device=COMPUTE)
    events = spy(*_encoders(bundle))
    with pytest.raises(ShapeError, match="augmentation noise"):
        encode_condition(offloaded, _image(), _params(), aug_noise=torch.zeros(1, 3, 8, 8))
    assert events[-2:] == [("image_encoder", "to", "cpu"), ("cond_vae", "to", "cpu")]


def test_sv3d_encode_frames_offloads_the_conditioning_vae(tmp_path, spy):
    """SV3D's first stage has no encoder: encode_frames uses the conditioner's VAE, which visits the device."""
    sv3d = load_bundle(write_tiny_checkpoint(tmp_path / "sv3d.safetensors", Family.SV3D_U, seed=2))
    frames = torch.rand(1, 2, 3, H, W, generator=torch.Generator().manual_seed(1)) * 2 - 1
    resident = encode_frames(sv3d, frames)
    offloaded = replace(sv3d, memory=OFFLOAD, compute_device=COMPUTE)
    modules, runs = _encoders(sv3d)
    events = spy(modules, {"cond_vae": runs["cond_vae"]})
    assert torch.equal(encode_frames(offloaded, frames), resident)
    assert events == [("cond_vae", "to", "cpu:0"), ("cond_vae", "run"), ("cond_vae", "to", "cpu")]


ENCODER_CALLS = {"encode_image", "encode_cond_frames", "encode_mode", "encode_sample", "encode_moments"}


def test_every_encoder_call_in_the_pipelines_runs_under_on_compute():
    """A pipeline that calls the image encoder or a VAE encoder must do it inside ``with on_compute(...)``
    (the first stage's own encoder is resident, but encode_frames picks the conditioner VAE for SV3D)."""
    unguarded = []
    for path in sorted(PIPELINES.glob("*.py")):
        tree = ast.parse(path.read_text())
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") == "on_compute"
                for item in node.items
            ):
                guarded.update(id(inner) for inner in ast.walk(node))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ENCODER_CALLS and id(node) not in guarded:
                    unguarded.append(f"{path.name}:{node.lineno} {name}")
    assert unguarded == []
