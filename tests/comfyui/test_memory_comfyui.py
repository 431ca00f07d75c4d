"""The pack's models inside a real ComfyUI are ComfyUI models (nodes/bridge/managed.py), observed as a user sees
them: the server log (``--verbose DEBUG``) shows ComfyUI loading each network of the pack like its own core model
(a pixel-space VAE in the same prompt), keeping them loaded between prompts, ``POST /free {"unload_models": true}``
unloading them, and a LoRA strength change re-patching the shared UNet without a second checkpoint load (the
latents equal the headless pack's, merged LoRA, within 1e-4). In-process, ComfyUI's own ModelPatcher on the
pack's UNet: a partial (low-VRAM) load leaves cast-on-use layers behind and computes exactly what the plain UNet
does, with LoRA patches too; ComfyUI's eviction routine unloads the pack's models as it unloads core ones.

Runs only when COMFYUI_PATH points at a ComfyUI checkout (0.8.x, 0.33.x; tests/comfyui_support.py starts the
server on the CPU). On a CPU-only server ComfyUI never evicts a model to load another (load_models_gpu frees
memory on GPUs only), so eviction by a later model load is shown in-process, with ComfyUI's free_memory called as
load_models_gpu calls it before a load on a GPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import comfyui_support as support
import numpy as np
import pytest
import torch
from lora_support import tiny_unet, trained_lora
from PIL import Image
from safetensors.torch import load_file

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.lora import base_model_hash, lora_metadata, save_lora
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

pytestmark = pytest.mark.skipif(not support.COMFYUI, reason=support.SKIP_REASON)
W, H, T = 64, 48, 3
PACK_NETWORKS = ("VideoUNet", "OpenCLIPVisionTower", "AutoencoderKL")  # AutoencoderKL twice: first stage, cond VAE
CORE = "PixelspaceConversionVAE"  # core VAELoader's "pixel_space" VAE: a core model that needs no file
REL = 1e-4  # server vs headless latents: the same code in two processes (thread counts may differ)


class Server:
    def __init__(self, base: str, root: Path) -> None:
        self.base, self.root, self.log = base, root, root / "server.log"

    def mark(self) -> int:
        return self.log.stat().st_size

    def since(self, mark: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def run(self, prompt: dict) -> dict:
        return support.run_prompt(self.base, prompt)

    def latent(self, entry: dict, node_id: str) -> torch.Tensor:
        item = entry["outputs"][node_id]["latents"][0]
        return load_file(self.root / "output" / item["subfolder"] / item["filename"])["latent_tensor"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_memory")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors", seed=2)
    _, state, _ = trained_lora()
    (root / "models" / "loras").mkdir(parents=True)
    meta = lora_metadata(rank=4, alpha=2.0, preset="all", modules=len(state) // 3, steps=5,
                         base_model_hash=base_model_hash(tiny_unet(2)))
    save_lora(root / "models" / "loras" / "motion.safetensors", state, metadata=meta)
    pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    (root / "input").mkdir()
    Image.fromarray(pixels).save(root / "input" / "frame.png")
    try:
        with support.comfyui_server(root, args=("--verbose", "DEBUG")) as base:
            yield Server(base, root)
    except support.ServerError as exc:
        pytest.fail(str(exc))


COND = {"width": W, "height": H, "frames": T, "fps": 7, "motion_bucket_id": 127, "cond_aug": 0.02, "seed": 1}
SAMPLE = {"sampler": "euler", "schedule": "karras", "steps": 2, "min_cfg": 1.0, "max_cfg": 2.5, "guidance": "linear",
          "denoise": 1.0}


def prompt(seed: int, tag: str, lora: float | None = None, core: bool = False, **loader: str) -> dict:
    """Load -> [LoRA] -> conditioning -> sampler -> SaveLatent, and decode -> preview; `core`: a core VAE branch;
    `loader`: more loader inputs (memory, weight_storage)."""
    model = ["1", 0]
    p = {
        "1": {"class_type": "SVDLab_CheckpointLoader",
              "inputs": {"ckpt_name": "tiny.safetensors", "dtype": "fp32", "variant": "auto", "offload": "none",
                         **loader}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}},
    }
    if lora is not None:
        p["3"] = {"class_type": "SVDLab_LoraLoader",
                  "inputs": {"model": model, "lora_name": "motion.safetensors", "strength": lora}}
        model = ["3", 0]
    p["4"] = {"class_type": "SVDLab_ImageToVideoConditioning", "inputs": {"model": model, "image": ["2", 0], **COND}}
    p["5"] = {"class_type": "SVDLab_Sampler", "inputs": {"model": model, "conditioning": ["4", 0], "seed": seed,
                                                         **SAMPLE}}
    p["6"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{tag}"}}
    p["7"] = {"class_type": "SVDLab_Decode", "inputs": {"model": model, "latent": ["5", 0], "chunk_size": 2,
                                                        "overlap": 1}}
    p["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    if core:
        p["9"] = {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}}
        p["10"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["9", 0]}}
        p["11"] = {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["9", 0]}}
        p["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}}
    return p


def requested(text: str) -> list[str]:
    return re.findall(r"Requested to load (\w+)", text)


def test_pack_models_load_stay_and_are_freed_like_a_core_model(server):
    mark = server.mark()
    server.run(prompt(1, "first", core=True))
    text = server.since(mark)
    assert sorted(requested(text)) == sorted([*PACK_NETWORKS, "AutoencoderKL", CORE]), text[-3000:]
    assert text.count("loaded completely") >= 5  # every network, ours and the core one, loaded by ComfyUI

    mark = server.mark()
    server.run(prompt(2, "second", core=True))  # a new seed: sampler and decoder run again (the core VAE is cached)
    assert requested(server.since(mark)) == []  # ComfyUI kept them loaded, as it keeps its own

    mark = server.mark()
    status, _ = support.post_json(server.base + "/free", {"unload_models": True})
    assert status == 200
    deadline = time.time() + 60
    while time.time() < deadline and server.since(mark).count("Unloading ") < 5:
        time.sleep(0.5)
    unloaded = re.findall(r"Unloading (\w+)", server.since(mark))
    assert sorted(unloaded) == sorted([*PACK_NETWORKS, "AutoencoderKL", CORE])  # ours released like the core one

    mark = server.mark()
    server.run(prompt(3, "third", core=True))
    assert sorted(requested(server.since(mark))) == ["AutoencoderKL", "VideoUNet"]  # loaded again: sampler, decoder


def _headless_latent(root: Path, strength: float | None, seed: int, **loader: str) -> torch.Tensor:
    """The same graph run by the pack headless (LoRA merged with apply_lora)."""
    bridge.configure(models_dirs=[root / "models" / "checkpoints"], loras_dirs=[root / "models" / "loras"])
    try:
        model, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("tiny.safetensors", "fp32", "auto", "none",
                                                                          **loader)
        if strength is not None:
            model, _ = NODE_CLASS_MAPPINGS["SVDLab_LoraLoader"]().load(model, "motion.safetensors", strength)
        rgb = np.asarray(Image.open(root / "input" / "frame.png").convert("RGB"), np.float32) / 255.0
        image = torch.from_numpy(rgb)[None]  # (1, H, W, 3) as core LoadImage gives it
        cond, _, _ = NODE_CLASS_MAPPINGS["SVDLab_ImageToVideoConditioning"]().encode(model, image, **COND)
        return NODE_CLASS_MAPPINGS["SVDLab_Sampler"]().sample(model, cond, seed=seed, **SAMPLE)[0]["samples"]
    finally:
        bridge.reset()


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and float((got - want).abs().max()) <= REL * float(want.abs().max())


def test_lora_strength_changes_without_a_reload(server):
    latents, texts = {}, {}
    for tag, strength in (("lora05", 0.5), ("lora10", 1.0), ("base", None)):
        mark = server.mark()
        latents[tag] = server.latent(server.run(prompt(5, tag, lora=strength)), "6")
        texts[tag] = server.since(mark)
        assert _close(latents[tag], _headless_latent(server.root, strength, 5)), tag  # patches == merged LoRA
    assert not _close(latents["lora05"], latents["lora10"]) and not _close(latents["lora10"], latents["base"])
    # the UNet is loaded again for the new clone (ComfyUI re-patches the shared weights); conditioning and decoder are
    # the same networks and stay loaded. Back to the base model ComfyUI may not even log a load: when the LoRA model
    # left its cache, the UNet's entry passed to the clone's parent (the base patcher), and loading it unpatched the
    # weights (the base latents above equal the headless ones)
    assert requested(texts["lora10"]) == ["VideoUNet"] and set(requested(texts["base"])) <= {"VideoUNet"}
    whole = server.log.read_text()
    assert whole.count("tiny.safetensors: svd model") == 1  # the checkpoint was loaded once in this server's life


def test_low_vram_and_fp8_weights_inside_comfyui(server):
    """The loader's memory modes through /prompt: ComfyUI still loads every network (on a CPU server low_vram
    streams nothing; the encoders are unloaded after conditioning, so the second prompt loads them again), and the
    latents equal the headless pack's in the same mode."""
    for tag, loader in (("low", {"memory": "low_vram"}), ("fp8", {"weight_storage": "fp8_e4m3fn"})):
        mark = server.mark()
        latent = server.latent(server.run(prompt(7, tag, **loader)), "6")
        text = server.since(mark)
        assert "VideoUNet" in requested(text), text[-3000:]
        assert _close(latent, _headless_latent(server.root, None, 7, **loader)), tag
    mark = server.mark()
    server.run(prompt(8, "low2", memory="low_vram"))
    again = requested(server.since(mark))
    assert "OpenCLIPVisionTower" in again  # offloaded after the first prompt's conditioning, loaded for this one


