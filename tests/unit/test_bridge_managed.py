"""ComfyUI-managed models (nodes/bridge/managed.py) with ComfyUI's modules faked: one ModelPatcher per network on
the right devices, load_models_gpu with exactly the parts a node uses, the bundle owning its patchers (weakly
referenced elsewhere), LoRAs as patches on a UNet clone (no weight copy), memory plans and "cpu between nodes"
mapped onto ComfyUI's unloading, training taking the model out of management and giving it back, and the
headless path unchanged. The same code against a real ComfyUI: tests/comfyui/test_memory_comfyui.py."""

from __future__ import annotations

import dataclasses
import gc
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch
from lora_support import trained_lora
from train_support import one_thread_fixture

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.nodes import bridge, lora_nodes
from comfyui_svd_lab.nodes.bridge import managed
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError
from comfyui_svd_lab.svd_model.lora import validate_lora
from comfyui_svd_lab.svd_model.memory import LOW_VRAM
from comfyui_svd_lab.svd_model.weights.loader import SVDBundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model
from comfyui_svd_lab.training_nodes import train_nodes

_one_thread = one_thread_fixture()
W, H, T = 64, 48, 3
CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)  # a device name only: the fakes never put a tensor there


def node(node_id: str):
    return NODE_CLASS_MAPPINGS[node_id]()


def tiny_bundle(seed: int = 2) -> SVDBundle:
    return SVDBundle(make_tiny_model(seed=seed).eval().requires_grad_(False), "svd", "tiny")


# ------------------------------------------------------------------------------------------------ fakes


