"""Regenerate example_workflows/: the UI-format workflows (ComfyUI templates), their API-format twins
in example_workflows/api/, and the small synthetic inputs they use (example_workflows/inputs/).

    python scripts/build_examples.py            # everything
    python scripts/build_examples.py NAME ...   # only these WORKFLOWS entries (e.g. training/svd_curate_and_finetune)

The API format is written by hand below; the UI format is derived from it with the node classes'
INPUT_TYPES (widgets_values in declaration order, links, a simple left-to-right layout). ComfyUI core nodes
(text_to_image_to_video) are described by CORE_NODES, stand-ins with their declared inputs and outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.svd_model.media.video import write_video
from comfyui_svd_lab.workflow.spec import input_specs

ROOT = Path(__file__).resolve().parents[1] / "example_workflows"
IMAGE = "svd_lab_example.png"
VIDEO = "svd_lab_example.mp4"


def scene(width: int, height: int, shift: float = 0.0) -> np.ndarray:
    """A synthetic landscape (sky, sun, hills, water) as uint8 (H, W, 3); `shift` pans it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x = x / width + shift
    y = y / height
    img = np.zeros((height, width, 3), np.float32)
    img[:] = np.stack([0.35 + 0.4 * y, 0.55 + 0.3 * y, 0.95 - 0.2 * y], -1)  # sky
    sun = np.exp(-(((x - 0.72) * 1.8) ** 2 + (y - 0.25) ** 2) * 90)[..., None]
    img = img * (1 - sun) + sun * np.array([1.0, 0.92, 0.6])
    hills = 0.62 + 0.06 * np.sin(x * 9.0) + 0.03 * np.sin(x * 23.0 + 1.0)
    land = (y > hills)[..., None]
    img = np.where(land, np.stack([0.2 + 0.2 * y, 0.45 + 0.1 * np.sin(x * 40), 0.2 + 0.0 * y], -1), img)
    water = (y > 0.85)[..., None]
    ripple = 0.05 * np.sin(x * 120 + y * 60)
    img = np.where(water, np.stack([0.15 + ripple, 0.35 + ripple, 0.6 + ripple], -1), img)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_inputs() -> None:
    from PIL import Image

    (ROOT / "inputs").mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(1024, 576)).save(ROOT / "inputs" / IMAGE, optimize=True)
    frames = torch.from_numpy(np.stack([scene(512, 288, shift=0.004 * i) for i in range(25)]))
    write_video(frames, ROOT / "inputs" / VIDEO, fps=8, quality=60)


CURATION_FOLDER = "svd_lab_curation_example"


def write_curation_inputs() -> None:
    """A few tiny synthetic videos (hard cuts, a fade, motion, text) for the curation example."""
    from comfyui_svd_lab.svd_model.curation.synthetic import make_video

    folder = ROOT / "inputs" / CURATION_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        ("pan_and_cut.mp4", {"shots": (62, 58), "motion": (2.5, 0.5)}),
        ("fade_and_static.mp4", {"shots": (58, 62), "transitions": ("fade",), "motion": (0.0, 1.5)}),
        ("caption_text.mp4", {"shots": (70,), "motion": (3.0,), "text": (True,)}),
    ]
    for i, (name, spec) in enumerate(specs):
        make_video(folder / name, size=(192, 108), seed=10 + i, gop=25, crf=30, **spec)


def curate_folder() -> dict:
    return {
        "1": {"class_type": "SVDLab_LoadVideoFolder", "inputs": {
            "folder": CURATION_FOLDER, "extensions": "mp4,mov,mkv,webm", "limit": 0}},
        "2": {"class_type": "SVDLab_CurateFolder", "inputs": {
            "videos": ["1", 0], "output_name": "SVDLab/curation", "if_exists": "overwrite", "workers": 0,
            "text_score": True, "clip_checkpoint": "none", "write_clips": "none", "write_keyframes": True,
            "rules": "motion_score:bottom=0.25, text_area:max=0.07", "settings": ""}},
    }


