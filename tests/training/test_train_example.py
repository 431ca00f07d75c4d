"""The curate-and-finetune example headless: video folder -> Curate Folder -> Dataset From Manifest (linked) ->
latent cache -> LoRA training -> saved model, on a micro checkpoint; each clip's conditioning comes from the
manifest. Also: the linked manifest input and its messages, and the CLI's tiny stand-in sizes for both training
examples."""

from __future__ import annotations

import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from train_support import micro_files, one_thread_fixture

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.cli.jobs import TINY_RUN, tiny_overrides
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.lora import apply_lora, load_lora
from comfyui_svd_lab.svd_model.training.cache import StaleCacheError
from comfyui_svd_lab.svd_model.training.report import read_log
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.training_nodes import train_nodes
from comfyui_svd_lab.workflow import apply_overrides, execute, load_workflow, validate

TRAINING = Path(__file__).resolve().parents[2] / "example_workflows" / "training"
EXAMPLE = TRAINING / "svd_curate_and_finetune.json"
#: The micro model at a size and step count that keeps the test fast (the example's ids).
SMALL = ["4.frames=3", "4.width=64", "4.height=64", "5.storage=fp32", "6.steps=2", "6.precision=fp32",
         "6.gradient_checkpointing=false", "6.lora_rank=4", "6.learning_rate=0.001", "7.dtype=fp32"]


_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return micro_files(tmp_path_factory.mktemp("train_example")).parent


