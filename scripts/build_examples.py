"""Regenerate example_workflows/: the UI-format workflows (ComfyUI templates), their API-format twins
in example_workflows/api/, and the small synthetic inputs they use (example_workflows/inputs/).

    python scripts/build_examples.py

The API format is written by hand below; the UI format is derived from it with the node classes'
INPUT_TYPES (widgets_values in declaration order, links, a simple left-to-right layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.svd_model.videoio import write_video
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
        cls = NODE_CLASS_MAPPINGS[node["class_type"]]
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
                out_type = NODE_CLASS_MAPPINGS[prompt[value[0]]["class_type"]].RETURN_TYPES[value[1]]
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
}


def main() -> None:
    write_inputs()
    (ROOT / "api").mkdir(parents=True, exist_ok=True)
    for name, prompt in WORKFLOWS.items():
        for node in prompt.values():
            node["_meta"] = {"title": node["class_type"]}
        (ROOT / "api" / f"{name}.json").write_text(json.dumps(prompt, indent=1) + "\n")
        (ROOT / f"{name}.json").write_text(json.dumps(to_ui(prompt), indent=1) + "\n")


if __name__ == "__main__":
    main()
