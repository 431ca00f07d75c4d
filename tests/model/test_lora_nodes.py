"""The LoRA nodes (loader, validate, convert) and the bridge's LoRA folders; stock ComfyUI's LoRA loader on our
files (optional, needs COMFYUI_PATH); non-finite strength and alpha."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from lora_support import run, tiny_unet, to_peft, trained_lora, unchanged, unet_inputs
from train_support import one_thread_fixture

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, bridge
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError, InputError
from comfyui_svd_lab.svd_model.lora import (
    apply_lora,
    base_model_hash,
    convert_peft_lora,
    inject_lora,
    lora_metadata,
    lora_state_dict,
    save_lora,
)
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.checkpoint import save_checkpoint
from comfyui_svd_lab.svd_model.weights.detect import infer_config
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, write_tiny_checkpoint

# tiny models: one intra-op thread is several times faster than two on a loaded machine
_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def trained():
    """(injected UNet with trained-like adapters on every Linear/Conv, its ComfyUI state, its output)."""
    return trained_lora()


# -------------------------------------------------------------------------------------------- nodes


@pytest.fixture
def lora_folders(tmp_path, trained):
    models, loras = tmp_path / "models", tmp_path / "loras"
    models.mkdir()
    loras.mkdir()
    write_tiny_checkpoint(models / "tiny.safetensors", seed=2)
    _, state, _ = trained
    save_lora(loras / "motion.safetensors", state, metadata=lora_metadata(
        rank=4, alpha=2.0, preset="all", modules=len(state) // 3, steps=5,
        base_model_hash=base_model_hash(tiny_unet(2))))
    bridge.configure(models_dirs=[models], loras_dirs=[loras], output_dir=tmp_path / "out")
    yield loras
    bridge.reset()


def test_lora_nodes_load_validate_convert(lora_folders, trained):
    _, state, injected = trained
    loader = NODE_CLASS_MAPPINGS["SVDLab_LoraLoader"]
    with torch.inference_mode():  # as ComfyUI runs every node
        bundle, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("tiny.safetensors", "fp32", "auto", "none")
        patched, info = loader().load(bundle, "motion.safetensors", 1.0)
    before = {k: v.clone() for k, v in make_tiny_model(seed=2).unet.state_dict().items()}
    assert loader.INPUT_TYPES()["required"]["lora_name"][0] == ["motion.safetensors"]
    assert "not found" in loader.VALIDATE_INPUTS("nope.safetensors") and loader.VALIDATE_INPUTS(None) is True
    assert "0 unmatched" in info and "rank 4" in info and patched is not bundle
    out = run(patched.model.unet, unet_inputs())
    assert (out - injected).abs().max() <= 1e-5 * injected.abs().max() + 1e-6
    assert unchanged(bundle.model.unet, before)  # input untouched
    half, _ = loader().load(bundle, "motion.safetensors", 0.5)
    assert loader().load(bundle, "motion.safetensors", 0.0)[0] is bundle
    q = "input_blocks.1.1.time_stack.0.attn1.to_q.weight"
    assert torch.allclose(half.model.unet.state_dict()[q] - before[q],
                          0.5 * (patched.model.unet.state_dict()[q] - before[q]), atol=1e-6)
    report = NODE_CLASS_MAPPINGS["SVDLab_LoraValidate"]().validate(bundle, "motion.safetensors", True)
    text = report["result"][0]
    assert text.startswith("motion.safetensors") and "OK: " in text and "same base weights" in text
    assert report["ui"]["text"] == [text]
    assert "DIFFERENT base weights" in NODE_CLASS_MAPPINGS["SVDLab_LoraValidate"]().validate(
        patched, "motion.safetensors", True)["result"][0]
    peft = to_peft(state, bundle, "peft", "unet.")
    save_lora_peft = lora_folders / "svd_xtend.safetensors"
    save_checkpoint(save_lora_peft, peft, {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2.0})})
    convert = NODE_CLASS_MAPPINGS["SVDLab_LoraConvert"]
    assert "must be a name, not a path" in convert.VALIDATE_INPUTS("svd_xtend.safetensors", "../x")
    result = convert().convert("svd_xtend.safetensors", "", 0.0, False, bundle)
    name, info = result["result"]
    written = bridge.lora_output_dir() / name  # nodes write into the output folder, never into a model folder
    assert name == "svd_xtend_comfyui.safetensors" and written.is_file() and "alpha from metadata" in info
    _, converted_info = loader().load(bundle, name, 1.0)
    assert "0 unmatched" in converted_info
    with pytest.raises(CheckpointError, match="exists"):
        convert().convert("svd_xtend.safetensors", "", 0.0, False, bundle)
    with pytest.raises(CheckpointError, match="already uses ComfyUI naming"):
        convert().convert("motion.safetensors", "again", 0.0, False)
    with pytest.raises(InputError, match="must be a name, not a path"):
        convert().convert("svd_xtend.safetensors", "a/b", 0.0, False)


def test_lora_loader_rejects_a_checkpoint_as_lora(lora_folders):
    (lora_folders / "tiny.safetensors").write_bytes(Path(bridge.resolve_checkpoint("tiny.safetensors")).read_bytes())
    bundle, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("tiny.safetensors", "fp32", "auto", "none")
    with pytest.raises(CheckpointError, match="not a LoRA file"):
        NODE_CLASS_MAPPINGS["SVDLab_LoraLoader"]().load(bundle, "tiny.safetensors", 1.0)


# --------------------------------------------------------------------------------- stock ComfyUI (optional)

COMFY_CHECK = """
import json, logging, sys, types
sys.argv = ["x", "--cpu"]
sys.path.insert(0, {comfy!r})
import comfy.options
comfy.options.enable_args_parsing()
import torch, comfy.lora, comfy.model_detection
from safetensors.torch import load_file
missed = []
class Catch(logging.Handler):
    def emit(self, record):
        missed.append(record.getMessage()) if "not loaded" in record.getMessage() else None
