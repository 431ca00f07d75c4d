"""Path escapes through every node input that names a file or folder: absolute paths, ``..``, symbolic links
that leave their folder, look-alike Unicode, control characters, hidden names. Each case must be refused by the
node's VALIDATE_INPUTS (what ComfyUI runs at ``/prompt`` time) with a specific message, and again when the node
runs; nothing may be read from or written outside the sandbox's allowed folders, and no process may start.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.nodes.bridge import PathRefused
from comfyui_svd_lab.nodes.io_nodes import LoadImage, LoadVideo, PreviewVideo, SaveVideo
from comfyui_svd_lab.nodes.lora_nodes import LoraConvert
from comfyui_svd_lab.nodes.multiview_nodes import SaveCameras
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError, SVDError
from comfyui_svd_lab.training_nodes import curation_nodes, train_nodes

OUTSIDE_FILE = "../outside/secret.png"


@pytest.fixture
def box(sandbox, no_process) -> Iterator:
    """The sandbox as the pack's headless folders, with traps: symlinks inside input/ and output/ that lead out."""
    inp, out = sandbox.folder("input"), sandbox.folder("output")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(inp / "ok.png")
    (inp / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inp / "sub" / "ok.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(sandbox.outside / "secret.png")
    (inp / "link.png").symlink_to(sandbox.outside / "secret.png")
    (inp / "linkdir").symlink_to(sandbox.outside, target_is_directory=True)
    (out / "evil").symlink_to(sandbox.outside, target_is_directory=True)
    (inp / "folder.png").mkdir()  # a directory where a file is expected: unreadable as a file
    (inp / "list.txt").write_text(f"{sandbox.outside / 'secret.mp4'}\n")
    (inp / "relative_list.txt").write_text("../outside/secret.mp4\n")
    (sandbox.outside / "secret.mp4").write_bytes(b"")
    bridge.configure(input_dir=inp, output_dir=out, temp_dir=sandbox.folder("temp"),
                     models_dirs=[sandbox.folder("models")], allow_any_path=False)
    sandbox.mark()
    _SERVER_PATHS[:] = [str(sandbox.folder(k)) for k in ("input", "output", "temp", "models")]
    yield sandbox
    bridge.reset()


_SERVER_PATHS: list[str] = []


def _refused(result: object, *fragments: str) -> None:
    assert isinstance(result, str), f"accepted: {result!r}"
    for fragment in fragments:
        assert fragment in result, f"{fragment!r} not in {result!r}"
    for folder in _SERVER_PATHS:  # the server's own folders are never named (only what the workflow said)
        assert folder not in result, f"{folder} in {result!r}"


# ------------------------------------------------------------------------------------------- reads

ESCAPING_PATHS = {
    "absolute-etc": "/etc/passwd",
    "dotdot": OUTSIDE_FILE,
    "dotdot-deep": "sub/../../outside/secret.png",
    "symlink-file": "link.png",
    "symlink-dir": "linkdir/secret.png",
    "dotdot-backslash-mixed": "sub/../../outside/secret.png",
}
MISSING_PATHS = {
    "fullwidth-dots": "．．/outside/secret.png",  # not '..' to the OS: a (missing) name inside input/
    "fullwidth-solidus": "..／outside／secret.png",
    "tilde": "~/secret.png",
    "missing": "missing.png",
}
CONTROL_PATHS = {"nul": "ok.png\x00.txt", "newline": "ok.png\n", "rtl-override": "ok\u202egnp.png"}


@pytest.mark.parametrize("value", ESCAPING_PATHS.values(), ids=ESCAPING_PATHS.keys())
@pytest.mark.parametrize("node", [LoadImage, LoadVideo], ids=["LoadImage", "LoadVideo"])
def test_load_path_input_escapes_are_refused(box, node, value):
    kind = "image" if node is LoadImage else "video"
    extra = {"width": 0, "height": 0} if node is LoadVideo else {}
    _refused(node.VALIDATE_INPUTS("", path=value, **extra) if node is LoadVideo else
             node.VALIDATE_INPUTS("", path=value), "is outside the input folder")
    with pytest.raises(PathRefused, match="is outside the input folder"):
        bridge.input_file("", value, kind)


@pytest.mark.parametrize("value", [*ESCAPING_PATHS.values(), "x.png [output]/../../outside/secret.png"],
                         ids=[*ESCAPING_PATHS.keys(), "annotated-escape"])
def test_load_list_values_cannot_escape(box, value):
    """The list value skips ComfyUI's own list check (VALIDATE_INPUTS names it), so the node checks it."""
    _refused(LoadImage.VALIDATE_INPUTS(value, ""), "is outside")
    with pytest.raises(PathRefused):
        LoadImage().load(value, "")


@pytest.mark.parametrize("value", MISSING_PATHS.values(), ids=MISSING_PATHS.keys())
def test_look_alikes_and_missing_files_are_not_found(box, value):
    _refused(LoadImage.VALIDATE_INPUTS("", path=value), "no readable file of that name in the input folder")


@pytest.mark.parametrize("value", CONTROL_PATHS.values(), ids=CONTROL_PATHS.keys())
def test_control_characters_are_refused(box, value):
    _refused(LoadImage.VALIDATE_INPUTS("", path=value), "control or invisible characters")
    _refused(LoadImage.VALIDATE_INPUTS(value, ""), "control or invisible characters")


def test_missing_and_unreadable_files_get_the_same_message(box):
    missing = LoadImage.VALIDATE_INPUTS("", path="nothing.png")
    unreadable = LoadImage.VALIDATE_INPUTS("", path="folder.png")
    assert missing.replace("'nothing.png'", "X") == unreadable.replace("'folder.png'", "X")


def test_huge_path_is_refused_without_echoing_it(box):
    value = "a" * 5_000_000
    message = LoadImage.VALIDATE_INPUTS("", path=value)
    _refused(message, "too long")
    assert len(message) < 300


def test_files_inside_the_input_folder_still_load(box):
    assert LoadImage.VALIDATE_INPUTS("ok.png", "") is True
    assert LoadImage.VALIDATE_INPUTS("", path="sub/ok.png") is True
    assert LoadImage.VALIDATE_INPUTS("", path=str(box.folder("input") / "ok.png")) is True  # absolute, but inside
    assert LoadImage().load("ok.png", "")[0].shape == (1, 8, 8, 3)
    assert LoadImage.VALIDATE_INPUTS("svd_lab_example.png", "") is True  # the pack's bundled example input


def test_headless_opt_in_allows_the_local_users_own_files(box):
    bridge.configure(allow_any_path=True)
    assert LoadImage.VALIDATE_INPUTS("", path=str(box.outside / "secret.png")) is True


def test_inside_comfyui_the_opt_in_is_ignored(box, monkeypatch):
    fp = types.ModuleType("folder_paths")
    for kind in ("input", "output", "temp"):
        setattr(fp, f"get_{kind}_directory", lambda k=kind: str(box.folder(k)))
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    bridge.configure(allow_any_path=True)
    _refused(LoadImage.VALIDATE_INPUTS("", path=str(box.outside / "secret.png")), "is outside the input folder")
    assert bridge.find_checkpoint(str(box.outside / "secret.png")) is None


# ------------------------------------------------------------------------------------------- writes

BAD_PREFIXES = {
    "dotdot": ("../x", "'..'"),
    "absolute": ("/tmp/svdlab_fuzz_x", "absolute path"),
    "empty": ("", "is empty"),
    "dot": (".", "'.'"),
    "dotdot-only": ("..", "'..'"),
    "hidden": (".hidden", "start with '.'"),
    "hidden-sub": ("sub/.hidden/x", "start with '.'"),
    "fullwidth-dots": ("．．/x", "'..'"),  # NFKC folds it to '..': refused like the real thing
    "fullwidth-solidus": ("..／x", "path separator"),
    "nul": ("a\x00b", "control"),
    "backslash-dotdot": ("..\\x", "'..'"),
    "drive": ("C:x", "absolute path"),
    "reserved": ("a|b", "reserved"),
}


@pytest.mark.parametrize(("value", "fragment"), BAD_PREFIXES.values(), ids=BAD_PREFIXES.keys())
@pytest.mark.parametrize("node", [SaveVideo, SaveCameras, train_nodes.SaveFinetuned],
                         ids=["SaveVideo", "SaveCameras", "SaveFinetuned"])
def test_bad_filename_prefixes_are_refused(box, node, value, fragment):
    _refused(node.VALIDATE_INPUTS(filename_prefix=value), fragment)
    with pytest.raises(PathRefused):
        bridge.save_target(value, "output", "mp4")


def test_prefix_through_a_symlinked_subfolder_is_refused_when_saving(box):
    _refused(SaveVideo.VALIDATE_INPUTS(filename_prefix="evil/x"), "through a symbolic link")
    frames = torch.rand(2, 16, 16, 3)
    with pytest.raises(PathRefused, match="leads out of the output folder"):
        SaveVideo().save(frames, 7.0, "webp", 50, "evil/x")
    assert sorted(p.name for p in box.outside.iterdir()) == ["secret.mp4", "secret.png"]


def test_saved_video_ui_names_no_server_path(box):
    frames = torch.rand(2, 16, 16, 3)
    for result in (SaveVideo().save(frames, 7.0, "webp", 50, "SVDLab/video", prompt={"1": {}}),
                   PreviewVideo().preview(frames, 7.0, "webp", 50)):
        entry = result["ui"]["images"][0]
        assert set(entry) == {"filename", "subfolder", "type"}
        assert str(box.root) not in json.dumps(result["ui"])
    assert (box.folder("output") / "SVDLab").is_dir()


BAD_NAMES = {
    "dotdot": "../../../x",
    "absolute": "/tmp/svdlab_fuzz_run",
    "nested": "a/b",
    "dot": ".",
    "dotdot-only": "..",
    "hidden": ".x",
    "empty": " ",
    "fullwidth-dots": "．．",
    "backslash": "a\\b",
    "nul": "a\x00",
}


@pytest.mark.parametrize("value", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_run_and_cache_names_are_names(box, value):
    assert isinstance(train_nodes.Train.VALIDATE_INPUTS(run_name=value), str)
    problem = train_nodes.BuildLatentCache.VALIDATE_INPUTS(cache_name=value)
    assert value.strip() == "" and problem is True or isinstance(problem, str)  # '' = the automatic name
    with pytest.raises(PathRefused):
        train_nodes.Train().train(None, None, run_name=value)


def test_run_and_cache_names_that_are_links_out_are_refused(box):
    for under in ("train", "cache"):
        (box.folder("output") / "SVDLab" / under).mkdir(parents=True)
        (box.folder("output") / "SVDLab" / under / "away").symlink_to(box.outside, target_is_directory=True)
    _refused(train_nodes.Train.VALIDATE_INPUTS(run_name="away"), "symbolic link")
    _refused(train_nodes.BuildLatentCache.VALIDATE_INPUTS(cache_name="away"), "symbolic link")


def test_output_name_through_a_symlink_is_refused(box):
    _refused(curation_nodes.WriteManifest.VALIDATE_INPUTS(output_name="evil/curation"), "symbolic link")
    _refused(curation_nodes.CurateFolder.VALIDATE_INPUTS("svd", "", output_name="evil/curation"), "symbolic link")
    with pytest.raises(PathRefused, match="symbolic link"):
        curation_nodes.output_folder("evil/curation")
    for value in ("/tmp/x", "../x", ".x"):
        with pytest.raises(PathRefused):
            curation_nodes.output_folder(value)


EXTRA_CONFIG = {
    "output_dir": {"output_dir": "/tmp/svdlab_fuzz"},
    "resume": {"resume": "/etc/passwd"},
    "checkpoint": {"checkpoint": "/x.safetensors"},
    "validation-image": {"validation": {"image": "/etc/passwd"}},
    "cache-dir": {"cache": {"dir": "/tmp"}},
    "data-folder": {"data": {"folder": "/"}},
}


@pytest.mark.parametrize("value", EXTRA_CONFIG.values(), ids=EXTRA_CONFIG.keys())
def test_train_extra_config_may_not_name_paths(box, value):
    _refused(train_nodes.Train.VALIDATE_INPUTS(run_name="ok", extra_config=json.dumps(value)), "may not set")


@pytest.mark.parametrize("value", ["../x", "/x", ".x", "a/b", "．．"])
def test_lora_convert_file_name_is_a_name(box, value):
    assert isinstance(LoraConvert.VALIDATE_INPUTS(None, value), str)
    assert bridge.lora_output_dir() == box.folder("output") / "SVDLab" / "loras"


# ------------------------------------------------------------------------------------ data folders

DATA_ESCAPES = {
    "root": "/",
    "absolute-outside": "{outside}",
    "dotdot": "../outside",
    "symlink-dir": "linkdir",
}


@pytest.mark.parametrize("value", DATA_ESCAPES.values(), ids=DATA_ESCAPES.keys())
def test_video_and_dataset_folders_are_confined(box, value):
    value = value.format(outside=box.outside)
    _refused(curation_nodes.LoadVideoFolder.VALIDATE_INPUTS(value), "is outside")
    for what in ("clip folder", "manifest"):
        with pytest.raises(PathRefused, match="is outside"):
            train_nodes.resolve_folder(value, what)


@pytest.mark.parametrize("name", ["list.txt", "relative_list.txt"])
def test_list_file_entries_are_confined(box, name):
    # the list file itself is inside, its entry is not: refused when queued and when run
    _refused(curation_nodes.LoadVideoFolder.VALIDATE_INPUTS(name), "names a file outside")
    with pytest.raises(PathRefused, match="names a file outside"):
        curation_nodes.LoadVideoFolder().load(name, "mp4", 0)


MODEL_FILES = {"absolute": "/etc/passwd", "dotdot": "../outside/secret.png", "hidden": ".x/y"}


@pytest.mark.parametrize("value", MODEL_FILES.values(), ids=MODEL_FILES.keys())
def test_clip_score_files_come_from_model_folders(box, value):
    assert isinstance(curation_nodes.ClipScores.VALIDATE_INPUTS(value, "", ""), str)
    assert isinstance(curation_nodes.ClipScores.VALIDATE_INPUTS("", value, ""), str)
    assert isinstance(curation_nodes.ClipScores.VALIDATE_INPUTS("", "", value), str)
    settings = json.dumps({"tokenizer": value})
    _refused(curation_nodes.CurateFolder.VALIDATE_INPUTS("svd", settings), "settings.tokenizer")


def test_model_file_inside_a_model_folder_is_found(box):
    (box.folder("models") / "heads").mkdir()
    (box.folder("models") / "heads" / "aesthetic.safetensors").write_bytes(b"x")
    assert curation_nodes.ClipScores.VALIDATE_INPUTS("heads/aesthetic.safetensors", "", "") is True


@pytest.mark.parametrize("value", ["/etc/passwd", "../x.safetensors", "..\\x.safetensors"])
def test_checkpoint_names_cannot_escape(box, value):
    assert bridge.find_checkpoint(value) is None
    with pytest.raises(SVDError, match="not found"):
        bridge.resolve_checkpoint(value)


def test_errors_are_svd_errors(box):
    """Every refusal is one of the package's errors (the CLI and ComfyUI show them as one clear line)."""
    assert issubclass(PathRefused, InputError)
    with pytest.raises(ConfigError):
        train_nodes._extra_config("[1]")


def test_read_errors_name_the_file_relative_to_its_folder(box):
    (box.folder("input") / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    (box.folder("input") / "broken.png").write_bytes(b"not a png")
    for load in (lambda: LoadVideo().load("broken.mp4", 0, 0, 1, 0.0, 0, 0, "cover"),
                 lambda: LoadImage().load("broken.png")):
        with pytest.raises(InputError) as caught:
            load()
        assert "input/broken." in str(caught.value) and str(box.folder("input")) not in str(caught.value)