def curate_and_finetune() -> dict:
    """Curate the example folder (no CLIP, no captions), train a LoRA on the kept clips with each clip's measured
    fps and motion bucket as conditioning, save the merged model. Small sizes and few steps: a quick demo."""
    return {
        "1": loader("svd_xt.safetensors"),
        "2": {"class_type": "SVDLab_LoadVideoFolder", "inputs": {
            "folder": CURATION_FOLDER, "extensions": "mp4,mov,mkv,webm", "limit": 0}},
        "3": {"class_type": "SVDLab_CurateFolder", "inputs": {
            "videos": ["2", 0], "output_name": "SVDLab/curation_finetune", "if_exists": "overwrite", "workers": 0,
            "text_score": True, "clip_checkpoint": "none", "write_clips": "none", "write_keyframes": False,
            "rules": "motion_score:bottom=0.25, text_area:max=0.07", "settings": ""}},
        "4": {"class_type": "SVDLab_DatasetFromManifest", "inputs": {
            "manifest": "", "frames": 8, "fps": 7.0, "width": 256, "height": 128, "windows_per_clip": 1, "seed": 0,
            "buckets": "", "only_kept": True, "curated": ["3", 0]}},
        "5": {"class_type": "SVDLab_BuildLatentCache", "inputs": {
            "model": ["1", 0], "dataset": ["4", 0], "cache_name": "", "cond_aug_mode": "exact", "storage": "fp16",
            "rebuild": False}},
        "6": {"class_type": "SVDLab_Train", "inputs": {
            "model": ["1", 0], "cache": ["5", 0], "method": "lora", "trainable": "temporal",
            "mode": "image_to_video", "steps": 30, "learning_rate": 1e-4, "lora_rank": 8, "lora_alpha": 0.0,
            "batch_size": 1, "grad_accum": 1, "precision": "auto", "gradient_checkpointing": True,
            "ema_decay": 0.0, "save_every": 0, "validate_every": 0, "seed": 0,
            "run_name": "svd_curate_and_finetune", "resume": False, "extra_config": ""}},
        "7": {"class_type": "SVDLab_SaveFinetuned", "inputs": {
            "model": ["6", 0], "filename_prefix": "SVDLab/curate_and_finetune", "dtype": "fp16"}},
    }


def loader(ckpt: str) -> dict:
    return {"class_type": "SVDLab_CheckpointLoader",
            "inputs": {"ckpt_name": ckpt, "dtype": "auto", "variant": "auto", "offload": "none"}}


def image_to_video(ckpt: str, frames: int, steps: int, min_cfg: float, max_cfg: float, prefix: str) -> dict:
    return {
        "1": loader(ckpt),
        "2": {"class_type": "SVDLab_LoadImage", "inputs": {"image": IMAGE, "path": ""}},
        "3": {"class_type": "SVDLab_ImageToVideoConditioning", "inputs": {
            "model": ["1", 0], "image": ["2", 0], "width": 1024, "height": 576, "frames": frames, "fps": 7,
            "motion_bucket_id": 127, "cond_aug": 0.02, "seed": 23}},
        "4": {"class_type": "SVDLab_Sampler", "inputs": {
            "model": ["1", 0], "conditioning": ["3", 0], "sampler": "euler", "schedule": "karras", "steps": steps,
            "min_cfg": min_cfg, "max_cfg": max_cfg, "guidance": "linear", "seed": 23, "denoise": 1.0}},
        "5": {"class_type": "SVDLab_Decode", "inputs": {"model": ["1", 0], "latent": ["4", 0], "chunk_size": 14,
                                                        "overlap": 2}},
        "6": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["5", 0], "fps": 7.0, "format": "mp4",
                                                           "quality": 85, "filename_prefix": prefix}},
    }


def video_to_video() -> dict:
    return {
        "1": loader("svd_xt.safetensors"),
        "2": {"class_type": "SVDLab_LoadVideo", "inputs": {
            "video": VIDEO, "frame_cap": 25, "skip_first": 0, "every_nth": 1, "target_fps": 0.0, "width": 1024,
            "height": 576, "resize_mode": "cover", "path": ""}},
        "3": {"class_type": "SVDLab_ImageToVideoConditioning", "inputs": {
            "model": ["1", 0], "image": ["2", 0], "width": 1024, "height": 576, "frames": 25, "fps": 7,
            "motion_bucket_id": 127, "cond_aug": 0.02, "seed": 23}},
        "4": {"class_type": "SVDLab_EncodeFrames", "inputs": {"model": ["1", 0], "images": ["2", 0]}},
        "5": {"class_type": "SVDLab_Sampler", "inputs": {
            "model": ["1", 0], "conditioning": ["3", 0], "sampler": "euler", "schedule": "karras", "steps": 30,
            "min_cfg": 1.5, "max_cfg": 3.0, "guidance": "linear", "seed": 23, "denoise": 0.6, "latent": ["4", 0]}},
        "6": {"class_type": "SVDLab_Decode", "inputs": {"model": ["1", 0], "latent": ["5", 0], "chunk_size": 14,
                                                        "overlap": 2}},
        "7": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["6", 0], "fps": 7.0, "format": "mp4",
                                                           "quality": 85, "filename_prefix": "SVDLab/v2v"}},
    }


