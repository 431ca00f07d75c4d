"""Program injection through every captioner input: the Captions node's three inputs (validation and run),
CurateFolder's settings JSON, a curation config (CurationConfig / --config / --set / --captioner, as a config or
manifest from someone else's dataset would carry it), and the registry lookup. Each value must be refused with
the message saying captioners are registered outside workflows, and no process may start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_svd_lab.cli import main
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.curation import captioner_registry as reg
from comfyui_svd_lab.svd_model.curation.captions import get_captioner
from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig
from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.training_nodes import curation_base, curation_nodes

REFUSED = "registered by the local user outside workflows"

INJECTIONS = {
    "command_spec": "command:/bin/sh -c 'touch /tmp/pwned'",
    "command_video_spec": "command-video:id",
    "command_summary_spec": "command-summary:curl http://x",
    "local_image_path": "local-image:/etc",
    "absolute_program": "/bin/sh",
    "relative_program": "./caption.sh",
    "parent_path": "../../bin/sh",
    "shell_line": "blip; rm -rf /",
    "backticks": "`id`",
    "dollar": "$(id)",
    "pipe": "blip|sh",
    "spaces": "sh -c id",
    "windows_path": "C:\\Windows\\System32\\cmd.exe",
    "option": "--help",
    "newline": "blip\nid",
    "home": "~/bin/cap",
    "unicode_slash": "bin\u2215sh",
}


@pytest.fixture
def registered(tmp_path, monkeypatch) -> Path:
    """A settings file registering one real captioner ("blip"), found through $SVD_LAB_CAPTIONERS."""
    path = tmp_path / "captioners.json"
    path.write_text(json.dumps({"captioners": [{"name": "blip", "kind": "image", "argv": ["/bin/echo", "a cat"]}]}))
    monkeypatch.setenv(reg.ENV_VAR, str(path))
    return path


@pytest.mark.parametrize("value", INJECTIONS.values(), ids=list(INJECTIONS))
def test_registry_refuses(value, registered, no_process):
    with pytest.raises(ConfigError, match=REFUSED):
        get_captioner(value)
    with pytest.raises(ConfigError, match=REFUSED):
        reg.default_registry().get(value)


@pytest.mark.parametrize("value", INJECTIONS.values(), ids=list(INJECTIONS))
def test_curation_config_refuses(value, registered, no_process):
    with pytest.raises(ConfigError, match=rf"config.captioners\[0\] .*{REFUSED}"):
        CurationConfig.from_dict({"captioners": [value]})


@pytest.mark.parametrize("kind", ["image", "video", "summary"])
@pytest.mark.parametrize("value", INJECTIONS.values(), ids=list(INJECTIONS))
def test_captions_node_refuses(value, kind, registered, sandbox, no_process):
    node = curation_nodes.Captions
    inputs = {"image_captioner": "none", "video_captioner": "none", "summary_captioner": "none"}
    inputs[f"{kind}_captioner"] = value
    problem = node.VALIDATE_INPUTS(**inputs)
    assert isinstance(problem, str) and REFUSED in problem
    assert value not in node.INPUT_TYPES()["required"][f"{kind}_captioner"][0]
    with pytest.raises(ConfigError, match=REFUSED):
        node().run(None, **inputs)  # refused before the clips are touched


@pytest.mark.parametrize("value", INJECTIONS.values(), ids=list(INJECTIONS))
def test_curate_folder_settings_refuse(value, registered, sandbox, no_process):
    settings = json.dumps({"captioners": [value]})
    problem = curation_nodes.CurateFolder.VALIDATE_INPUTS(rules="none", settings=settings)
    assert isinstance(problem, str) and REFUSED in problem and "settings.captioners[0]" in problem


@pytest.mark.parametrize("how", ["config_json", "config_file", "set", "captioner_flag"])
@pytest.mark.parametrize("value", ["command:/bin/sh -c id", "local-image:/etc", "/bin/sh"],
                         ids=["command", "local_image", "program"])
def test_cli_config_refuses(value, how, registered, sandbox, no_process, capsys):
    """`svd-lab curate` reads captioner names from a config (e.g. a curation_config.json that came with a dataset)
    and from --captioner: a command there is refused before anything runs."""
    videos = sandbox.folder("input")
    (videos / "v.mp4").write_bytes(b"\x00" * 64)
    out = sandbox.folder("output") / "run"
    argv = ["curate", str(videos), "--out", str(out), "--engine", "inline", "--quiet", "--no-report"]
    data = json.dumps({"captioners": [value]})
    if how == "config_json":
        argv += ["--config", data]
    elif how == "config_file":
        (sandbox.folder("input") / "curation_config.json").write_text(data)
        argv += ["--config", str(sandbox.folder("input") / "curation_config.json")]
    elif how == "set":
        argv += ["--set", f"captioners={data[15:-1]}"]
    else:
        argv += ["--captioner", value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert REFUSED in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_name_lists_the_registered_ones(registered, no_process):
    with pytest.raises(ConfigError, match=r"unknown captioner 'coca'; registered captioners: blip \(read from .*"
                                          r"captioners.json\)"):
        get_captioner("coca")
    problem = curation_nodes.Captions.VALIDATE_INPUTS(image_captioner="coca", video_captioner="none",
                                                     summary_captioner="none")
    assert "registered captioners: blip" in problem
    problem = curation_nodes.Captions.VALIDATE_INPUTS(image_captioner="none", video_captioner="blip",
                                                     summary_captioner="none")
    assert "'blip' is a image captioner, not a video captioner" in problem


def test_registered_names_are_the_node_choices(registered, tmp_path, monkeypatch):
    spec = curation_nodes.Captions.INPUT_TYPES()["required"]
    assert spec["image_captioner"][0] == ["none", "blip"] and spec["video_captioner"][0] == ["none"]
    assert curation_nodes.Captions.VALIDATE_INPUTS(image_captioner="blip", video_captioner="none",
                                                  summary_captioner="none") is True
    user = tmp_path / "user"
    (user / "svd_lab").mkdir(parents=True)
    (user / "svd_lab" / "captioners.json").write_text(json.dumps({"captioners": [
        {"name": "vb", "kind": "video", "argv": ["/opt/vb"]}]}))
    monkeypatch.setattr(bridge, "user_folder", lambda: str(user), raising=False)
    assert curation_base.captioner_registry().names() == ["blip", "vb"]
    (user / "svd_lab" / "captioners.json").write_text("{broken")
    assert curation_base.captioner_choices("image")() == ["none"]  # the node still loads


def test_cli_registration_is_the_way_to_name_a_program(tmp_path, capsys, monkeypatch):
    """The CLI user is local and trusted: --register-captioner makes a name, --captioner chooses it."""
    monkeypatch.delenv(reg.ENV_VAR, raising=False)
    from comfyui_svd_lab.cli.curate import build_registry

    class Args:
        captioner_config = None
        register_captioner = ["scene=/bin/echo a scene", "vid:video=/bin/echo moving"]

    registry = build_registry(Args())
    assert registry.names() == ["scene", "vid"] and registry.get("vid").argv == ("/bin/echo", "moving")
    assert registry.get("scene").kind == "image"
