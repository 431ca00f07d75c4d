"""ComfyUI's VIDEO type between core nodes and the pack's, in a real ComfyUI: core Load Video feeds the pack (frames
and frame rate), the pack's VIDEO outputs feed core Save Video, core Create Video feeds the pack's Save Video, and a
frames node with neither input connected is refused at queue time. Runs only when COMFYUI_PATH is set (see
tests/comfyui_support.py); one server, three prompts on a tiny checkpoint and a 5-frame clip."""

from __future__ import annotations

import comfyui_support as support
import pytest
import torch

from comfyui_svd_lab.svd_model.media.video import probe_video
from comfyui_svd_lab.svd_model.media.write import write_video
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

pytestmark = pytest.mark.skipif(not support.COMFYUI, reason=support.SKIP_REASON)
FRAMES, W, H, RATE = 5, 64, 48, 12.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_video")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors", seed=7)
    (root / "input").mkdir()
    clip = torch.rand(FRAMES, H, W, 3, generator=torch.Generator().manual_seed(0))
    write_video(clip, root / "input" / "clip.mp4", fps=RATE)
    try:
        with support.comfyui_server(root) as base:
            yield base, root
    except support.ServerError as exc:
        pytest.fail(str(exc))


def _run(base: str, prompt: dict) -> dict:
    return support.run_prompt(base, prompt)["outputs"]


def _saved(root, outputs: dict, nid: str):
    item = outputs[nid]["images"][0]
    path = root / "output" / item["subfolder"] / item["filename"]
    assert item["type"] == "output" and path.is_file()
    return probe_video(path, count_frames=True)


def test_core_load_video_into_the_pack_and_back_to_core_save_video(server):
    base, root = server
    outputs = _run(base, {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
        "2": {"class_type": "SVDLab_SaveVideo", "inputs": {
            "video": ["1", 0], "fps": 7.0, "format": "mp4", "quality": 80, "filename_prefix": "pack/from_core"}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "core/passed",
                                                    "format": "mp4"}},
    })
    pack = _saved(root, outputs, "2")
    assert (pack.frame_count, pack.width, pack.height) == (FRAMES, W, H)
    assert float(pack.fps) == pytest.approx(RATE)  # the VIDEO's rate, not the widget's 7
    core = _saved(root, outputs, "3")
    assert core.frame_count == FRAMES and float(core.fps) == pytest.approx(RATE)


def test_pack_video_outputs_into_core_nodes(server):
    base, root = server
    outputs = _run(base, {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
        "2": {"class_type": "SVDLab_CheckpointLoader", "inputs": {
            "ckpt_name": "tiny.safetensors", "dtype": "fp32", "variant": "auto", "offload": "none"}},
        "3": {"class_type": "SVDLab_EncodeFrames", "inputs": {"model": ["2", 0], "video": ["1", 0]}},
        "4": {"class_type": "SVDLab_Decode", "inputs": {"model": ["2", 0], "latent": ["3", 0], "chunk_size": 14,
                                                        "overlap": 0}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 1], "filename_prefix": "core/decoded",
                                                    "format": "mp4"}},
        "6": {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "fps": 10.0}},
        "7": {"class_type": "SVDLab_SaveVideo", "inputs": {
            "video": ["6", 0], "fps": 7.0, "format": "mp4", "quality": 80, "filename_prefix": "pack/created"}},
    })
    decoded = _saved(root, outputs, "5")  # Decode's VIDEO keeps the clip's rate (carried by Encode Frames' latent)
    assert (decoded.frame_count, decoded.width, decoded.height) == (FRAMES, W, H)
    assert float(decoded.fps) == pytest.approx(RATE)
    created = _saved(root, outputs, "7")
    assert created.frame_count == FRAMES and float(created.fps) == pytest.approx(10.0)


def test_neither_images_nor_video_is_refused_at_queue_time(server):
    base, _ = server
    status, reply = support.queue_prompt(base, {"1": {"class_type": "SVDLab_SaveVideo", "inputs": {
        "fps": 7.0, "format": "mp4", "quality": 80, "filename_prefix": "pack/nothing"}}})
    assert status == 400 and set(reply["node_errors"]) == {"1"}
    assert "connect the frames: images (IMAGE) or video (VIDEO)" in str(reply["node_errors"]["1"])