OBJECT = "svd_lab_object.png"


def object_rgba(size: int = 512) -> np.ndarray:
    """A synthetic object for the orbit examples: a shaded ball on a small stand, RGBA uint8 (H, W, 4) with a
    transparent background."""
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size * 2 - 1  # [-1, 1], y down
    ball = (x**2 + (y + 0.1) ** 2) < 0.42**2
    nz = np.sqrt(np.clip(0.42**2 - x**2 - (y + 0.1) ** 2, 0, None)) / 0.42
    light = np.clip(0.35 * (-x / 0.42) + 0.45 * (-(y + 0.1) / 0.42) + 0.8 * nz, 0, 1)[..., None]
    rgb = np.where(ball[..., None], light * np.array([0.95, 0.45, 0.2]) + 0.05, 0.0)
    stand = (np.abs(x) < 0.3) & (y > 0.3) & (y < 0.55)
    rgb = np.where(stand[..., None], np.array([0.35, 0.35, 0.4]) * (1.1 - 0.3 * (y[..., None] - 0.3)), rgb)
    alpha = (ball | stand).astype(np.float32)[..., None]
    return (np.clip(np.concatenate([rgb, alpha], -1), 0, 1) * 255).astype(np.uint8)


def write_object_input() -> None:
    from PIL import Image

    Image.fromarray(object_rgba(), "RGBA").save(ROOT / "inputs" / OBJECT, optimize=True)


def orbit(ckpt: str, preset: str, prefix: str) -> dict:
    """SV3D orbit: object image -> square, centred -> cameras -> conditioning -> sampler (auto = triangle
    guidance) -> decode -> video, plus the camera list as JSON."""
    return {
        "1": loader(ckpt),
        "2": {"class_type": "SVDLab_LoadImage", "inputs": {"image": OBJECT, "path": ""}},
        "3": {"class_type": "SVDLab_PrepareObjectImage", "inputs": {"image": ["2", 0], "size": 576,
                                                                    "object_ratio": 0.0, "mask_marks": "background"}},
        "4": {"class_type": "SVDLab_OrbitCameras", "inputs": {
            "preset": preset, "frames": 21, "elevation": 10.0, "seed": 23, "elevations": "", "azimuths": ""}},
        "5": {"class_type": "SVDLab_OrbitConditioning", "inputs": {
            "model": ["1", 0], "image": ["3", 0], "cameras": ["4", 0], "size": 576, "seed": 23}},
        "6": {"class_type": "SVDLab_Sampler", "inputs": {
            "model": ["1", 0], "conditioning": ["5", 0], "sampler": "euler", "schedule": "karras", "steps": 50,
            "min_cfg": 1.0, "max_cfg": 2.5, "guidance": "auto", "seed": 23, "denoise": 1.0}},
        "7": {"class_type": "SVDLab_Decode", "inputs": {"model": ["1", 0], "latent": ["6", 0], "chunk_size": 14,
                                                        "overlap": 0, "conditioning": ["5", 0]}},
        "8": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["7", 0], "fps": 10.0, "format": "mp4",
                                                           "quality": 85, "filename_prefix": prefix}},
        "9": {"class_type": "SVDLab_SaveCameras", "inputs": {"cameras": ["4", 0],
                                                             "filename_prefix": f"{prefix}_cameras"}},
    }


def extend_loop() -> dict:
    """SVD-XT image to video, then 2 more segments and a loop back to the first frame."""
    prompt = image_to_video("svd_xt.safetensors", 25, 30, 1.5, 3.0, "SVDLab/svd_xt_extended")
    prompt["7"] = {"class_type": "SVDLab_ExtendVideo", "inputs": {
        "model": ["1", 0], "images": ["5", 0], "segments": 2, "frames": 25, "overlap": 1, "fps": 7,
        "motion_bucket_id": 127, "cond_aug": 0.02, "seed": 24, "steps": 30, "min_cfg": 1.5, "max_cfg": 3.0,
        "drift_correction": True, "loop": True, "per_segment": ""}}
    prompt["6"]["inputs"]["images"] = ["7", 0]
    return prompt


END_IMAGE = "svd_lab_example_end.png"


def write_keyframe_input() -> None:
    """The last keyframe of the keyframe-interpolation example: the example landscape, panned."""
    from PIL import Image

    Image.fromarray(scene(1024, 576, shift=0.08)).save(ROOT / "inputs" / END_IMAGE, optimize=True)


