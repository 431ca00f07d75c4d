"""text_to_image_to_video in a real ComfyUI: prompt -> core SD image nodes -> the pack's SVD nodes -> a video.

The server gets two tiny random-weight checkpoints built here: the pack's SVD stand-in (write_tiny_checkpoint)
and a core image checkpoint in the smallest layout ComfyUI's CheckpointLoaderSimple loads as SD1.5
(:func:`write_tiny_sd15_checkpoint`). The example's API file runs through /prompt at a small size and through
comfy-cli (`comfy run --workflow FILE --host --port --wait`) against the same server; each writes a video. The
example's core nodes are also checked against the server's /object_info: the UI file, converted with the
server's own input declarations, is the API file.

Runs only when COMFYUI_PATH points at a ComfyUI checkout (tests/comfyui_support.py starts the server on the CPU
with a temporary base directory); the comfy-cli part needs comfy-cli in this environment (the `test` extra).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import comfyui_support as support
import pytest
import torch
from safetensors.torch import save_file

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.svd_model.media.video import probe_video
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint
from comfyui_svd_lab.workflow import load_workflow

pytestmark = pytest.mark.skipif(not support.COMFYUI, reason=support.SKIP_REASON)
EXAMPLES = support.REPO / "example_workflows"
UI_FILE = EXAMPLES / "text_to_image_to_video.json"
API_FILE = EXAMPLES / "api" / UI_FILE.name
SD_CKPT, SVD_CKPT = "tiny_sd15.safetensors", "tiny_svd.safetensors"
CORE_TYPES = {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode"}
#: What a complete checkpoint must not make ComfyUI log (parts missing or left uninitialised).
LOAD_WARNINGS = ("clip missing", "Missing VAE keys", "no CLIP/text encoder weights", "No VAE weights detected",
                 "not a checkpoint file", "no match {")


# ------------------------------------------------------------------------------------- tiny SD1.5 checkpoint


def write_tiny_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint (fp16, 278 MB, 139 M parameters, written in about 2 s) that ComfyUI's
    CheckpointLoaderSimple detects as SD1.5 and loads without a missing-key warning (ComfyUI 0.33,
    comfy/model_detection.py, comfy/supported_models.py, comfy/sd.py):
    - UNet (model.diffusion_model.*): SD15 is matched on model_channels 320 (input_blocks.0.0) and a cross-attention
      context of 768 (attn2.to_k), a conv proj_in, no label_emb, no temporal layers; the levels, res blocks and
      transformer depths are read from the keys. So: one level (no downsample), one res block with a one-block
      transformer, two res-only output blocks, no middle block (ComfyUI builds none when it has no keys) - 13 M;
    - VAE (first_stage_model.*): a TAESD (taesd_encoder/taesd_decoder, 64 channels, 2.4 M), which ComfyUI's VAE
      class recognises; an SD KL VAE would have to be full size (its channel counts are fixed, not read);
    - text encoder (cond_stage_model.transformer.text_model.*): CLIP-L at full size (123 M): ComfyUI builds it
      from a fixed config, and weights absent from the file stay uninitialised (the prompt then encodes to NaN).
    """
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def weight(name: str, *shape: int, scale: float) -> None:
        sd[name] = (torch.randn(*shape, generator=gen) * scale).half()

    def zeros(name: str, n: int) -> None:
        sd[name] = torch.zeros(n, dtype=torch.float16)

    def linear(name: str, out: int, inp: int, bias: bool = True) -> None:
        weight(f"{name}.weight", out, inp, scale=inp**-0.5)
        if bias:
            zeros(f"{name}.bias", out)

    def conv(name: str, out: int, inp: int, k: int, bias: bool = True) -> None:
        weight(f"{name}.weight", out, inp, k, k, scale=(inp * k * k) ** -0.5)
        if bias:
            zeros(f"{name}.bias", out)

    def norm(name: str, n: int) -> None:
        sd[f"{name}.weight"] = torch.ones(n, dtype=torch.float16)
        zeros(f"{name}.bias", n)

    ch, emb, ctx = 320, 1280, 768  # SD1.5's model_channels, time embedding and CLIP-L context width
    unet = "model.diffusion_model."

    def res_block(p: str, inp: int) -> None:
        norm(p + "in_layers.0", inp)
        conv(p + "in_layers.2", ch, inp, 3)
        linear(p + "emb_layers.1", ch, emb)
        norm(p + "out_layers.0", ch)
        conv(p + "out_layers.3", ch, ch, 3)
        if inp != ch:
            conv(p + "skip_connection", ch, inp, 1)

    linear(unet + "time_embed.0", emb, ch)
    linear(unet + "time_embed.2", emb, emb)
    conv(unet + "input_blocks.0.0", ch, 4, 3)
    res_block(unet + "input_blocks.1.0.", ch)
    st = unet + "input_blocks.1.1."
    norm(st + "norm", ch)
    conv(st + "proj_in", ch, ch, 1)  # a conv, not a linear: use_linear_in_transformer False, as SD15 needs
    conv(st + "proj_out", ch, ch, 1)
    block = st + "transformer_blocks.0."
    for attn, kv in (("attn1", ch), ("attn2", ctx)):
        linear(f"{block}{attn}.to_q", ch, ch, bias=False)
        linear(f"{block}{attn}.to_k", ch, kv, bias=False)
        linear(f"{block}{attn}.to_v", ch, kv, bias=False)
        linear(f"{block}{attn}.to_out.0", ch, ch)
    linear(block + "ff.net.0.proj", 8 * ch, ch)  # GEGLU
    linear(block + "ff.net.2", ch, 4 * ch)
    for name in ("norm1", "norm2", "norm3"):
        norm(block + name, ch)
    res_block(unet + "output_blocks.0.0.", 2 * ch)
    res_block(unet + "output_blocks.1.0.", 2 * ch)
    norm(unet + "out.0", ch)
    conv(unet + "out.2", 4, ch, 3)

    vae = "first_stage_model."
    for part, convs, blocks, strided, last in (
        ("taesd_encoder", ((0, 3, 64),), (1, 3, 4, 5, 7, 8, 9, 11, 12, 13), (2, 6, 10), (14, 64, 4)),
        ("taesd_decoder", ((1, 4, 64),), (3, 4, 5, 8, 9, 10, 13, 14, 15, 18), (7, 12, 17), (19, 64, 3)),
    ):
        for index, inp, out in (*convs, last):
            conv(f"{vae}{part}.{index}", out, inp, 3)
        for index in blocks:
            for j in (0, 2, 4):
                conv(f"{vae}{part}.{index}.conv.{j}", 64, 64, 3)
        for index in strided:
            conv(f"{vae}{part}.{index}", 64, 64, 3, bias=False)
    sd[vae + "vae_scale"] = torch.tensor(1.0, dtype=torch.float16)
    sd[vae + "vae_shift"] = torch.tensor(0.0, dtype=torch.float16)

    text = "cond_stage_model.transformer.text_model."
    width, hidden = 768, 3072
    weight(text + "embeddings.token_embedding.weight", 49408, width, scale=0.02)
    weight(text + "embeddings.position_embedding.weight", 77, width, scale=0.01)
    for i in range(12):
        layer = f"{text}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{layer}self_attn.{proj}", width, width)
        norm(layer + "layer_norm1", width)
        norm(layer + "layer_norm2", width)
        linear(layer + "mlp.fc1", hidden, width)
        linear(layer + "mlp.fc2", width, hidden)
    norm(text + "final_layer_norm", width)

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"note": "tiny random SD1.5-layout checkpoint for tests"})
    return path