@pytest.fixture
def configured(models, tmp_path):
    bridge.configure(models_dirs=[models], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp")
    yield tmp_path / "out"
    bridge.reset()


def expected_fps_id(fps: float, target: float) -> int:
    """fps_id of a window taken at `target` fps from a clip measured at `fps` (frames are never repeated)."""
    stride = max(1.0, fps / target) if target > 0 else 1.0
    return max(0, round(fps / stride) - 1)


def test_ui_file_converts_to_its_api_twin():
    for path in (EXAMPLE, TRAINING / "svd_finetune_from_folder.json"):
        ui_prompt, ui_workflow = load_workflow(path, NODE_CLASS_MAPPINGS)
        api_prompt, _ = load_workflow(TRAINING / "api" / path.name, NODE_CLASS_MAPPINGS)
        assert ui_workflow is not None and ui_prompt == api_prompt
        assert {n["class_type"] for n in api_prompt.values()} <= set(NODE_CLASS_MAPPINGS)
    classes = [n["class_type"] for n in load_workflow(EXAMPLE, NODE_CLASS_MAPPINGS)[0].values()]
    assert classes == ["SVDLab_CheckpointLoader", "SVDLab_LoadVideoFolder", "SVDLab_CurateFolder",
                       "SVDLab_DatasetFromManifest", "SVDLab_BuildLatentCache", "SVDLab_Train",
                       "SVDLab_SaveFinetuned"]


def test_curate_and_finetune_example_runs_headless(models, configured):
    prompt, ui = load_workflow(EXAMPLE, NODE_CLASS_MAPPINGS)
    assert prompt["4"]["inputs"]["curated"] == ["3", 0] and prompt["1"]["inputs"]["ckpt_name"] == "svd_xt.safetensors"
    prompt = apply_overrides(prompt, ["1.ckpt_name=micro.safetensors", *SMALL], NODE_CLASS_MAPPINGS)
    assert validate(prompt, NODE_CLASS_MAPPINGS) == []
    results = execute(prompt, NODE_CLASS_MAPPINGS, ui_workflow=ui)  # every node under torch.inference_mode()

    # the curation wrote a manifest with rows, some kept
    curated = results["3"].result[0]
    assert curated.out_dir == configured / "SVDLab" / "curation_finetune"
    rows = pq.read_table(curated.out_dir / "manifest_filtered.parquet").to_pylist()
    kept = {r["clip_id"]: r for r in rows if r["status"] == "ok" and r["keep"]}
    assert len(rows) > len(kept) >= 2  # the filter dropped some and kept some

    # the dataset has exactly the kept clips, each with its own measured fps and motion bucket
    dataset = results["4"].result[0]
    target = prompt["4"]["inputs"]["fps"]
    assert {c.clip_id for c in dataset.clips} == set(kept)
    assert len(dataset.windows) == len(kept)
    for window in dataset.windows:
        row = kept[window.clip.clip_id]
        assert window.clip.fps == row["fps"] and window.motion_bucket_id == row["motion_bucket_id"]
        assert window.fps_id == expected_fps_id(row["fps"], target)
        stride = max(1.0, row["fps"] / target)
        assert window.indices[-1] - window.indices[0] == round((len(window.indices) - 1) * stride)
        assert row["start_frame"] <= window.indices[0] and window.indices[-1] < row["end_frame"]
    assert len({w.motion_bucket_id for w in dataset.windows}) > 1  # measured per clip, not one constant
    # ... and so does the latent cache the training read
    cache = results["5"].result[0]
    assert {(e.clip_id, e.fps_id, e.motion_bucket_id) for e in cache.entries} == {
        (w.clip.clip_id, w.fps_id, w.motion_bucket_id) for w in dataset.windows}

    # training: loss log, LoRA file that loads and reproduces the trained model, the saved full model
    model, weights, _, info = results["6"].result
    run = configured / "SVDLab" / "train" / "svd_curate_and_finetune"
    records = read_log(run / "loss.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    # named relative to the output folder (no server path reaches a UI or the history)
    assert weights == "output/SVDLab/train/svd_curate_and_finetune/lora.safetensors" and "2 steps of lora" in info
    assert str(configured) not in info
    state, meta = load_lora(run / "lora.safetensors")
    assert state and meta["svd_lab.lora.rank"] == "4"
    base = load_bundle(models / "micro.safetensors")
    merged = apply_lora(base, state, strict=True).model.unet.state_dict()
    trained = model.model.unet.state_dict()
    assert all(torch.allclose(merged[k], v, atol=1e-6) for k, v in trained.items())
    key = "input_blocks.1.1.time_stack.0.attn1.to_q.weight"  # temporal attention: LoRA-trained
    assert not torch.equal(trained[key], base.model.unet.state_dict()[key])
    saved = ui_path(results["7"].ui["files"][0])
    reloaded = load_bundle(saved).model.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in reloaded.items())


def test_dataset_takes_the_linked_manifest_and_native_fps(configured, tmp_path):
    folder = Path(__file__).resolve().parents[2] / "example_workflows" / "inputs" / "svd_lab_curation_example"
    videos, _ = NODE_CLASS_MAPPINGS["SVDLab_LoadVideoFolder"]().load(str(folder), "mp4", 2)
    curate = NODE_CLASS_MAPPINGS["SVDLab_CurateFolder"]().curate(
        videos, "curated", "overwrite", 1, False, "none", "none", False, "none", "")
    curated = curate["result"][0]
    rows = {r["clip_id"]: r for r in pq.read_table(curated.out_dir / "manifest_filtered.parquet").to_pylist()
            if r["status"] == "ok"}
    node = train_nodes.DatasetFromManifest()
    # fps 0 = the clip's own: fps_id is the manifest's fps - 1; the text input is ignored when linked
    dataset, info = node.load("no/such/manifest", 3, 0.0, 64, 64, 1, 0, "", False, curated=curated)
    assert {w.clip.clip_id for w in dataset.windows} == set(rows) and "clips" in info
    for window in dataset.windows:
        row = rows[window.clip.clip_id]
        assert window.fps_id == round(row["fps"]) - 1 and window.motion_bucket_id == row["motion_bucket_id"]
        assert window.indices == tuple(range(window.indices[0], window.indices[0] + 3))
    # the folder as text (what Write Manifest's path output carries) gives the same clips
    again, _ = node.load(str(curated.out_dir), 3, 0.0, 64, 64, 1, 0, "", False)
    assert [w.key for w in again.windows] == [w.key for w in dataset.windows]
    with pytest.raises(InputError, match="expected the SVDLAB_MANIFEST output"):
        node.load("", 3, 0.0, 64, 64, 1, 0, "", False, curated="not a manifest")
    with pytest.raises(InputError, match="does not exist"):
        node.load("", 3, 0.0, 64, 64, 1, 0, "", False, curated=types.SimpleNamespace(out_dir=tmp_path / "gone"))


def test_tiny_run_shrinks_both_training_examples():
    for path in (EXAMPLE, TRAINING / "svd_finetune_from_folder.json"):
        prompt, _ = load_workflow(path, NODE_CLASS_MAPPINGS)
        small = apply_overrides(prompt, tiny_overrides(prompt, "tiny.safetensors"), NODE_CLASS_MAPPINGS)
        data = next(n["inputs"] for n in small.values() if n["class_type"].startswith("SVDLab_DatasetFrom"))
        train = next(n["inputs"] for n in small.values() if n["class_type"] == "SVDLab_Train")
        for class_type, sizes in TINY_RUN.items():
            for node in (n for n in small.values() if n["class_type"] == class_type):
                assert all(node["inputs"][k] == v for k, v in sizes.items())
        assert data["width"] * data["height"] <= 64 * 64 and data["frames"] <= 4
        assert train["steps"] <= 4 and train["validate_every"] == 0


def test_recurated_manifest_rebuilds_the_unnamed_cache_and_is_refused_by_a_named_one(models, configured):
    """Same manifest path, other clips kept (new filter rules): the auto-named cache is rebuilt in place with the
    new clips; a named cache refuses them (naming what differs) unless rebuild is on."""
    folder = Path(__file__).resolve().parents[2] / "example_workflows" / "inputs" / "svd_lab_curation_example"
    videos, _ = NODE_CLASS_MAPPINGS["SVDLab_LoadVideoFolder"]().load(str(folder), "mp4", 2)
    bundle = load_bundle(models / "micro.safetensors")
    node = train_nodes.BuildLatentCache()
    caches, datasets = [], []
    for if_exists, rules in (("overwrite", "none"), ("resume", "motion_score:bottom=0.5")):
        curated = NODE_CLASS_MAPPINGS["SVDLab_CurateFolder"]().curate(
            videos, "recurated", if_exists, 1, False, "none", "none", False, rules, "")["result"][0]
        dataset, _ = train_nodes.DatasetFromManifest().load("", 3, 8.0, 64, 64, 1, 0, "", True, curated=curated)
        cache, _ = node.build(bundle, dataset, "", "exact", "fp32", False)
        assert sorted(e.key for e in cache.entries) == sorted(w.key for w in dataset.windows)
        caches.append(cache)
        datasets.append(dataset)
    assert len(caches[1].entries) < len(caches[0].entries) and caches[0].dir == caches[1].dir
    named, _ = node.build(bundle, datasets[0], "named", "exact", "fp32", False)
    assert named.dir == configured / "SVDLab" / "cache" / "named"
    with pytest.raises(StaleCacheError, match=r"frame windows differ from the dataset's: \d+ gone.*rebuild = true"):
        node.build(bundle, datasets[1], "named", "exact", "fp32", False)
    rebuilt, _ = node.build(bundle, datasets[1], "named", "exact", "fp32", True)
    assert rebuilt.dir == named.dir and [e.key for e in rebuilt.entries] == [e.key for e in caches[1].entries]


def ui_path(item: dict) -> Path:
    """The file a UI entry names ({"filename", "subfolder", "type"}: no server path, as core SaveImage)."""
    assert "fullpath" not in item
    return bridge.folder(item["type"]) / item["subfolder"] / item["filename"]