def flow_interpolation() -> dict:
    """The example video (8 fps) at x2 with optical-flow interpolation (no model)."""
    return {
        "1": {"class_type": "SVDLab_LoadVideo", "inputs": {
            "video": VIDEO, "frame_cap": 0, "skip_first": 0, "every_nth": 1, "target_fps": 0.0, "width": 0,
            "height": 0, "resize_mode": "cover", "path": ""}},
        "2": {"class_type": "SVDLab_FlowInterpolate", "inputs": {
            "images": ["1", 0], "factor": 2.0, "target_fps": 0.0, "source_fps": ["1", 1], "flow": "dis_medium",
            "flow_max_side": 640}},
        "3": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["2", 0], "fps": 16.0, "format": "mp4",
                                                           "quality": 85, "filename_prefix": "SVDLab/flow_x2"}},
    }


def keyframe_interpolation() -> dict:
    """SVD-XT in-betweening from a first and a last image (time-reversal fusion on a stock checkpoint)."""
    return {
        "1": loader("svd_xt.safetensors"),
        "2": {"class_type": "SVDLab_LoadImage", "inputs": {"image": IMAGE, "path": ""}},
        "3": {"class_type": "SVDLab_LoadImage", "inputs": {"image": END_IMAGE, "path": ""}},
        "4": {"class_type": "SVDLab_KeyframeInterpolate", "inputs": {
            "model": ["1", 0], "first": ["2", 0], "last": ["3", 0], "width": 1024, "height": 576, "frames": 25,
            "steps": 30, "min_cfg": 1.5, "max_cfg": 3.0, "guidance": "linear", "fps": 7, "motion_bucket_id": 127,
            "cond_aug": 0.02, "seed": 23, "method": "auto", "renoise": 0, "chunk_size": 14, "overlap": 2}},
        "5": {"class_type": "SVDLab_SaveVideo", "inputs": {
            "images": ["4", 0], "fps": 7.0, "format": "mp4", "quality": 85,
            "filename_prefix": "SVDLab/svd_xt_keyframes"}},
    }


def _core_node(required: dict, returns: tuple[str, ...]) -> type:
    """A stand-in for a ComfyUI core node class, for the UI conversion only: its required inputs in declaration
    order with the options that decide the UI layout, and its output types (as ComfyUI's nodes.py declares them)."""
    return type("CoreNode", (), {"INPUT_TYPES": classmethod(lambda cls: {"required": required}),
                                 "RETURN_TYPES": returns})


