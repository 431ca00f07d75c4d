"""The optional learned shot detector (svd_model/curation/shot_model.py): a user-supplied ONNX network with the
TransNetV2 contract as a level of the cut cascade.

The network is built here (tests/shot_model_support.py): its logit is the mean frame difference to the next frame
minus a bias, so it fires on the last frame of the old shot at a hard cut, as TransNetV2's single-frame head.
Streaming predictions must equal the network applied to the whole video at once; cuts on synthetic videos must be
frame-exact; wrong files, names and a missing onnxruntime give clear errors; the default config is unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from shot_model_support import diff_model, image_model, onnx, reference_probabilities

from comfyui_svd_lab.cli import main
from comfyui_svd_lab.svd_model.curation import shot_model
from comfyui_svd_lab.svd_model.curation.annotate import annotate_video
from comfyui_svd_lab.svd_model.curation.cuts import CascadeDetector, Cut, CutConfig, LevelConfig
from comfyui_svd_lab.svd_model.curation.records import CurationConfig
from comfyui_svd_lab.svd_model.curation.shot_model import (
    LearnedDetector,
    ShotModel,
    find_shot_model,
    layout_of,
    make_detector,
    merge_cuts,
    rgb_thumbnails,
)
from comfyui_svd_lab.svd_model.curation.synthetic import make_video
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError, InputError, ShapeError

SHAPE = (3, 27, 48)  # the annotator's small images of a 16:9 video: (Y U V, h, w)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shot_detectors")
    diff_model(root / "diff.onnx")
    diff_model(root / "fixed.onnx", channels_last=False, float_input=True, window=100, batch=1, output_rank=2,
               many=False)
    diff_model(root / "sub" / "nested.onnx")
    image_model(root / "classifier.onnx")
    (root / "garbage.onnx").write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    (root / "empty.onnx").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory):
    """Hard cuts (frame-exact truth) and a fade, 3 chunks of the annotator: the windows run while decoding."""
    path = tmp_path_factory.mktemp("video") / "cuts.mp4"
    truth = make_video(path, shots=(70, 90, 60, 80), transitions=("hard", "hard", "fade"), motion=(1, 2, 0.5, 1),
                       size=(192, 108), seed=5, preset="ultrafast")
    return path, truth


def _frames(n: int, cuts: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(n, 3, 27, 48) float32 YUV small images: textured shots that drift slowly, new texture at each cut."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, *SHAPE), np.float32)
    bounds = [0, *cuts, n]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        base = rng.uniform(30, 220, SHAPE).astype(np.float32)
        for i in range(a, b):
            out[i] = np.clip(base + (i - a) * 0.2 + rng.normal(0, 1, SHAPE), 16, 235)
    return out


def _stream(model: ShotModel, small: np.ndarray, chunks: list[int], cfg: CutConfig) -> LearnedDetector:
    det = LearnedDetector(model, cfg, 25.0)
    pos = 0
    for c in chunks:
        det.push(small[pos : pos + c])
        pos += c
    det.push(small[pos:])
    det.finish(np.arange(len(small)) / 25.0)
    return det


@pytest.mark.parametrize("name", ["diff.onnx", "fixed.onnx"])
def test_streaming_windows_equal_the_network_on_the_whole_video(models, name):
    """Windows of 100 with 25 frames of context, run as chunks arrive (any chunk sizes, a fixed or free batch,
    channels last or first, uint8 or float input), predict every frame as the whole video would."""
    small = _frames(333, (90, 201, 202, 260))
    expected = reference_probabilities(rgb_thumbnails(small, (27, 48)))
    model = ShotModel.load(models / name)
    cfg = CutConfig(detector="learned", shot_model=str(models / name))
    for chunks in ([128, 128], [37] * 8, [1, 2, 300]):
        det = _stream(model, small, chunks, cfg)
        assert det.predicted == len(small)
        np.testing.assert_allclose(det.single.view, expected, atol=1e-5)
    short = _stream(model, small[:7], [], cfg)  # shorter than one window: padded at both ends
    np.testing.assert_allclose(short.single.view, reference_probabilities(rgb_thumbnails(small[:7], (27, 48))),
                               atol=1e-5)


def test_probabilities_become_cuts_at_the_new_shot():
    """A run above the threshold -> one cut after its peak (the old shot's last frame), spanning the many-hot run
    after the old shot's last frame (kind "learned"; "hard" when no frame lies between the shots); cuts closer
    than min_scene_s keep the higher score; none in the first min_scene frames (8 at 25 fps)."""
    lay = shot_model.Layout("x", True, "uint8", 27, 48, 100, 25, None, "single", "many_hot")
    cfg = CutConfig(detector="learned", shot_model="x.onnx")
    det = LearnedDetector(SimpleNamespace(layout=lay), cfg, 25.0)
    single, many = np.full(300, 0.01, np.float32), np.full(300, 0.01, np.float32)
    single[2] = 0.99  # a first shot of 3 frames: dropped
    single[119], single[123] = 0.7, 0.95  # 4 frames apart: the higher wins
    single[199], many[198:206] = 0.8, 0.9  # a gradual transition: old shot ends at 198, frames 199..205 between
    single[250:253] = (0.6, 0.9, 0.7)  # one run, one cut after its peak
    det.single.extend(single)
    det.many.extend(many)
    det.n = 300
    det._scan(final=False)  # streaming: nothing is open at the end, so everything is decided
    assert det.final_before == 300 - det.frames.span_max - 1
    cuts = det.cuts(np.arange(300) / 25.0)
    assert [(c.frame, c.end_frame, c.kind, c.level, c.score) for c in cuts] == [
        (124, 124, "hard", 4, 0.95), (199, 205, "learned", 4, 0.8), (252, 252, "hard", 4, 0.9)]
    assert cuts[1].time == pytest.approx(199 / 25.0) and cuts[1].center == 202
    open_run = LearnedDetector(SimpleNamespace(layout=lay), cfg, 25.0)
    open_run.single.extend(single[:251])
    open_run.many.extend(many[:251])
    open_run.n = 251
    open_run._scan(final=False)  # the run at 250.. may go on: undecided, and so is what is near it
    assert [e.start for e in open_run.events] == [124, 199] and open_run.scanned == 250


def test_learned_and_combined_detectors_on_a_synthetic_video(models, video):
    path, truth = video
    hard = [c for c, t in zip(truth.cuts, truth.transitions, strict=True) if t[2] == "hard"]
    learned = annotate_video(path, CutConfig(detector="learned", shot_model=str(models / "diff.onnx")))
    found = [c.frame for c in learned.cuts]
    assert found[:2] == hard  # frame-exact
    fade = truth.transitions[2]  # this network sees a fast fade's steps as changes: a cut inside the fade at most
    assert len(found) <= 3 and all(fade[0] <= f <= fade[1] for f in found[2:])
    assert all(0.5 < c.score <= 1 and c.level == 4 for c in learned.cuts)  # the level after the cascade's three
    assert [(c.kind, c.end_frame - c.frame) for c in learned.cuts[:2]] == [("hard", 0)] * 2  # no frame between
    assert all(c.kind == "learned" and c.end_frame > c.frame for c in learned.cuts[2:])  # frames between
    assert len(learned.motion_frames) > 0

    cascade = annotate_video(path)
    both = annotate_video(path, CutConfig(detector="cascade+learned", shot_model=str(models / "diff.onnx")))
    assert both.cuts == cascade.cuts  # every learned cut is one the cascade found: the cascade's kind is kept
    assert [c.kind for c in cascade.cuts] == ["hard", "hard", "fade"]

    blind = CutConfig(levels=(LevelConfig(None, 1000.0, 1000.0),))  # a cascade that finds nothing
    union = annotate_video(path, replace(blind, detector="cascade+learned", shot_model=str(models / "diff.onnx")))
    assert annotate_video(path, blind).cuts == ()
    assert [replace(c, level=4) for c in union.cuts] == list(learned.cuts)  # the level after the cascade's one
    assert {c.level for c in union.cuts} == {2}


def test_merge_keeps_the_cascade_cut_and_adds_the_others():
    def cut(frame: int, end: int, kind: str, level: int) -> Cut:
        return Cut(frame, frame / 25, kind, 0.9, end, level)

    cascade = [cut(50, 50, "hard", 1), cut(100, 111, "fade", 2)]
    learned = [cut(53, 53, "learned", 4), cut(75, 75, "learned", 4), cut(113, 113, "learned", 4)]
    merged = merge_cuts(cascade, learned, gap=3)
    assert [(c.frame, c.kind) for c in merged] == [(50, "hard"), (75, "learned"), (100, "fade")]
    assert [c.frame for c in merge_cuts(cascade, learned, gap=2)] == [50, 53, 75, 100]  # 113: 2 after 111
    assert [c.frame for c in merge_cuts(cascade, learned, gap=1)] == [50, 53, 75, 100, 113]


def test_default_config_is_the_cascade_alone():
    cfg = CutConfig()
    assert (cfg.detector, cfg.shot_model, cfg.shot_threshold) == ("cascade", "", 0.5)
    assert type(make_detector(cfg, 25.0, SHAPE)) is CascadeDetector
    assert CurationConfig().cut == cfg


def test_config_errors():
    with pytest.raises(ConfigError, match="detector must be one of cascade, learned, cascade\\+learned"):
        CutConfig(detector="transnet")
    with pytest.raises(ConfigError, match="needs shot_model"):
        CutConfig(detector="learned")
    with pytest.raises(ConfigError, match="shot_threshold must be between 0 and 1"):
        CutConfig(detector="learned", shot_model="x.onnx", shot_threshold=1.5)
    with pytest.raises(ConfigError, match="shot_threshold must be between 0 and 1, got nan"):
        CurationConfig.from_dict({"cut": {"shot_threshold": float("nan")}})


def test_names_resolve_inside_the_folders_only(models, tmp_path):
    other = tmp_path / "other"
    diff_model(other / "second.onnx")
    assert find_shot_model("diff.onnx", [other, models]) == (models / "diff.onnx").absolute()
    assert find_shot_model("second.onnx", [other, models]) == (other / "second.onnx").absolute()
    assert find_shot_model("sub/nested.onnx", [models]) == (models / "sub" / "nested.onnx").absolute()
    (other / "linked.onnx").symlink_to(models / "diff.onnx")  # placed by the folder's owner: followed
    assert find_shot_model("linked.onnx", [other]).is_file()
    for bad, message in ((str(models / "diff.onnx"), "is a path"), ("../shot_detectors/diff.onnx", "'\\.\\.'"),
                         ("sub/../diff.onnx", "'\\.\\.'"), (".hidden.onnx", "hidden"), ("model.pt", "not an .onnx"),
                         ("", "empty"), ("C:evil.onnx", "is a path")):
        with pytest.raises(ConfigError, match=message):
            find_shot_model(bad, [models])
    with pytest.raises(InputError, match="not found in .*nothing is downloaded"):
        find_shot_model("missing.onnx", [models])
    with pytest.raises(ConfigError, match="no shot-detector folder is configured"):
        find_shot_model("diff.onnx", [])


def test_wrong_files_give_clear_errors(models, tmp_path):
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        ShotModel.load(models / "garbage.onnx")
    external = tmp_path / "external.onnx"  # weights beside the file: never read (the file goes in as bytes)
    diff_model(external)
    model = onnx.load(external)
    raw = [onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name) for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(raw)  # raw_data tensors: the ones onnx moves to the external file
    onnx.save(model, external, save_as_external_data=True, location="external.data", size_threshold=0)
    assert (tmp_path / "external.data").is_file()
    with pytest.raises(CheckpointError, match="external data files, which are not supported"):
        ShotModel.load(external)
    with pytest.raises(CheckpointError, match="has 0 bytes"):
        ShotModel.load(models / "empty.onnx")
    with pytest.raises(ShapeError, match=r"input 'image' has shape \[1, 3, 32, 32\].*windows of frames"):
        ShotModel.load(models / "classifier.onnx")
    with pytest.raises(CheckpointError, match="is a folder"):
        ShotModel.load(models / "sub")
    with pytest.raises(CheckpointError, match="not found"):
        ShotModel.load(models / "missing.onnx")
    os.mkfifo(tmp_path / "pipe.onnx")  # never opened: a FIFO would block a reader
    with pytest.raises(CheckpointError, match="named pipe"):
        ShotModel.load(tmp_path / "pipe.onnx")
    # the network is loaded once per run, before any video: annotate raises instead of an error row per video
    with pytest.raises(ShapeError):
        make_detector(CutConfig(detector="learned", shot_model=str(models / "classifier.onnx")), 25.0, SHAPE)


def test_layouts_accepted_and_refused():
    single, many = ("single", [None, None, 1], "tensor(float)"), ("many_hot", ["b", "t", 1], "tensor(float)")
    lay = layout_of([("frames", ["b", "t", 27, 48, 3], "tensor(uint8)")], [many, single])
    assert (lay.channels_last, lay.window, lay.context, lay.step, lay.batch) == (True, 100, 25, 50, None)
    assert (lay.single, lay.many, lay.height, lay.width) == ("single", "many_hot", 27, 48)
    lay = layout_of([("x", [1, 3, 100, 27, 48], "tensor(float)")], [("logits", [1, 100], "tensor(float)")])
    assert (lay.channels_last, lay.dtype, lay.batch, lay.many) == (False, "float32", 1, None)
    lay = layout_of([("x", [1, 48, 36, 64, 3], "tensor(uint8)")], [("a", [1, 48, 1], "tensor(float)")] * 2)
    assert (lay.window, lay.context, lay.step, lay.height, lay.width) == (48, 12, 24, 36, 64)
    refused = [
        ([("a", [1, 100, 27, 48, 3], "tensor(uint8)"), ("b", [1], "tensor(float)")], [single], "exactly one input"),
        ([("x", [1, 100, 27, 48, 4], "tensor(uint8)")], [single], "no axis of 3 colour channels"),
        ([("x", [1, 100, 27, 48, 3], "tensor(int64)")], [single], "uint8 or float"),
        ([("x", [1, 100, 270, 480, 3], "tensor(uint8)")], [single], "at most 128 px"),
        ([("x", [1, 100, 27, 48, 3], "tensor(uint8)")], [("s", [1, 50, 1], "tensor(float)")], "per-frame logits"),
        ([("x", [1, 100, 27, 48, 3], "tensor(uint8)")], [("s", [1, 100, 2], "tensor(float)")], "per-frame logits"),
        ([("x", [1, 100, 27, 48, 3], "tensor(uint8)")], [many], "only a many-hot output"),
        ([("x", [1, 100, 27, 48, 3], "tensor(uint8)")], [], "no output"),
    ]
    for inputs, outputs, message in refused:
        with pytest.raises(ShapeError, match=message):
            layout_of(inputs, outputs)


def test_missing_onnxruntime_says_how_to_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    shot_model._load.cache_clear()
    with pytest.raises(ConfigError, match="needs onnxruntime.*pip install onnxruntime"):
        ShotModel.load(models / "diff.onnx")
    monkeypatch.undo()
    shot_model._load.cache_clear()
    assert ShotModel.load(models / "diff.onnx").layout.single == "single"


def test_cli_resolves_the_name_in_the_shot_model_folder(models, video, tmp_path, capsys):
    path, truth = video
    base = ["curate", str(path.parent), "--engine", "inline", "--quiet", "--no-report", "--no-text"]
    out = tmp_path / "learned"
    assert main([*base, "--out", str(out), "--detector", "learned", "--shot-model", "diff.onnx",
                 "--shot-model-dir", str(models), "--set", "split.min_seconds=0.5"]) == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "manifest").to_pylist()
    assert {r["cut_out"] for r in rows} >= {"learned"}
    for argv, message in (
        (["--detector", "learned", "--shot-model", str(models / "diff.onnx"), "--shot-model-dir", str(models)],
         "is a path"),
        (["--detector", "learned", "--shot-model", "missing.onnx", "--shot-model-dir", str(models)], "not found"),
        (["--detector", "learned", "--shot-model", "classifier.onnx", "--shot-model-dir", str(models)],
         "windows of frames"),
        (["--detector", "learned"], "needs shot_model"),
    ):
        capsys.readouterr()
        assert main([*base, "--out", str(tmp_path / "bad"), *argv]) == 2
        assert message in capsys.readouterr().err, argv


# ---------------------------------------------------------------------------------------------- nodes


@pytest.fixture
def shot_nodes(models, folders, video, monkeypatch):
    """Headless node folders with the test networks as the shot-detector folder and the video in input/."""
    from comfyui_svd_lab.training_nodes import curation_nodes

    monkeypatch.setenv("SVD_LAB_SHOT_MODELS", str(models))
    (folders / "in" / "videos").mkdir()
    shutil.copy(video[0], folders / "in" / "videos" / "cuts.mp4")
    return curation_nodes


def test_annotate_node_lists_and_runs_the_learned_detector(shot_nodes, video):
    from comfyui_svd_lab import NODE_CLASS_MAPPINGS

    node = NODE_CLASS_MAPPINGS["SVDLab_AnnotateVideos"]
    optional = node.INPUT_TYPES()["optional"]
    assert optional["detector"][0] == ["cascade", "learned", "cascade+learned"]
    assert optional["detector"][1]["default"] == "cascade" and optional["shot_model"][1]["default"] == "none"
    assert {"none", "diff.onnx", "sub/nested.onnx", "classifier.onnx"} <= set(optional["shot_model"][0])
    videos, _ = NODE_CLASS_MAPPINGS["SVDLab_LoadVideoFolder"]().load("videos", "mp4", 0)
    (ann,) = node().annotate(videos, 0.3, 2.0, "", detector="learned", shot_model="diff.onnx", shot_threshold=0.5)
    (ref, result, error), = ann.items
    assert error == "" and [c.frame for c in result.cuts][:2] == list(video[1].cuts[:2])
    assert {c.level for c in result.cuts} == {4} and [c.kind for c in result.cuts][:2] == ["hard", "hard"]
    assert ann.config.cut.shot_model == str((shot_nodes.bridge.shot_model_dirs()[0] / "diff.onnx").absolute())
    (old,) = node().annotate(videos, 0.3, 2.0, "")  # a workflow saved before the widgets: the cascade
    assert old.config.cut.detector == "cascade" and [c.kind for c in old.items[0][1].cuts] == ["hard", "hard", "fade"]


def test_nodes_refuse_paths_and_contradictions(shot_nodes, models):
    from comfyui_svd_lab import NODE_CLASS_MAPPINGS

    node = NODE_CLASS_MAPPINGS["SVDLab_AnnotateVideos"]
    assert node.VALIDATE_INPUTS("", shot_model="diff.onnx", shot_threshold=0.5) is True
    for bad in ("../diff.onnx", str(models / "diff.onnx"), "missing.onnx", "sub/../../x.onnx"):
        problem = node.VALIDATE_INPUTS("", shot_model=bad)
        assert isinstance(problem, str) and ("diff.onnx" in problem or "x.onnx" in problem or "missing" in problem)
    assert "above the maximum" in node.VALIDATE_INPUTS("", shot_threshold=1.0)
    apply = shot_nodes.with_shot_widgets
    with pytest.raises(shot_nodes.bridge.PathRefused, match="absolute path"):  # a path in the JSON is refused too
        apply({"detector": "learned", "shot_model": str(models / "diff.onnx")}, "cut_settings")
    with pytest.raises(ConfigError, match="contradicts the detector widget"):
        apply({"detector": "learned"}, "cut_settings", detector="cascade", shot_model="none", shot_threshold=0.5)
    cut = apply({"detector": "learned", "shot_model": "sub/nested.onnx"}, "settings.cut")  # no widgets: the JSON
    assert cut["shot_model"] == str((models / "sub" / "nested.onnx").absolute())
    with pytest.raises(ShapeError, match="windows of frames"):  # a wrong network: one error before any video
        shot_nodes.check_shot_model(CurationConfig.from_dict(
            {"cut": apply({}, "cut_settings", detector="learned", shot_model="classifier.onnx")}))


def test_comfyui_registers_models_shot_detectors(tmp_path, monkeypatch):
    from comfyui_svd_lab.nodes import bridge

    fp = SimpleNamespace(models_dir=str(tmp_path / "models"), folder_names_and_paths={})
    fp.get_folder_paths = lambda key: fp.folder_names_and_paths[key][0]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    bridge.register_model_folder()
    paths, exts = fp.folder_names_and_paths["shot_detectors"]
    assert paths == [str(tmp_path / "models" / "shot_detectors")] and exts == {".onnx"}
    diff_model(tmp_path / "models" / "shot_detectors" / "mine.onnx")
    (tmp_path / "models" / "shot_detectors" / "notes.txt").write_text("x")
    assert bridge.list_shot_models() == ["mine.onnx"]
    assert bridge.resolve_shot_model("mine.onnx") == (tmp_path / "models" / "shot_detectors" / "mine.onnx").absolute()
    with pytest.raises(bridge.PathRefused):
        bridge.resolve_shot_model(str(tmp_path / "models" / "shot_detectors" / "mine.onnx"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated; exports of it exist
def test_a_torch_export_with_transnetv2s_signature_is_understood(tmp_path):
    """torch.onnx.export (TorchScript exporter) of a module with TransNetV2's forward signature (uint8 frames ->
    (logits, {"many_hot": logits})) names its outputs by number: the first is the single-frame head."""
    import torch

    class Signature(torch.nn.Module):
        def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            x = frames.float().mean(dim=[2, 3, 4])  # (b t)
            return (x - 100.0).unsqueeze(-1), {"many_hot": (x - 200.0).unsqueeze(-1)}

    path = tmp_path / "export.onnx"
    try:
        torch.onnx.export(Signature(), (torch.zeros(1, 100, 27, 48, 3, dtype=torch.uint8),), str(path),
                          dynamo=False, input_names=["frames"], dynamic_axes={"frames": {0: "batch", 1: "t"}})
    except (ModuleNotFoundError, RuntimeError) as exc:  # pragma: no cover - an exporter this torch lacks
        pytest.skip(f"torch.onnx.export(dynamo=False) unavailable: {exc}")
    model = ShotModel.load(path)
    assert model.layout.single != model.layout.many and "many" not in model.layout.single
    windows = np.full((2, 100, 27, 48, 3), 150, np.uint8)
    single, many = model.predict(windows)
    assert single.shape == many.shape == (2, 100)
    assert (single > 0.99).all() and (many < 0.01).all()  # 150 - 100 > 0 for the first, 150 - 200 < 0 for the other


def test_thumbnails_are_bt601_rgb_at_the_network_size():
    """Video-range Y'CbCr -> RGB: white, black, BT.601 red; the same as kornia's ycbcr_to_rgb on the range-expanded
    planes; 4:3 thumbnails (36 rows) are area-scaled to 27 rows."""
    kornia = pytest.importorskip("kornia")
    import torch

    colours = np.array([[235, 128, 128], [16, 128, 128], [81, 90, 240], [145, 54, 34]], np.float32)  # white..green
    small = np.broadcast_to(colours[:, :, None, None], (4, 3, 27, 48)).copy()
    rgb = rgb_thumbnails(small, (27, 48))
    assert rgb.shape == (4, 27, 48, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[:, 0, 0], [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0]], atol=2)
    noisy = np.random.default_rng(1).uniform(16, 235, (5, 3, 36, 48)).astype(np.float32)
    t = torch.from_numpy(noisy)
    expanded = torch.cat([(t[:, :1] - 16) / 219, (t[:, 1:] - 128) / 224 + 0.5], 1)
    expected = (kornia.color.ycbcr_to_rgb(expanded).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    same_size = rgb_thumbnails(noisy, (36, 48)).astype(np.float32)
    assert np.abs(same_size - expected).max() <= 1.0
    scaled = rgb_thumbnails(noisy, (27, 48))
    assert scaled.shape == (5, 27, 48, 3)
    assert abs(float(scaled.mean()) - float(same_size.mean())) < 1.0  # area scaling keeps the mean


@pytest.mark.parametrize("level", [0.1, 0.9])
def test_undecided_frames_stay_within_the_latency_bound(level):
    """The annotator's motion ring is sized from ``latency``: however the probabilities look (never a cut, or
    always above the threshold, which is decided once a run is longer than a transition), the frames pushed but
    not final never exceed it, and cuts stay min_scene apart."""
    lay = shot_model.Layout("x", True, "uint8", 27, 48, 100, 25, None, "single", None)
    model = SimpleNamespace(layout=lay, predict=lambda w: (np.full((len(w), lay.window), level, np.float32), None))
    det = LearnedDetector(model, CutConfig(detector="learned", shot_model="x.onnx"), 25.0)
    small = np.full((128, *SHAPE), 128.0, np.float32)
    for _ in range(12):
        det.push(small)
        assert det.n - det.final_before <= det.latency
    det.finish(np.arange(det.n) / 25.0)
    assert det.predicted == det.n == 12 * 128
    starts = [e.start for e in det.events]
    assert (starts == []) == (level < 0.5) and all(np.diff(starts) > det.frames.min_scene)


def test_cli_default_folder_is_svd_lab_shot_models(models, monkeypatch):
    from comfyui_svd_lab.cli.curate import _resolve_shot_model

    monkeypatch.setenv("SVD_LAB_SHOT_MODELS", str(models))
    data = _resolve_shot_model({"cut": {"detector": "learned", "shot_model": "sub/nested.onnx"}}, None)
    assert data["cut"]["shot_model"] == str((models / "sub" / "nested.onnx").absolute())
    assert _resolve_shot_model({"cut": {}}, None) == {"cut": {}}
    monkeypatch.setenv("SVD_LAB_SHOT_MODELS", str(models / "sub"))
    with pytest.raises(InputError, match="not found"):
        _resolve_shot_model({"cut": {"shot_model": "diff.onnx"}}, None)
