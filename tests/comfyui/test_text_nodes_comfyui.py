"""The pack's text-to-video nodes in a real ComfyUI: Text Encoder Loader -> Text To Video Conditioning -> Sampler ->
Decode on a tiny text-conditioned checkpoint (svd_lab.conditioning = text) with a tiny OpenCLIP text tower and BPE
vocabulary in models/clip. The server log (--verbose DEBUG) shows ComfyUI loading the text tower as a model of its
own (OpenCLIPTextTower) next to the pack's networks, and /free unloading it like the others.

Runs only when COMFYUI_PATH points at a ComfyUI checkout (tests/comfyui_support.py).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import comfyui_support as support
import pytest
from text_support import write_text_files

from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

pytestmark = pytest.mark.skipif(not support.COMFYUI, reason=support.SKIP_REASON)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_text")
    image_model = write_tiny_checkpoint(root / "tiny_image.safetensors", seed=5)
    bundle = load_bundle(image_model)
    bundle.conditioning = "text"  # as a t2v finetune saves it (the weights stay random)
    save_bundle(bundle, root / "models" / "checkpoints" / "tiny_t2v.safetensors")
    tower, vocab = write_text_files(root / "models" / "clip")
    try:
        with support.comfyui_server(root, args=("--verbose", "DEBUG")) as base:
            yield base, root, tower.name, vocab.name
    except support.ServerError as exc:
        pytest.fail(str(exc))


def _save_video() -> dict:
    """The SVD-XT example's Save Video node (every input as the editor saves it), fed by node 5."""
    example = json.loads((support.REPO / "example_workflows" / "api" / "svd_xt_image_to_video.json").read_text())
    node = next(n for n in example.values() if n["class_type"] == "SVDLab_SaveVideo")
    inputs = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
    return {"class_type": "SVDLab_SaveVideo", "inputs": {**inputs, "images": ["5", 0], "filename_prefix": "SVDLab/t2v"}}


def _prompt(tower: str, vocab: str, seed: int) -> dict:
    return {
        "1": {"class_type": "SVDLab_CheckpointLoader", "inputs": {"ckpt_name": "tiny_t2v.safetensors", "dtype": "fp32",
                                                                  "variant": "auto", "offload": "none"}},
        "2": {"class_type": "SVDLab_TextEncoderLoader", "inputs": {"text_tower": tower, "tokenizer": vocab}},
        "3": {"class_type": "SVDLab_TextToVideoConditioning", "inputs": {
            "model": ["1", 0], "text_encoder": ["2", 0], "prompt": "the red cat", "negative_prompt": "",
            "width": 64, "height": 48, "frames": 3, "fps": 7, "motion_bucket_id": 127}},
        "4": {"class_type": "SVDLab_Sampler", "inputs": {
            "model": ["1", 0], "conditioning": ["3", 0], "sampler": "euler", "schedule": "karras", "steps": 2,
            "min_cfg": 1.0, "max_cfg": 2.5, "guidance": "auto", "seed": seed, "denoise": 1.0}},
        "5": {"class_type": "SVDLab_Decode", "inputs": {"model": ["1", 0], "latent": ["4", 0], "chunk_size": 3,
                                                        "overlap": 0}},
        "6": _save_video(),
    }


def test_text_to_video_nodes_run_and_the_text_tower_is_a_comfyui_model(server):
    base, root, tower, vocab = server
    info = support.get_json(base + "/object_info/SVDLab_TextEncoderLoader")["SVDLab_TextEncoderLoader"]
    assert tower in info["input"]["required"]["text_tower"][0] and vocab in info["input"]["required"]["tokenizer"][0]
    log = root / "server.log"
    mark = log.stat().st_size
    prompt = _prompt(tower, vocab, 1)
    support.run_prompt(base, prompt)
    assert list((root / "output" / "SVDLab").glob("t2v_*.mp4"))
    text = log.read_bytes()[mark:].decode("utf-8", "replace")
    loaded = re.findall(r"Requested to load (\w+)", text)
    assert "OpenCLIPTextTower" in loaded and "VideoUNet" in loaded, text[-3000:]
    mark = log.stat().st_size
    status, _ = support.post_json(base + "/free", {"unload_models": True})
    assert status == 200
    deadline = time.time() + 60
    while time.time() < deadline and "OpenCLIPTextTower" not in log.read_bytes()[mark:].decode("utf-8", "replace"):
        time.sleep(0.5)
    unloaded = re.findall(r"Unloading (\w+)", log.read_bytes()[mark:].decode("utf-8", "replace"))
    assert "OpenCLIPTextTower" in unloaded and "VideoUNet" in unloaded


def test_an_image_model_is_refused_with_the_zero_shot_hint(server):
    base, root, tower, vocab = server
    Path(root / "models" / "checkpoints" / "tiny_image.safetensors").write_bytes(
        (root / "tiny_image.safetensors").read_bytes())
    prompt = _prompt(tower, vocab, 2)
    prompt["1"]["inputs"]["ckpt_name"] = "tiny_image.safetensors"
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    status, reply = support.queue_prompt(base, prompt)
    assert status == 200, reply  # valid: the model's conditioning is known only once it is loaded
    entry = support.wait_history(base, reply["prompt_id"], 300)
    errors = support.execution_errors(entry)
    assert entry["status"]["status_str"] == "error" and errors
    assert "image-to-video model" in str(errors) and "zero-shot" in str(errors)
