"""Training nodes: contracts, the example finetuning workflow headless (under inference mode, as ComfyUI runs it),
cancel inside ComfyUI writes a checkpoint and the next run resumes, bad manifests get a clear message."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from train_support import micro_files, one_thread_fixture

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.training.report import read_log
from comfyui_svd_lab.svd_model.training.state import list_checkpoints
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.training_nodes import train_nodes
from comfyui_svd_lab.workflow import apply_overrides, execute, load_workflow, validate

EXAMPLE = Path(__file__).resolve().parents[2] / "example_workflows" / "training" / "svd_finetune_from_folder.json"
NODE_IDS = ("SVDLab_DatasetFromManifest", "SVDLab_DatasetFromFolder", "SVDLab_BuildLatentCache", "SVDLab_Train",
            "SVDLab_SaveFinetuned")
TINY_RUN = {"SVDLab_DatasetFromFolder": {"frames": 3, "fps": 8.0, "width": 64, "height": 64},
            "SVDLab_Train": {"steps": 2, "precision": "fp32", "gradient_checkpointing": False, "save_every": 0,
                             "validate_every": 2, "lora_rank": 4, "learning_rate": 1e-3},
            "SVDLab_SaveFinetuned": {"dtype": "fp32"}}


_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_nodes")
    micro_files(root, clips=2)
    return root


@pytest.fixture
def configured(files, tmp_path):
    # the clips live in a shared temporary folder: the local user's opt-in to name files anywhere
    bridge.configure(models_dirs=[files / "models"], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp",
                     allow_any_path=True)
    yield tmp_path / "out"
    bridge.reset()


def test_nodes_are_registered_and_well_formed():
    for node_id in NODE_IDS:
        cls = NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == "SVD Lab/training" and cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION))
        for section in cls.INPUT_TYPES().values():
            for name, spec in section.items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} needs a tooltip"
        if cls.RETURN_TYPES:
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert NODE_CLASS_MAPPINGS["SVDLab_Train"].OUTPUT_NODE


def test_example_workflow_finetunes_and_saves_headless(files, configured):
    prompt, ui = load_workflow(EXAMPLE, NODE_CLASS_MAPPINGS)
    sets = ["1.ckpt_name=micro.safetensors", f"2.folder={files / 'clips'}"]
    sets += [f"{nid}.{k}={v}" for nid, n in prompt.items() for k, v in TINY_RUN.get(n["class_type"], {}).items()]
    prompt = apply_overrides(prompt, sets, NODE_CLASS_MAPPINGS)
    assert validate(prompt, NODE_CLASS_MAPPINGS) == []
    results = execute(prompt, NODE_CLASS_MAPPINGS, ui_workflow=ui)  # every node under torch.inference_mode()
    train_ui = results["4"].ui
    assert train_ui["svdlab_loss"][0]["steps"] == [1, 2] and len(train_ui["svdlab_loss"][0]["loss"]) == 2
    plot, video = (ui_path(item) for item in train_ui["images"])
    assert plot.is_file() and plot.parent == configured / train_ui["images"][0]["subfolder"]
    assert video.suffix == ".webp" and video.parent.name == "validation"
    model, weights, loss_plot, info = results["4"].result
    assert Path(weights).name == "lora.safetensors" and loss_plot.shape[-1] == 3 and "2 steps of lora" in info
    saved = ui_path(results["5"].ui["files"][0])
    reloaded = load_bundle(saved)
    trained = model.model.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in reloaded.model.unet.state_dict().items())
    base = load_bundle(files / "models" / "micro.safetensors").model.unet.state_dict()
    key = "input_blocks.1.1.time_stack.0.attn1.to_q.weight"  # temporal attention: LoRA-trained, merged
    assert not torch.equal(trained[key], base[key])
    key = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"  # spatial: untouched
    assert torch.equal(trained[key], base[key])


class Interrupted(Exception):
    """Stands in for comfy.model_management.InterruptProcessingException."""


def fake_comfy(monkeypatch, interrupt_after: int | None) -> None:
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if interrupt_after is not None and calls["n"] > interrupt_after:
            raise Interrupted("Processing interrupted")

    class ProgressBar:
        def __init__(self, total: int) -> None:
            self.total = total

        def update_absolute(self, value, total=None, preview=None) -> None:
            assert preview is None or preview[0] == "PNG"

    mm = types.SimpleNamespace(throw_exception_if_processing_interrupted=check, soft_empty_cache=lambda: None,
                               free_memory=lambda *a: None, get_torch_device=lambda: torch.device("cpu"))
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, types.SimpleNamespace(ProgressBar=ProgressBar)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)


def test_cancel_writes_a_checkpoint_and_the_next_run_resumes(files, configured, monkeypatch):
    with torch.inference_mode():  # as ComfyUI runs every node
        bundle = load_bundle(files / "models" / "micro.safetensors")
        dataset, _ = train_nodes.DatasetFromFolder().load(str(files / "clips"), 3, 8.0, 64, 64, 1, 0, 127)
        cache, _ = train_nodes.BuildLatentCache().build(bundle, dataset, "c", "cached", "fp32", False)
    widgets = {name: spec[1].get("default") for name, spec in train_nodes._train_widgets().items()}
    widgets.update(steps=4, precision="fp32", gradient_checkpointing=False, save_every=0, lora_rank=4,
                   run_name="cancel")
    fake_comfy(monkeypatch, interrupt_after=1)  # the cancel button, pressed during step 2's progress update
    with torch.inference_mode(), pytest.raises(Interrupted):
        train_nodes.Train().train(bundle, cache, **widgets)
    run = configured / "SVDLab" / "train" / "cancel"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["state-step0000002.safetensors"]
    fake_comfy(monkeypatch, interrupt_after=None)
    with torch.inference_mode():
        out = train_nodes.Train().train(bundle, cache, **widgets)
    assert [r["step"] for r in read_log(run / "loss.jsonl")] == [1, 2, 3, 4]
    assert "4 steps of lora" in out["result"][3]


def test_bad_manifest_and_missing_folder_messages(files, configured, tmp_path):
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{"clip_id": "a", "source": "x.mp4"}]), path)
    with pytest.raises(InputError, match=r"lacks the column\(s\) \['clip_path', 'start_frame'"):
        train_nodes.DatasetFromManifest().load(str(path), 3, 8.0, 64, 64, 1, 0, "", True)
    with pytest.raises(InputError, match="clip folder 'no/such/folder': no readable folder of that name"):
        train_nodes.DatasetFromFolder().load("no/such/folder", 3, 8.0, 64, 64, 1, 0, 127)
    with pytest.raises(InputError, match="bucket '64by64' is not WIDTHxHEIGHT"):
        train_nodes.parse_buckets("576x1024, 64by64")


def ui_path(item: dict) -> Path:
    """The file a UI entry names ({"filename", "subfolder", "type"}: no server path, as core SaveImage)."""
    assert "fullpath" not in item
    return bridge.folder(item["type"]) / item["subfolder"] / item["filename"]