logging.getLogger().addHandler(Catch())
base, ours, lora = (load_file({d!r} + n) for n in ("/base.safetensors", "/ours.safetensors", "/lora.safetensors"))
model = types.SimpleNamespace(state_dict=lambda: {{"diffusion_model." + k: v for k, v in base.items()}},
                              model_config=types.SimpleNamespace(unet_config={{}}))
patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model, {{}}))
worst = max((a.calculate_weight(base[k[16:]].clone(), k, 0.7, 1.0, None, lambda w: w) - ours[k[16:]]).abs().max().item()
            for k, a in patches.items())
result = {{"tiny_patched": len(patches), "tiny_missed": len(missed), "worst": worst}}
keys = {keys!r}
if keys:
    sd = {{k: torch.empty(v, device="meta") for k, v in json.load(open(keys)).items()}}
    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    with torch.device("meta"):
        svd = config.get_model(sd, "model.", device="meta")
    missed.clear()
    full = comfy.lora.load_lora(load_file({d!r} + "/full.safetensors"), comfy.lora.model_lora_keys_unet(svd, {{}}))
    result.update(model=type(config).__name__, full_patched=len(full), full_missed=len(missed))
print(json.dumps(result))
"""


def test_stock_comfyui_loads_our_lora_files(trained, tmp_path, reference_dir):
    """Runs ComfyUI's own comfy.lora (key map, load_lora, LoRA adapter math) on our files, in ComfyUI's Python.
    Needs COMFYUI_PATH (a ComfyUI checkout; COMFYUI_PYTHON or COMFYUI_PATH/.venv/bin/python)."""
    comfy = os.environ.get("COMFYUI_PATH")
    if not comfy:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run stock ComfyUI's LoRA loader on our files")
    python = os.environ.get("COMFYUI_PYTHON") or str(Path(comfy) / ".venv" / "bin" / "python")
    _, state, _ = trained
    base = tiny_unet(2)
    save_checkpoint(tmp_path / "base.safetensors", base.state_dict())
    save_checkpoint(tmp_path / "ours.safetensors", apply_lora(base, state, 0.7).state_dict())
    save_lora(tmp_path / "lora.safetensors", state, metadata={})
    keys = reference_dir / "svd_xt_keys.json"
    if keys.is_file():
        official = {k: tuple(v) for k, v in json.loads(keys.read_text()).items()}
        with torch.device("meta"):
            full = VideoUNet(infer_config(official).unet)
        inject_lora(full, rank=2, preset="all")
        small = {k: torch.full(v.shape, 0.01) for k, v in lora_state_dict(full).items()}
        save_lora(tmp_path / "full.safetensors", small, metadata={})
    script = COMFY_CHECK.format(comfy=comfy, d=str(tmp_path), keys=str(keys) if keys.is_file() else "")
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tiny_patched"] == len(state) // 3 and result["tiny_missed"] == 0
    assert result["worst"] <= 1e-6  # ComfyUI's merge == ours
    if keys.is_file():
        assert result["model"] == "SVD_img2vid" and result["full_patched"] == 574 and result["full_missed"] == 0


def test_bridge_lists_loras_from_comfyui_folders(tmp_path, monkeypatch):
    loras, svd = tmp_path / "loras", tmp_path / "svd"
    (loras / "motion").mkdir(parents=True)
    (svd / "loras").mkdir(parents=True)
    for path in (loras / "motion" / "a.safetensors", svd / "loras" / "b.safetensors", svd / "ckpt.safetensors",
                 loras / "notes.txt"):
        path.write_bytes(b"")
    fp = types.ModuleType("folder_paths")
    fp.folder_names_and_paths = {"loras": ([str(loras)], set()), "svd": ([str(svd)], set())}
    fp.get_folder_paths = lambda key: fp.folder_names_and_paths[key][0]
    fp.get_output_directory = lambda: str(tmp_path / "output")
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    fp.get_input_directory = lambda: str(tmp_path / "input")
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    assert bridge.list_loras() == ["motion/a.safetensors", "loras/b.safetensors"]
    assert bridge.find_lora("loras/b.safetensors") == svd / "loras" / "b.safetensors"
    assert bridge.find_lora("ckpt.safetensors") is None  # the svd folder serves only its loras/ subfolder
    assert bridge.find_lora("../svd/ckpt.safetensors") is None and bridge.find_lora(str(loras / "x")) is None
    # converted LoRAs are written into the output folder (never a model folder) and listed from there
    assert bridge.lora_output_dir() == tmp_path / "output" / "SVDLab" / "loras"
    (tmp_path / "output" / "SVDLab" / "loras").mkdir(parents=True)
    (tmp_path / "output" / "SVDLab" / "loras" / "c.safetensors").write_bytes(b"")
    assert bridge.list_loras()[-1] == "c.safetensors"
    with pytest.raises(CheckpointError, match="not found in ComfyUI's loras folder"):
        bridge.resolve_lora("gone.safetensors")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_strength_and_alpha_are_refused(value):
    with pytest.raises(ConfigError, match="strength must be a finite number"):
        apply_lora(tiny_unet(0), {}, value)
    with pytest.raises(ConfigError, match="alpha must be a positive finite number"):
        convert_peft_lora({}, alpha=value)