#: The core nodes the examples use, as ComfyUI 0.33's nodes.py declares them (combo choices cut to those used).
#: KSampler's seed has "control_after_generate", so the editor saves "fixed" after it in widgets_values.
CORE_NODES = {
    "CheckpointLoaderSimple": _core_node({"ckpt_name": (["sd15_image_model.safetensors"],)}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": _core_node({"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)},
                                 ("CONDITIONING",)),
    "EmptyLatentImage": _core_node({
        "width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
        "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}, ("LATENT",)),
    "KSampler": _core_node({
        "model": ("MODEL",),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        "sampler_name": (["euler", "euler_ancestral", "dpmpp_2m"],),
        "scheduler": (["normal", "karras", "simple"],),
        "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",),
        "latent_image": ("LATENT",),
        "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}, ("LATENT",)),
    "VAEDecode": _core_node({"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",)),
}
NODES = {**NODE_CLASS_MAPPINGS, **CORE_NODES}

PROMPT = ("a lighthouse on a rocky coast at sunset, waves rolling in, seagulls, warm light, cinematic, highly "
          "detailed photograph")
NEGATIVE = "blurry, low quality, text, watermark, deformed"


def text_to_image_to_video() -> dict:
    """Text -> first frame with ComfyUI's core image nodes (an SD1.5-type checkpoint, 1024x576), then SVD-XT
    image-to-video exactly as in svd_xt_image_to_video (the conditioning node crops/resizes the frame)."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15_image_model.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 576, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 23, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }
    video = image_to_video("svd_xt.safetensors", 25, 30, 1.5, 3.0, "SVDLab/text_to_video")
    del video["2"]  # SVDLab_LoadImage: the frame comes from VAEDecode
    ids = {old: str(len(prompt) + i) for i, old in enumerate(video, 1)}
    for old, node in video.items():
        inputs = {name: [ids[v[0]], v[1]] if isinstance(v, list) and name != "image" else v
                  for name, v in node["inputs"].items()}
        prompt[ids[old]] = {**node, "inputs": inputs}
    prompt[ids["3"]]["inputs"]["image"] = ["6", 0]
    return prompt


def to_ui(prompt: dict) -> dict:
    """UI (editor) format of an API prompt: nodes with positional widgets_values, links, a layout."""
    nodes, links = [], []
    depth: dict[str, int] = {}

    def level(nid: str) -> int:
        if nid not in depth:
            ups = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((level(u) for u in ups), default=-1)
        return depth[nid]

    rows: dict[int, int] = {}
    for nid, node in prompt.items():
        cls = NODES[node["class_type"]]
        col = level(nid)
        row = rows.get(col, 0)
        rows[col] = row + 1
        inputs, widgets, uploads = [], [], []
        for name, spec in input_specs(cls).items():
            if spec.section == "hidden":
                continue
            value = node["inputs"].get(name)
            if isinstance(value, list):
                link_id = len(links) + 1
                out_type = NODES[prompt[value[0]]["class_type"]].RETURN_TYPES[value[1]]
                links.append([link_id, int(value[0]), value[1], int(nid), len(inputs), out_type])
                entry = {"name": name, "type": out_type, "link": link_id}
                if spec.is_widget:
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif not spec.is_widget:
                inputs.append({"name": name, "type": spec.type, "link": None})
            if spec.is_widget:
                widgets.append(spec.options.get("default") if isinstance(value, list) else value)
                widgets += [{"control": "fixed", "filter": ""}[e] for e in spec.widget_extras if e != "upload"]
                uploads += ["image" for e in spec.widget_extras if e == "upload"]  # the editor saves these last
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(cls.RETURN_TYPES, getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
                                                   strict=True))]
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": [40 + 380 * col, 40 + 330 * row],
                      "size": [340, 260], "flags": {}, "order": col, "mode": 0, "inputs": inputs,
                      "outputs": outputs, "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": widgets + uploads})
    by_id = {n["id"]: n for n in nodes}
    for link in links:
        by_id[link[1]]["outputs"][link[2]]["links"].append(link[0])
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"svd_lab": "generated by scripts/build_examples.py"}, "version": 0.4}


WORKFLOWS = {
    "svd_image_to_video": image_to_video("svd.safetensors", 14, 25, 1.0, 2.5, "SVDLab/svd"),
    "svd_xt_image_to_video": image_to_video("svd_xt.safetensors", 25, 30, 1.5, 3.0, "SVDLab/svd_xt"),
    "svd_xt_video_to_video": video_to_video(),
    "sv3d_u_orbit": orbit("sv3d_u.safetensors", "static", "SVDLab/sv3d_u_orbit"),
    "sv3d_p_dynamic_orbit": orbit("sv3d_p.safetensors", "dynamic", "SVDLab/sv3d_p_dynamic_orbit"),
    "svd_xt_extend_loop": extend_loop(),
    "curate_folder": curate_folder(),
    "flow_interpolation_x2": flow_interpolation(),
    "svd_xt_keyframe_interpolation": keyframe_interpolation(),
    "text_to_image_to_video": text_to_image_to_video(),  # ComfyUI core nodes + the pack's: runs in ComfyUI only
    "training/svd_curate_and_finetune": curate_and_finetune(),  # a "folder/" prefix: written to that subfolder
}


def write_workflow(name: str, prompt: dict) -> None:
    """ROOT/<name>.json (UI format) and ROOT/api/<name>.json; a name "sub/stem" goes to ROOT/sub and ROOT/sub/api."""
    folder, _, stem = name.rpartition("/")
    base = ROOT / folder
    (base / "api").mkdir(parents=True, exist_ok=True)
    for node in prompt.values():
        node["_meta"] = {"title": node["class_type"]}
        for input_name, spec in input_specs(NODES[node["class_type"]]).items():
            if spec.is_widget and input_name not in node["inputs"] and "default" in spec.options:
                node["inputs"][input_name] = spec.options["default"]  # as the editor saves an added node
    (base / "api" / f"{stem}.json").write_text(json.dumps(prompt, indent=1) + "\n")
    (base / f"{stem}.json").write_text(json.dumps(to_ui(prompt), indent=1) + "\n")


def main(names: list[str] | None = None) -> None:
    """Everything; with `names` (WORKFLOWS keys) only those workflows, inputs untouched."""
    if not names:
        write_inputs()
        write_keyframe_input()
        write_object_input()
        write_curation_inputs()
    unknown = sorted(set(names or ()) - set(WORKFLOWS))
    if unknown:
        raise SystemExit(f"unknown workflow(s) {unknown}; known: {sorted(WORKFLOWS)}")
    for name, prompt in WORKFLOWS.items():
        if not names or name in names:
            write_workflow(name, prompt)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
