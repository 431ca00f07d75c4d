"""The real-server fuzz suite's server, folders and prompt builders (see test_fuzz_comfyui.py): a ComfyUI
started on a fresh base directory with input/ and output/ traps (links to a sibling ``outside/``), a tripwire
on everything outside the allowed folders, and one prompt builder per pack node under test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import comfyui_support as support
import numpy as np
import pytest
from PIL import Image

OK_RGB = (40, 160, 90)
SECRET_RGB = (201, 13, 77)
#: Every file a case may create carries this prefix, so a write anywhere is found by name.
TOKEN = "fzc"
#: Folders of the base directory the server may write (custom_nodes is the link to the pack; user has its DB).
ALLOWED = ("input", "output", "temp", "user", "models", "custom_nodes")
#: How long an accepted prompt may run before it is interrupted (training graphs build a cache and train).
RUN_TIMEOUT = 180.0
TARGET = "10"


# --- the server and its folders -------------------------------------------------------------------------------


@dataclass
class Comfy:
    base: str
    root: Path
    info: dict[str, Any]
    core_answers: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def outside(self) -> Path:
        return self.root / "outside"


def _png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def _mp4(path: Path, rgb: tuple[int, int, int], frames: int = 8) -> None:
    from comfyui_svd_lab.svd_model.media.video import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.empty((frames, 64, 64, 3), np.uint8)
    data[...] = rgb
    write_video(data, path, fps=7, format="mp4")


def _layout(root: Path) -> None:
    from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

    inp, out, outside = root / "input", root / "output", root / "outside"
    _png(inp / "ok.png", OK_RGB)
    _png(inp / "adir" / "inner.png", OK_RGB)
    _mp4(inp / "ok.mp4", OK_RGB)
    (inp / "clips").mkdir()
    for video in (support.REPO / "example_workflows" / "inputs" / "svd_lab_curation_example").glob("*.mp4"):
        shutil.copy(video, inp / "clips" / video.name)  # real footage: cuts and motion, so curation makes clips
    _png(outside / "secret.png", SECRET_RGB)
    _mp4(outside / "secret.mp4", SECRET_RGB)
    _mp4(outside / "videos" / "secret.mp4", SECRET_RGB)
    (outside / "head.safetensors").write_bytes(b"not for workflows")
    (inp / "link.png").symlink_to(outside / "secret.png")
    (inp / "linkvid.mp4").symlink_to(outside / "secret.mp4")
    (inp / "linkdir").symlink_to(outside, target_is_directory=True)
    (inp / "list.txt").write_text(f"{outside / 'secret.mp4'}\n")
    for folder in (out, out / "SVDLab" / "train", out / "SVDLab" / "cache"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "temp").mkdir()
    write_tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors", seed=7)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
    root = tmp_path_factory.mktemp("comfy_fuzz")
    _layout(root)
    try:
        with support.comfyui_server(root) as base:
            yield Comfy(base, root, support.get_json(base + "/object_info"))
    except support.ServerError as exc:
        pytest.fail(str(exc))


class Tripwire:
    """Files that appear or change outside the allowed folders: under the test's temporary base (``outside/``,
    the base directory's top level, its siblings) and, by the case token, next to ComfyUI and the pack."""

    def __init__(self, comfy: Comfy) -> None:
        self.root = comfy.root
        self.top = comfy.root.parent
        self.extra = [Path(p) for p in (support.COMFYUI, Path(support.COMFYUI or ".").parent, support.REPO)]
        self.before = self._snapshot()

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        seen: dict[str, tuple[int, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.top):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d not in ALLOWED]
                filenames = [f for f in filenames if f != "server.log"]
            for name in [*filenames, *dirnames]:
                st = (here / name).lstat()
                seen[str((here / name).relative_to(self.top))] = (st.st_mtime_ns, st.st_size)
        for folder in self.extra:
            for path in folder.glob(f"*{TOKEN}*"):
                seen[str(path)] = (0, 0)
        return seen

    def written(self) -> list[str]:
        after = self._snapshot()
        return sorted(k for k, v in after.items() if self.before.get(k) != v)


# --- prompts --------------------------------------------------------------------------------------------------


def _defaults(comfy: Comfy, class_type: str) -> dict[str, Any]:
    """Widget defaults of a node as the server lists it (first option for a combo); links are left out."""
    spec = comfy.info[class_type]["input"]
    values: dict[str, Any] = {}
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {}) or {}
            if isinstance(kind, list):
                values[name] = opts.get("default", kind[0] if kind else "")
            elif kind == "COMBO":
                options = opts.get("options") or [""]
                values[name] = opts.get("default", options[0])
            elif kind in ("INT", "FLOAT", "STRING", "BOOLEAN") and "default" in opts:
                values[name] = opts["default"]
    return values