# ------------------------------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_t2v")
    write_tiny_sd15_checkpoint(root / "models" / "checkpoints" / SD_CKPT, seed=1)
    write_tiny_checkpoint(root / "models" / "svd" / SVD_CKPT, seed=5)
    try:
        with support.comfyui_server(root) as base:
            yield base, root
    except support.ServerError as exc:
        pytest.fail(str(exc))


def small(prefix: str, seed: int = 23) -> dict:
    """The example's API prompt on the tiny checkpoints at a small size (found by class, not by node id); another
    ``seed`` makes ComfyUI run every node again instead of taking their cached outputs."""
    prompt = json.loads(API_FILE.read_text())
    sizes = {
        "CheckpointLoaderSimple": {"ckpt_name": SD_CKPT},
        "EmptyLatentImage": {"width": 64, "height": 64},
        "KSampler": {"steps": 2, "seed": seed},
        "SVDLab_CheckpointLoader": {"ckpt_name": SVD_CKPT},
        "SVDLab_ImageToVideoConditioning": {"width": 64, "height": 48, "frames": 3},
        "SVDLab_Sampler": {"steps": 2},
        "SVDLab_Decode": {"chunk_size": 2, "overlap": 1},
        "SVDLab_SaveVideo": {"filename_prefix": prefix},
    }
    for node in prompt.values():
        node["inputs"].update(sizes.get(node["class_type"], {}))
    assert set(sizes) <= {n["class_type"] for n in prompt.values()}  # each override found its node
    return prompt