# ------------------------------------------------------------------------------------- in-process patcher

SCRIPT = r'''
import importlib.util, json, sys
from pathlib import Path
repo, comfy_root = Path(sys.argv[1]), sys.argv[2]
sys.path[:0] = [comfy_root, str(repo / "tests")]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.model_management as mm
import comfy.sd
spec = importlib.util.spec_from_file_location("comfyui_svd_lab", repo / "__init__.py",
                                              submodule_search_locations=[str(repo)])
pack = importlib.util.module_from_spec(spec)
sys.modules["comfyui_svd_lab"] = pack
spec.loader.exec_module(pack)
from comfyui_svd_lab.nodes.bridge import managed
from comfyui_svd_lab.svd_model.lora import apply_lora, validate_lora
from comfyui_svd_lab.svd_model.nn import streaming
from comfyui_svd_lab.svd_model.weights.loader import SVDBundle, store_unet_fp8
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model
from lora_support import run, trained_lora, unet_inputs

cpu = torch.device("cpu")
out = {"active": managed.active()}
bundle = SVDBundle(make_tiny_model(seed=2).eval().requires_grad_(False), "svd", "tiny")
unet, inputs = bundle.model.unet, unet_inputs()
plain = run(unet, inputs)
_, state, _ = trained_lora()
merged = run(apply_lora(bundle, state, 0.7).model.unet, inputs)
patcher = managed.manage(bundle).patchers["unet"]
out["patcher"] = type(patcher).__module__ + "." + type(patcher).__name__
budget = patcher.model_size() // 3

def diff(a, b):
    return float((a - b).abs().max())

patcher.patch_model(cpu, lowvram_model_memory=budget)  # what load_models_gpu does on a GPU with little VRAM
out["lowvram"] = bool(unet.model_lowvram)
out["left_behind"] = sum(bool(getattr(m, "comfy_cast_weights", False)) for m in unet.modules())
out["loaded_bytes"], out["total_bytes"] = unet.model_loaded_weight_memory, patcher.model_size()
out["partial_vs_plain"] = diff(run(unet, inputs), plain)
patcher.unpatch_model(cpu)
out["cast_after_unpatch"] = sum(bool(getattr(m, "comfy_cast_weights", False)) for m in unet.modules())
clone = managed.manage(managed.with_lora(bundle, state, validate_lora(bundle, state), 0.7)).patchers["unet"]
clone.patch_model(cpu, lowvram_model_memory=budget)
out["lowvram_patches"] = unet.lowvram_patch_counter
out["partial_lora_vs_merged"] = diff(run(unet, inputs), merged)
clone.unpatch_model(cpu)
clone.patch_model(cpu)
out["full_lora_vs_merged"] = diff(run(unet, inputs), merged)
clone.unpatch_model(cpu)
out["unpatched_vs_plain"] = diff(run(unet, inputs), plain)
out["merged_vs_plain"] = diff(merged, plain)

# a streamed UNet (svd_model.nn.streaming; here streaming to the CPU itself) computes with the weights ComfyUI
# patched into it: the patcher replaces Parameters, streaming reads them when each block starts
streaming.attach(unet, cpu)
clone.patch_model(cpu)
out["stream_lora_vs_merged"] = diff(run(unet, inputs), merged)
clone.unpatch_model(cpu)
out["stream_unpatched_vs_plain"] = diff(run(unet, inputs), plain)
streaming.detach(unet)

# fp8 storage: ComfyUI's partial load keeps the layers' cast flag (the weights stay fp8), its LoRA patches apply
# to fp8 weights (ComfyUI rounds the patched weight back to fp8 stochastically; the pack's merge rounds to nearest)
b8 = SVDBundle(make_tiny_model(seed=2).eval().requires_grad_(False), "svd", "tiny8")
store_unet_fp8(b8, "fp8_e4m3fn")
u8 = b8.model.unet
plain8 = run(u8, inputs)
out["fp8_vs_plain"] = diff(plain8, plain)
p8 = managed.manage(b8).patchers["unet"]
p8.patch_model(cpu, lowvram_model_memory=p8.model_size() // 3)
out["fp8_lowvram"] = bool(u8.model_lowvram)
out["fp8_partial_vs_plain8"] = diff(run(u8, inputs), plain8)
p8.unpatch_model(cpu)
linears = [m for m in u8.modules() if isinstance(m, torch.nn.Linear)]
out["fp8_flags_kept"] = all(m.comfy_cast_weights and m.weight.dtype == torch.float8_e4m3fn for m in linears)
merged8 = run(apply_lora(b8, state, 0.7).model.unet, inputs)
c8 = managed.manage(managed.with_lora(b8, state, validate_lora(b8, state), 0.7)).patchers["unet"]
c8.patch_model(cpu)
out["fp8_lora_vs_merged8"] = diff(run(u8, inputs), merged8)
out["fp8_merged_vs_plain8"] = diff(merged8, plain8)
c8.unpatch_model(cpu)
out["fp8_unpatched_vs_plain8"] = diff(run(u8, inputs), plain8)
del b8, u8, p8, c8

# eviction: a core model and the pack's, then ComfyUI's free_memory as load_models_gpu calls it before loading
# another model on a GPU (keep_loaded: the model being loaded; on the CPU it never calls it, so ask directly)
core = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
with managed.loaded(bundle, managed.PARTS):
    pass
mm.load_models_gpu([core.patcher])
out["before"] = sorted(type(p.model).__name__ for p in mm.loaded_models())
keep = [m for m in mm.current_loaded_models if m.model is core.patcher]
mm.free_memory(1e30, cpu, keep_loaded=keep)
out["after"] = sorted(type(p.model).__name__ for p in mm.loaded_models())
mm.free_memory(1e30, cpu)
out["after_all"] = sorted(type(p.model).__name__ for p in mm.loaded_models())
print("RESULT " + json.dumps(out))
'''