def _node(comfy: Comfy, class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": {**_defaults(comfy, class_type), **inputs}}


#: (server, input name, value) -> the prompt; the input set is recorded in node TARGET's "_meta".
Graph = Callable[[Comfy, str, Any], dict[str, Any]]
TINY_DATA = {"frames": 3, "width": 64, "height": 64}
TINY_TRAIN = {"steps": 1, "validate_every": 0, "save_every": 0, "gradient_checkpointing": False, "lora_rank": 4}


def _set(comfy: Comfy, node: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """`node` with input `name` set; an input the server does not list for it is a broken case, not a pass."""
    assert name in _defaults(comfy, node["class_type"]) or name in comfy.info[node["class_type"]]["input"].get(
        "required", {}), f"{node['class_type']} has no input {name!r} on this server"
    node["inputs"][name] = value
    node["_meta"] = {"title": f"fuzz {name}", "fuzz_input": name}
    return node


def g_load_image(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    pack = _node(comfy, "SVDLab_LoadImage", image="ok.png" if name == "path" else value, path="")
    return {TARGET: _set(comfy, pack, name, value),
            "20": _node(comfy, "PreviewImage", images=[TARGET, 0])}


def g_load_video(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    pack = _node(comfy, "SVDLab_LoadVideo", video="ok.mp4" if name == "path" else value, path="", frame_cap=2)
    return {TARGET: _set(comfy, pack, name, value), "20": _node(comfy, "PreviewImage", images=[TARGET, 0])}


def g_video_folder(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    pack = _node(comfy, "SVDLab_LoadVideoFolder")
    return {TARGET: _set(comfy, pack, name, value), "20": _node(comfy, "PreviewAny", source=[TARGET, 1])}


def g_dataset(class_type: str) -> Graph:
    def graph(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
        pack = _node(comfy, class_type, **TINY_DATA)
        return {TARGET: _set(comfy, pack, name, value), "20": _node(comfy, "PreviewAny", source=[TARGET, 1])}
    return graph


def _training(comfy: Comfy) -> dict[str, Any]:
    return {"1": _node(comfy, "SVDLab_CheckpointLoader", ckpt_name="tiny.safetensors"),
            "2": _node(comfy, "SVDLab_DatasetFromFolder", folder="clips", **TINY_DATA),
            "3": _node(comfy, "SVDLab_BuildLatentCache", model=["1", 0], dataset=["2", 0])}


def g_cache(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    prompt = _training(comfy)
    prompt[TARGET] = _set(comfy, prompt.pop("3"), name, value)
    prompt["20"] = _node(comfy, "PreviewAny", source=[TARGET, 1])
    return prompt


def g_train(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    prompt = _training(comfy)
    train = _node(comfy, "SVDLab_Train", model=["1", 0], cache=["3", 0], **TINY_TRAIN)
    prompt[TARGET] = _set(comfy, train, name, value)
    return prompt


def g_save_finetuned(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    return {"1": _node(comfy, "SVDLab_CheckpointLoader", ckpt_name="tiny.safetensors"),
            TARGET: _set(comfy, _node(comfy, "SVDLab_SaveFinetuned", model=["1", 0]), name, value)}


def g_save_video(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    return {"1": _node(comfy, "LoadImage", image="ok.png"),
            TARGET: _set(comfy, _node(comfy, "SVDLab_SaveVideo", images=["1", 0], format="webp"), name, value)}


def _clips(comfy: Comfy) -> dict[str, Any]:
    return {"1": _node(comfy, "SVDLab_LoadVideoFolder", folder="clips"),
            "2": _node(comfy, "SVDLab_AnnotateVideos", videos=["1", 0]),
            "3": _node(comfy, "SVDLab_SplitClips", annotations=["2", 0])}


def g_curate(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    curate = _node(comfy, "SVDLab_CurateFolder", videos=["1", 0], output_name=f"SVDLab/{TOKEN}_curate_{len(value)}",
                   text_score=False, workers=1, if_exists="overwrite")
    return {"1": _node(comfy, "SVDLab_LoadVideoFolder", folder="clips"), TARGET: _set(comfy, curate, name, value)}


def g_write_manifest(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    prompt = _clips(comfy)
    prompt[TARGET] = _set(comfy, _node(comfy, "SVDLab_WriteManifest", clips=["3", 0]), name, value)
    return prompt


def g_captions(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    prompt = _clips(comfy)
    inputs = comfy.info["SVDLab_Captions"]["input"]["required"]
    if name not in inputs:  # after issue 10 the free-text spec list became one choice per kind
        name = "image_captioner"
    prompt[TARGET] = _set(comfy, _node(comfy, "SVDLab_Captions", clips=["3", 0]), name, value)
    prompt["20"] = _node(comfy, "SVDLab_WriteManifest", clips=[TARGET, 0], output_name=f"SVDLab/{TOKEN}_captions")
    return prompt


def g_clip_scores(comfy: Comfy, name: str, value: Any) -> dict[str, Any]:
    prompt = _clips(comfy)
    scores = _node(comfy, "SVDLab_ClipScores", clips=["3", 0], ckpt_name="tiny.safetensors")
    prompt[TARGET] = _set(comfy, scores, name, value)
    prompt["20"] = _node(comfy, "SVDLab_WriteManifest", clips=[TARGET, 0], output_name=f"SVDLab/{TOKEN}_scores")
    return prompt