def videos(root: Path, prefix: str) -> list[Path]:
    return sorted((root / "output").glob(f"{prefix}_*.mp4"))


def check_video(path: Path) -> None:
    info = probe_video(path, count_frames=True)
    assert (info.frame_count, info.width, info.height) == (3, 64, 48)


@functools.cache
def _build_examples():
    """scripts/build_examples.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_examples_t2v", support.REPO / "scripts" / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------------------- the tests


def test_core_nodes_of_the_ui_file_are_declared_as_the_server_declares_them(server):
    base, _ = server
    info = support.get_json(base + "/object_info")

    def from_server(name: str) -> type:
        declared = info[name]["input"]
        return type(name, (), {"INPUT_TYPES": classmethod(lambda cls: declared),
                               "RETURN_TYPES": tuple(info[name]["output"])})

    registry = {**NODE_CLASS_MAPPINGS, **{name: from_server(name) for name in CORE_TYPES}}
    ui_prompt, _ = load_workflow(UI_FILE, registry)
    api_prompt, _ = load_workflow(API_FILE, NODE_CLASS_MAPPINGS)
    assert ui_prompt == api_prompt
    for name, stand_in in _build_examples().CORE_NODES.items():  # what build_examples wrote the UI file with
        assert list(stand_in.INPUT_TYPES()["required"]) == info[name]["input_order"]["required"]
        assert list(stand_in.RETURN_TYPES) == info[name]["output"]


def test_text_to_video_runs_through_prompt(server):
    base, root = server
    support.run_prompt(base, small("t2v_prompt"), json.loads(UI_FILE.read_text()), timeout=120)
    (video,) = videos(root, "t2v_prompt")
    check_video(video)
    log = (root / "server.log").read_text()
    assert "model_type EPS" in log and "Requested to load SD1ClipModel" in log and "Requested to load TAESD" in log
    assert not [w for w in LOAD_WARNINGS if w in log], log[-3000:]


def _comfy_cli() -> str | None:
    here = Path(sys.executable).parent / "comfy"
    return str(here) if here.exists() else shutil.which("comfy")


def _to_ui(prompt: dict) -> dict:
    """The UI (editor) format of an API prompt, as scripts/build_examples.py writes the example's UI file."""
    return _build_examples().to_ui(prompt)


@pytest.mark.parametrize("fmt, seed", [("api", 24), ("ui", 25)])
def test_text_to_video_runs_through_comfy_cli(server, tmp_path, fmt, seed):
    """`comfy run --workflow FILE --host --port --wait` (comfy-cli) against the server started here, with the API
    file and with the UI file (which comfy-cli converts with the server's /object_info)."""
    comfy = _comfy_cli()
    if comfy is None:
        pytest.skip("comfy-cli is not installed (pip install comfy-cli, or the `test` extra)")
    base, root = server
    prefix = f"t2v_comfy_cli_{fmt}"
    prompt = small(prefix, seed)
    workflow = tmp_path / f"text_to_video_small_{fmt}.json"
    workflow.write_text(json.dumps(prompt if fmt == "api" else _to_ui(prompt)))
    home = tmp_path / "home"  # comfy-cli keeps its config and job state in the user's folders: a fresh one
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "COMFY_NO_WATCH": "1",
           "NO_COLOR": "1"}
    url = urlparse(base)
    cmd = [comfy, "--skip-prompt", "--json", "run", "--workflow", str(workflow), "--host", url.hostname,
           "--port", str(url.port), "--wait", "--timeout", "60", "--no-notify"]
    try:
        done = subprocess.run(cmd, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"comfy run did not finish in 120 s: {exc.stdout!s:.2000} {exc.stderr!s:.2000}")
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    envelope = json.loads(done.stdout.strip().splitlines()[-1])
    assert envelope["ok"] and envelope["data"]["status"] == "completed", envelope
    ran = {prompt[nid]["class_type"] for nid in envelope["data"]["executed_node_ids"]}
    assert {"KSampler", "VAEDecode", "SVDLab_Sampler", "SVDLab_SaveVideo"} <= ran  # not outputs cached earlier
    (video,) = videos(root, prefix)
    assert any(video.name in url for url in envelope["data"]["outputs"])
    check_video(video)
