"""Curation nodes: contracts, registration, the step-by-step graph and Curate Folder headless (progress,
interruption, resume), validation messages, the report's UI output."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.curation import manifest
from comfyui_svd_lab.svd_model.curation.synthetic import make_video
from comfyui_svd_lab.training_nodes import curation_nodes
from comfyui_svd_lab.workflow import execute, validate

IDS = sorted(curation_nodes.NODES)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in") / "clips"
    root.mkdir()
    for i, (shots, motion) in enumerate([((30, 30), (3.0, 0.0)), ((40,), (1.0,)), ((20, 30, 20), (0.0, 2.0, 5.0))]):
        make_video(root / f"v{i}.mp4", shots=shots, motion=motion, size=(96, 64), seed=i, gop=10)
    (root / "broken.mp4").write_bytes(b"\x00" * 100)
    return root


@pytest.fixture
def folders(tmp_path):
    """Output/temp/input folders, and a models folder with a small open_clip image tower (clip.safetensors)."""
    import torch
    from safetensors.torch import save_file

    from comfyui_svd_lab.svd_model.config import ImageEncoderConfig
    from comfyui_svd_lab.svd_model.nn.image_encoder import OpenCLIPVisionTower

    torch.manual_seed(0)
    tower = OpenCLIPVisionTower(ImageEncoderConfig(width=64, layers=1, mlp_width=128, embed_dim=32, head_width=64))
    (tmp_path / "models").mkdir()
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()},
              tmp_path / "models" / "clip.safetensors")
    # the tests' videos live in a shared temporary folder: the local user's opt-in to name files anywhere
    bridge.configure(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", input_dir=tmp_path / "input",
                     models_dirs=[tmp_path / "models"], allow_any_path=True)
    yield tmp_path
    bridge.reset()


@pytest.mark.parametrize("node_id", IDS)
def test_node_contract(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert cls is curation_nodes.NODES[node_id][0] and node_id.startswith("SVDLab_")
    assert cls.CATEGORY == "SVD Lab/curation" and cls.DESCRIPTION
    spec = cls.INPUT_TYPES()
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    names = {n for section in spec.values() for n in section}
    assert names == set(params) - {"self"}
    for section in spec.values():
        for name, (kind, opts) in section.items():
            assert opts.get("tooltip"), f"{node_id}.{name} needs a tooltip"
            if isinstance(kind, str) and kind not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                assert kind.startswith("SVDLAB_"), f"{node_id}.{name}: custom types are prefixed SVDLAB_"
            if isinstance(kind, list) and "default" in opts:
                assert opts["default"] in kind
    for kind in cls.RETURN_TYPES:
        assert kind in ("INT", "STRING") or kind.startswith("SVDLAB_")
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    if hasattr(cls, "VALIDATE_INPUTS"):
        vparams = inspect.signature(cls.VALIDATE_INPUTS).parameters
        assert all(p.kind is not p.VAR_KEYWORD for p in vparams.values()) and set(vparams) <= names


def _steps_prompt(folder: str, rules: str = "motion_score:bottom=0.34") -> dict:
    return {
        "1": {"class_type": "SVDLab_LoadVideoFolder", "inputs": {"folder": folder, "extensions": "mp4", "limit": 0}},
        "2": {"class_type": "SVDLab_AnnotateVideos", "inputs": {"videos": ["1", 0], "min_scene_s": 0.3,
                                                                 "motion_fps": 2.0, "cut_settings": ""}},
        "3": {"class_type": "SVDLab_SplitClips", "inputs": {"annotations": ["2", 0],
                                                             "split_settings": '{"min_seconds": 0.5}'}},
        "4": {"class_type": "SVDLab_MotionScore", "inputs": {"clips": ["3", 0]}},
        "5": {"class_type": "SVDLab_TextScore", "inputs": {"clips": ["4", 0], "reduce": "max"}},
        "6": {"class_type": "SVDLab_Captions", "inputs": {"clips": ["5", 0], "image_captioner": "none",
                                                           "video_captioner": "none", "summary_captioner": "none"}},
        "10": {"class_type": "SVDLab_ClipScores", "inputs": {"clips": ["6", 0], "ckpt_name": "clip.safetensors",
                                                              "aesthetic_head": "", "text_tower": "", "tokenizer": ""}},
        "7": {"class_type": "SVDLab_FilterClips", "inputs": {"clips": ["10", 0], "rules": rules}},
        "8": {"class_type": "SVDLab_WriteManifest", "inputs": {"clips": ["7", 0], "output_name": "steps",
                                                                "write_clips": "none", "write_keyframes": True}},
        "9": {"class_type": "SVDLab_CurationReport", "inputs": {"manifest": ["8", 0], "rules": ""}},
    }


def test_step_nodes_build_a_filtered_manifest_and_report(video_dir, folders):
    prompt = _steps_prompt(str(video_dir))
    assert validate(prompt, NODE_CLASS_MAPPINGS) == []
    assert "clip.safetensors" in NODE_CLASS_MAPPINGS["SVDLab_ClipScores"].INPUT_TYPES()["required"]["ckpt_name"][0]
    results = execute(prompt, NODE_CLASS_MAPPINGS)
    out = folders / "out" / "steps"
    rows = pq.read_table(out / manifest.FILTERED_NAME).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert {Path(r["source"]).name for r in rows} == {"v0.mp4", "v1.mp4", "v2.mp4", "broken.mp4"}
    assert [r["status"] for r in rows if r["source"].endswith("broken.mp4")] == ["error"]
    assert len(ok) >= 5 and all(r["text_area"] is not None and len(r["keyframe_paths"]) == 3 for r in ok)
    assert all(r["motion_score"] is not None for r in ok if r["duration"] >= 1.0)  # >= two 2-fps flow samples
    assert all(r["aesthetic"] is None and r["clip_score"] is None for r in ok)  # no head / text tower given
    dropped = [r for r in ok if not r["keep"]]
    assert len(dropped) == round(0.34 * len(ok)) and all("motion_score" in r["drop_reason"] for r in dropped)
    assert manifest.read_manifest(out).num_rows == len(rows)  # parts + log written too
    assert "kept" in results["7"].result[1]
    ui = results["9"].ui
    (report,) = ui["svdlab_report"]
    assert (report["filename"], report["subfolder"], report["type"]) == ("report.html", "steps", "output")
    assert ui_path(report).is_file() and "clips" in ui["text"][0]
    assert "<svg" in ui_path(report).read_text()


def _curate_prompt(folder: str, if_exists: str = "resume") -> dict:
    return {
        "1": {"class_type": "SVDLab_LoadVideoFolder", "inputs": {"folder": folder, "extensions": "mp4", "limit": 0}},
        "2": {"class_type": "SVDLab_CurateFolder", "inputs": {
            "videos": ["1", 0], "output_name": "run", "if_exists": if_exists, "workers": 1, "text_score": False,
            "clip_checkpoint": "none", "write_clips": "none", "write_keyframes": False, "rules": "none",
            "settings": '{"keyframe_max_side": 64, "split": {"min_seconds": 0.5}}'}},
    }


def test_curate_folder_reports_progress_stops_when_cancelled_and_resumes(video_dir, folders):
    calls = []

    def cancel_after_two(value, total):
        calls.append((value, total))
        if value == 2:
            raise KeyboardInterrupt  # what a cancelled headless run raises from the progress hook

    with bridge.headless_run(reporter=cancel_after_two), pytest.raises(KeyboardInterrupt):
        execute(_curate_prompt(str(video_dir)), NODE_CLASS_MAPPINGS)
    assert calls[:3] == [(0, 4), (1, 4), (2, 4)]
    out = folders / "out" / "run"
    assert len(manifest.completed(out / "manifest")) == 2  # the finished videos are kept
    results = execute(_curate_prompt(str(video_dir)), NODE_CLASS_MAPPINGS)
    summary = results["2"].result[1]
    assert "2 video(s) curated (2 already done)" in summary
    rows = manifest.read_manifest(out).to_pylist()
    assert len({r["video_id"] for r in rows}) == 4 and len({r["clip_id"] for r in rows}) == len(rows)
    ui = results["2"].ui
    assert ui["svdlab_report"][0]["subfolder"] == "run" and "4 videos" in ui["text"][0]
    fresh = execute(_curate_prompt(str(video_dir), "overwrite"), NODE_CLASS_MAPPINGS)
    assert "4 video(s) curated (0 already done)" in fresh["2"].result[1]
    assert manifest.read_manifest(out).to_pylist() == rows


def test_validation_messages(video_dir, folders):
    prompt = _steps_prompt(str(video_dir / "nope"), rules="motion_score:lowest=1")
    prompt["2"]["inputs"]["cut_settings"] = "{not json"
    problems = "\n".join(str(p) for p in validate(prompt, NODE_CLASS_MAPPINGS))
    assert "video folder" in problems and "no readable file or folder" in problems
    assert "filter mode 'lowest' unknown" in problems
    assert "cut_settings is not valid JSON" in problems
    prompt = _steps_prompt(str(video_dir))
    prompt["6"]["inputs"]["image_captioner"] = "command:/bin/sh -c id"
    prompt["10"]["inputs"]["aesthetic_head"] = "/nowhere/head.safetensors"
    problems = "\n".join(str(p) for p in validate(prompt, NODE_CLASS_MAPPINGS))
    assert "command:/bin/sh -c id" in problems and "registered by the local user outside workflows" in problems
    assert "aesthetic head file not found" in problems
    bad = _curate_prompt(str(video_dir))
    bad["2"]["inputs"]["settings"] = '{"split": {"nope": 1}}'
    assert validate(bad, NODE_CLASS_MAPPINGS) == []  # valid JSON: the unknown key is reported when it runs
    with pytest.raises(Exception, match="unknown config key 'split.nope'"):
        execute(bad, NODE_CLASS_MAPPINGS)
    bad["2"]["inputs"].update(settings="", output_name="../escape")
    with pytest.raises(Exception, match="names may not be '.', '..'"):
        execute(bad, NODE_CLASS_MAPPINGS)


def test_folder_resolves_in_the_input_folder_and_pack_examples(video_dir, folders):
    (folders / "input").mkdir()
    shutil.copytree(video_dir, folders / "input" / "mine")
    (folders / "input" / "linked").symlink_to(video_dir)
    bridge.configure(allow_any_path=False)
    assert curation_nodes.resolve_folder("mine") == folders / "input" / "mine"
    with pytest.raises(bridge.PathRefused, match="symbolic link"):  # a link that leads out of the input folder
        curation_nodes.resolve_folder("linked")
    example = bridge.PACK_INPUTS / "svd_lab_curation_example"
    assert curation_nodes.resolve_folder(curation_nodes.DEFAULT_FOLDER) == example
    videos, count = NODE_CLASS_MAPPINGS["SVDLab_LoadVideoFolder"]().load("mine", "mp4", 2)
    assert count == 2 and len(videos.paths) == 2


def ui_path(item: dict) -> Path:
    """The file a UI entry names ({"filename", "subfolder", "type"}: no server path, as core SaveImage)."""
    assert "fullpath" not in item
    return bridge.folder(item["type"]) / item["subfolder"] / item["filename"]