def test_comfy_model_patcher_manages_the_pack_unet(tmp_path):
    script = tmp_path / "patcher_probe.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([support.comfyui_python(), str(script), str(support.REPO), support.COMFYUI],
                          capture_output=True, text=True, cwd=support.COMFYUI, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-4000:]
    r = json.loads(line[len("RESULT "):])
    assert r["active"] and r["patcher"] == "comfy.model_patcher.ModelPatcher"
    assert r["lowvram"] and r["left_behind"] > 0 and 0 < r["loaded_bytes"] < r["total_bytes"]
    assert r["partial_vs_plain"] == 0.0  # cast-on-use on the CPU: the same tensors, the same kernels
    assert r["cast_after_unpatch"] == 0
    scale = r["merged_vs_plain"]
    assert scale > 1e-3  # the LoRA changes the output, so the next comparisons mean something
    assert r["lowvram_patches"] > 0 and r["partial_lora_vs_merged"] <= 1e-5 * (1 + scale)  # ComfyUI's LoRA math
    assert r["full_lora_vs_merged"] <= 1e-5 * (1 + scale) and r["unpatched_vs_plain"] == 0.0
    assert r["stream_lora_vs_merged"] <= 1e-5 * (1 + scale) and r["stream_unpatched_vs_plain"] <= 1e-5
    print({k: v for k, v in r.items() if k.startswith("fp8")})
    assert r["fp8_lowvram"] and r["fp8_partial_vs_plain8"] == 0.0 and r["fp8_flags_kept"]
    assert 0 < r["fp8_vs_plain"] < 0.5 * float(scale + 1)  # fp8 rounding moves the output, but far less than O(1)
    assert r["fp8_merged_vs_plain8"] > 1e-3  # the LoRA changes the fp8 model's output too
    assert r["fp8_lora_vs_merged8"] < 0.5 * r["fp8_merged_vs_plain8"]  # two roundings of the same patched weights
    assert r["fp8_unpatched_vs_plain8"] == 0.0  # ComfyUI restored the fp8 weights exactly
    assert r["before"] == sorted(["VideoUNet", "AutoencoderKL", "AutoencoderKL", "OpenCLIPVisionTower", CORE])
    assert r["after"] == [CORE]  # the pack's models evicted for the one being loaded, as core ones would be
    assert r["after_all"] == []