class FakePatcher:
    """comfy.model_patcher.ModelPatcher as far as the bridge uses it."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.patches, self.backup, self.parent, self.events = {}, {}, None, []

    def clone(self):
        n = FakePatcher(self.model, self.load_device, self.offload_device)
        n.patches, n.backup, n.parent = {k: list(v) for k, v in self.patches.items()}, self.backup, self
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        keys = self.model.state_dict().keys()
        added = [k for k in patches if k in keys]
        for k in added:
            self.patches.setdefault(k, []).append((strength_patch, patches[k], strength_model, None, None))
        return added

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        self.events.append(("patch", device_to))

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        self.events.append(("unpatch", device_to))


class FakeLoaded:
    """comfy.model_management.LoadedModel: a weak reference to the patcher, as ComfyUI keeps it."""

    def __init__(self, patcher, calls):
        self._ref, self._calls = weakref.ref(patcher), calls

    @property
    def model(self):
        return self._ref()

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self._calls["unload"].append(self.model)
        return True


def fake_load_lora(lora, to_load):
    """comfy.lora.load_lora for the standard names (comfy/lora.py: <x>.lora_up/.lora_down.weight, .alpha, .diff,
    .set_weight): model key -> (kind, tensors)."""
    out = {}
    for x, key in to_load.items():
        if f"{x}.lora_up.weight" in lora:
            out[key] = ("lora", (lora[f"{x}.lora_up.weight"], lora[f"{x}.lora_down.weight"], lora.get(f"{x}.alpha")))
        for suffix, kind in ((".diff", "diff"), (".set_weight", "set")):
            if x + suffix in lora:
                out[key] = (kind, (lora[x + suffix],))
    return out


@pytest.fixture
def comfy(monkeypatch, tmp_path):
    """folder_paths, comfy.model_management, comfy.model_patcher and comfy.lora faked, recording calls."""
    calls = {"load": [], "unload": [], "free": [], "offload": []}
    mm = types.ModuleType("comfy.model_management")
    mm.current_loaded_models = []
    mm.device = CPU

    def offload(kind):
        calls["offload"].append(kind)
        return CPU

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, **kw):
        calls["load"].append(list(models))
        for m in models:
            if not any(e.model is m for e in mm.current_loaded_models):
                mm.current_loaded_models.insert(0, FakeLoaded(m, calls))

    mm.get_torch_device = lambda: mm.device
    mm.unet_offload_device = lambda: offload("unet")
    mm.vae_offload_device = lambda: offload("vae")
    mm.text_encoder_offload_device = lambda: offload("text_encoder")
    mm.load_models_gpu = load_models_gpu
    mm.free_memory = lambda n, device, keep_loaded=(): calls["free"].append((n, device))
    mm.soft_empty_cache = lambda force=False: None
    mm.minimum_inference_memory = lambda: 1000
    mm.throw_exception_if_processing_interrupted = lambda: None
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = FakePatcher
    lora = types.ModuleType("comfy.lora")
    lora.load_lora = fake_load_lora
    pkg = types.ModuleType("comfy")
    pkg.__path__ = []  # a package: other comfy.* imports fail as when absent
    pkg.model_management, pkg.model_patcher, pkg.lora = mm, mp, lora
    fp = types.ModuleType("folder_paths")
    fp.get_output_directory = lambda: str(tmp_path / "out")
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    fp.get_input_directory = lambda: str(tmp_path / "in")
    fp.get_folder_paths = lambda key: [str(tmp_path / key)]
    fp.folder_names_and_paths = {}
    for name, module in {"comfy": pkg, "comfy.model_management": mm, "comfy.model_patcher": mp,
                         "comfy.lora": lora, "folder_paths": fp}.items():
        monkeypatch.setitem(sys.modules, name, module)
    assert managed.active()
    return types.SimpleNamespace(calls=calls, mm=mm, dir=tmp_path)


def parts_of(holder, patchers) -> list[str]:
    names = {id(p): part for part, p in holder.patchers.items()}
    return [names[id(p)] for p in patchers]


# ------------------------------------------------------------------------------------------- registration


def test_offload_device_of_each_kind():
    mm = types.SimpleNamespace(unet_offload_device=lambda: "U", vae_offload_device=lambda: "V",
                               text_encoder_offload_device=lambda: "T")
    assert [managed._offload_device(mm, p) for p in managed.PARTS] == ["U", "V", "V", "T"]


def test_each_network_gets_its_own_patcher_on_comfy_devices(comfy):
    comfy.mm.device = GPU
    bundle = tiny_bundle()
    assert bridge.manage(bundle) is bundle
    holder = managed.manage(bundle)
    assert {part: p.model for part, p in holder.patchers.items()} == {
        "unet": bundle.model.unet, "first_stage": bundle.model.first_stage, "cond_vae": bundle.model.cond_vae,
        "image_encoder": bundle.model.image_encoder}
    assert all(p.load_device == GPU and p.offload_device == CPU for p in holder.patchers.values())
    assert sorted(comfy.calls["offload"]) == ["text_encoder", "unet", "vae", "vae"]
    assert bundle.compute_device == GPU and bundle.device == GPU  # pipelines compute where ComfyUI loads
    assert managed.manage(bundle) is holder and len(comfy.calls["offload"]) == 4  # registered once
    assert bridge.load_device(CPU) == CPU  # the loader's target inside ComfyUI: the UNet's offload device
    assert not comfy.calls["load"]  # nothing loaded before a node needs it


def test_place_hands_a_loaded_bundle_to_comfy_on_its_offload_devices(comfy):
    comfy.mm.device = GPU
    bundle = tiny_bundle()
    assert bridge.place(bundle, "normal", GPU) is bundle
    assert bundle.compute_device == GPU and managed._ATTR in bundle.__dict__
    assert all(next(m.parameters()).device == CPU for m in (bundle.model.unet, bundle.model.first_stage))
    low = tiny_bundle()
    bridge.place(low, "low_vram", CPU)  # on a CPU compute device streaming is a no-op; encoders still offloaded
    assert low.memory == dataclasses.replace(LOW_VRAM, offload_encoders=False)
    assert managed.manage(low).offload_after == set(bridge.CONDITIONING)


def test_nodes_load_exactly_the_parts_they_use_and_compute_as_headless(comfy, monkeypatch):
    bundle = tiny_bundle()
    image = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(0))
    cond_args = {"width": W, "height": H, "frames": T, "fps": 7, "motion_bucket_id": 127, "cond_aug": 0.02,
                 "seed": 1}
    sample_args = {"sampler": "euler", "schedule": "karras", "steps": 2, "min_cfg": 1.0, "max_cfg": 2.5,
                   "guidance": "linear", "seed": 5, "denoise": 1.0}

    def workflow(b):
        cond, _, _ = node("SVDLab_ImageToVideoConditioning").encode(b, image, **cond_args)
        latent = node("SVDLab_Sampler").sample(b, cond, **sample_args)[0]
        frames = node("SVDLab_Decode").decode(b, latent, 2, 1)[0]
        again = node("SVDLab_EncodeFrames").encode(b, frames)[0]
        return latent["samples"], frames, again["samples"]

    managed_out = workflow(bundle)
    holder = managed.manage(bundle)
    assert [parts_of(holder, call) for call in comfy.calls["load"]] == [
        ["image_encoder", "cond_vae"], ["unet"], ["first_stage"], ["first_stage"]]
    assert not comfy.calls["unload"]  # ComfyUI keeps them until it needs the room (or /free)
    assert {id(e.model) for e in comfy.mm.current_loaded_models} == {id(p) for p in holder.patchers.values()}
    for name in ("comfy", "comfy.model_management", "comfy.model_patcher", "comfy.lora", "folder_paths"):
        monkeypatch.delitem(sys.modules, name)
    headless = tiny_bundle()
    for got, want in zip(managed_out, workflow(headless), strict=True):
        assert torch.equal(got, want)  # management changes where weights live, not what is computed
    assert managed._ATTR not in headless.__dict__


def test_unknown_part_is_refused(comfy):
    with pytest.raises(ConfigError, match="unknown model part"), bridge.on_device(tiny_bundle(), ("vae",)):
        pass


def test_the_bundle_keeps_its_patchers_alive_and_dropping_it_lets_them_go(comfy):
    bundle = tiny_bundle()
    with bridge.on_device(bundle, bridge.PARTS):
        pass
    holder = managed.manage(bundle)
    patchers = [weakref.ref(p) for p in holder.patchers.values()]
    unet = weakref.ref(bundle.model.unet)
    gc.collect()
    assert all(r() is not None for r in patchers)  # held by the bundle only (ComfyUI's entries are weak)
    comfy.calls["load"].clear()
    del bundle, holder
    assert all(r() is None for r in patchers) and unet() is None  # at once: no reference cycle waits for gc
    assert all(e.model is None for e in comfy.mm.current_loaded_models)  # ComfyUI's cleanup drops these


def test_bundles_sharing_a_network_share_its_patcher(comfy):
    bundle = tiny_bundle()
    view = dataclasses.replace(bundle)  # e.g. a trained bundle sharing the VAEs
    assert managed.manage(view).patchers["first_stage"] is managed.manage(bundle).patchers["first_stage"]


# ---------------------------------------------------------------------------------- plans and offloading


def test_cpu_between_nodes_unloads_each_part_after_the_node(comfy):
    bundle = tiny_bundle()
    bridge.set_offload(bundle, CPU)
    holder = managed.manage(bundle)
    with bridge.on_device(bundle, bridge.CONDITIONING):
        assert len(comfy.mm.current_loaded_models) == 2
    assert sorted(parts_of(holder, comfy.calls["unload"])) == ["cond_vae", "image_encoder"]
    assert comfy.mm.current_loaded_models == []
    with pytest.raises(RuntimeError, match="node failed"), bridge.on_device(bundle, bridge.UNET):
        raise RuntimeError("node failed")
    assert parts_of(holder, comfy.calls["unload"][2:]) == ["unet"]  # also after an error


def test_low_vram_plan_maps_onto_comfy(comfy):
    comfy.mm.device = GPU
    bundle = tiny_bundle()
    bundle.memory, bundle.compute_device = LOW_VRAM, GPU  # as svd_model.memory.apply_plan leaves it
    holder = managed.manage(bundle)
    unet = holder.patchers["unet"]
    assert (unet.load_device, unet.offload_device) == (CPU, CPU) and holder.streamed  # streams its blocks itself
    assert holder.patchers["first_stage"].load_device == GPU
    assert not bundle.memory.offload_encoders and holder.offload_after == set(bridge.CONDITIONING)
    with bridge.on_device(bundle, bridge.UNET):
        pass
    [(needed, device)] = comfy.calls["free"]
    blocks = [*bundle.model.unet.input_blocks, bundle.model.unet.middle_block, *bundle.model.unet.output_blocks]
    largest = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks)
    assert device == GPU and needed == 2 * largest + 1000  # the streaming working set + inference reserve
    with bridge.on_device(bundle, bridge.CONDITIONING + bridge.FIRST_STAGE):
        pass
    assert sorted(parts_of(holder, comfy.calls["unload"])) == ["cond_vae", "image_encoder"]  # leave after use


# ------------------------------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_state():
    """A ComfyUI-named LoRA on every layer, one layer renamed to PEFT style, plus a diff on one weight that also has
    a LoRA pair and a bias diff."""
    _, state, _ = trained_lora()
    state = dict(state)
    prefix = next(k[: -len(".lora_up.weight")] for k in state if k.endswith(".lora_up.weight"))
    state[f"{prefix}.lora_B.weight"] = state.pop(f"{prefix}.lora_up.weight")
    state[f"{prefix}.lora_A.weight"] = state.pop(f"{prefix}.lora_down.weight")
    unet = make_tiny_model(seed=2).unet
    conv = next(n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None)
    weight = unet.get_parameter(f"{conv}.weight")
    state[f"diffusion_model.{conv}.diff"] = torch.full_like(weight, 0.01)
    state[f"diffusion_model.{conv}.diff_b"] = torch.full_like(unet.get_parameter(f"{conv}.bias"), 0.02)
    return state, prefix[len("diffusion_model."):], conv


def test_lora_inside_comfyui_is_patches_on_a_unet_clone(comfy, lora_state, monkeypatch, tmp_path):
    state, peft_module, conv = lora_state
    path = tmp_path / "motion.safetensors"
    path.write_bytes(b"")  # stands for the file (its tensors: `state`)
    reads = []
    monkeypatch.setattr(bridge, "resolve_lora", lambda name: path)
    monkeypatch.setattr(lora_nodes, "load_lora", lambda p: reads.append(p) or (state, {}))
    base = tiny_bundle()
    before = {k: v.data_ptr() for k, v in base.model.unet.state_dict().items()}
    loader = node("SVDLab_LoraLoader")
    patched, info = loader.load(base, "motion.safetensors", 0.75)
    base_holder, holder = managed.manage(base), managed.manage(patched)
    clone = holder.patchers["unet"]
    assert patched is not base and patched.model is base.model  # every network shared, nothing copied
    assert {k: v.data_ptr() for k, v in base.model.unet.state_dict().items()} == before
    assert clone.parent is base_holder.patchers["unet"] and not base_holder.patchers["unet"].patches
    assert all(holder.patchers[p] is base_holder.patchers[p] for p in ("first_stage", "cond_vae", "image_encoder"))
    report = validate_lora(base, state)
    assert set(clone.patches) == set(report.modules) and "0.75" in info
    peft = clone.patches[f"{peft_module}.weight"]
    assert len(peft) == 1 and peft[0][0] == 0.75 and peft[0][1][0] == "lora"
    assert peft[0][1][1][0] is state[f"diffusion_model.{peft_module}.lora_B.weight"]  # the file's tensors, not copies
    assert [p[1][0] for p in clone.patches[f"{conv}.weight"]] == ["lora", "diff"]  # both apply, in file order
    assert clone.patches[f"{conv}.bias"][0][1][0] == "diff"
    again, _ = loader.load(base, "motion.safetensors", 1.5)  # a strength change: a new clone, the file not re-read
    assert len(reads) == 1 and managed.manage(again).patchers["unet"] is not clone
    assert {p[0] for v in managed.manage(again).patchers["unet"].patches.values() for p in v} == {1.5}
    with bridge.on_device(patched, bridge.UNET):
        pass
    assert comfy.calls["load"][-1] == [clone]  # the sampler of the LoRA model loads the clone


def test_lora_that_fits_nothing_is_refused_inside_comfyui(comfy, monkeypatch, tmp_path):
    monkeypatch.setattr(bridge, "resolve_lora", lambda name: tmp_path / "x.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"")
    bad = {"diffusion_model.nowhere.lora_up.weight": torch.zeros(4, 2),
           "diffusion_model.nowhere.lora_down.weight": torch.zeros(2, 4)}
    monkeypatch.setattr(lora_nodes, "load_lora", lambda p: (bad, {}))
    with pytest.raises(CheckpointError, match="matches none of this model's weights"):
        node("SVDLab_LoraLoader").load(tiny_bundle(), "x.safetensors", 1.0)


def test_base_hash_ignores_comfy_weight_patches(comfy):
    bundle = tiny_bundle()
    unet = managed.manage(bundle).patchers["unet"]
    key = next(iter(bundle.model.unet.state_dict()))
    original = bundle.model.unet.state_dict()[key]
    unet.backup[key] = types.SimpleNamespace(weight=original, inplace_update=False)
    bundle.model.unet.get_parameter(key).data = original + 1  # as ComfyUI leaves a loaded LoRA clone
    assert bridge.unet_state(bundle)[key] is original


# --------------------------------------------------------------------------------------------- training


def test_training_takes_the_model_out_of_management_and_gives_it_back(comfy, lora_state, monkeypatch):
    state = lora_state[0]
    base = tiny_bundle()
    lora = managed.with_lora(base, state, validate_lora(base, state), 1.0)
    holder = managed.manage(lora)
    with bridge.on_device(lora, bridge.PARTS):
        pass
    clone = holder.patchers["unet"]
    seen = {}

    def run(config, bundle, cache, on_step, validation_image):
        seen.update(loaded=list(comfy.mm.current_loaded_models), taken=holder.taken, events=list(clone.events),
                    grad=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled())
        with bridge.on_device(bundle, bridge.PARTS):  # e.g. a validation video: ComfyUI is not asked
            seen["loads"] = len(comfy.calls["load"])
        if seen.get("fail"):
            raise KeyboardInterrupt
        written = comfy.dir / "out" / "model.safetensors"
        return types.SimpleNamespace(step=1, unet=bundle.model.unet, weights_path=written, state_path=written,
                                     plot_path=None, records=[{"step": 1, "loss": 0.5}], validation=[])

    monkeypatch.setattr(train_nodes, "run_training", run)
    widgets = {name: spec[1].get("default") for name, spec in train_nodes._train_widgets().items()}
    widgets.update(run_name="managed", method="full")
    loads = len(comfy.calls["load"])
    with torch.inference_mode():  # as ComfyUI runs nodes
        out = node("SVDLab_Train").train(lora, cache=None, **widgets)
    assert seen["loaded"] == [] and seen["taken"] and seen["loads"] == loads  # ComfyUI forgot them for the run
    assert sorted(parts_of(holder, comfy.calls["unload"])) == sorted(managed.PARTS)  # unloaded first
    assert seen["events"] == [("patch", CPU)]  # the LoRA merged into the weights for the run (ComfyUI's patching)
    assert seen["grad"] and not seen["inference"]
    assert clone.events == [("patch", CPU), ("unpatch", CPU)] and not holder.taken  # handed back
    trained = out["result"][0]
    assert trained.model.unet is not lora.model.unet and next(trained.model.unet.parameters()).device == CPU
    assert managed.manage(trained).patchers["first_stage"] is holder.patchers["first_stage"]
    seen["fail"] = True
    with pytest.raises(KeyboardInterrupt), torch.inference_mode():
        node("SVDLab_Train").train(lora, cache=None, **widgets)
    assert clone.events[-2:] == [("patch", CPU), ("unpatch", CPU)] and not holder.taken  # also on interrupt


# --------------------------------------------------------------------------------------------- headless


def test_headless_path_is_unchanged(lora_state, monkeypatch, tmp_path):
    assert not managed.active()
    bundle = tiny_bundle()
    with bridge.on_device(bundle, bridge.UNET):
        pass
    with pytest.raises(ConfigError, match="unknown model part"), bridge.on_device(bundle, ("unets",)):
        pass
    with bridge.unmanaged(bundle) as same:
        assert same is bundle
    assert managed._ATTR not in bundle.__dict__ and bridge.resting_device(bundle) == CPU
    assert bridge.load_device(CPU, offload_between_nodes=True) == CPU and bridge.release(bundle) == 0
    planned = []
    monkeypatch.setattr(bridge.memory, "apply_plan", lambda b, plan, device: planned.append((plan, device)) or b)
    placed = bridge.place(bundle, "low_vram", CPU)  # headless: the package places its weights (apply_plan)
    assert placed is bundle and planned == [("low_vram", CPU)] and managed._ATTR not in bundle.__dict__
    path = Path(tmp_path / "l.safetensors")
    monkeypatch.setattr(bridge, "resolve_lora", lambda name: path)
    monkeypatch.setattr(lora_nodes, "load_lora", lambda p: (lora_state[0], {}))
    path.write_bytes(b"")
    patched, _ = node("SVDLab_LoraLoader").load(bundle, "l.safetensors", 1.0)
    assert patched.model.unet is not bundle.model.unet  # headless: apply_lora's merged copy
    assert managed._ATTR not in patched.__dict__
