"""The pack inside a real ComfyUI: loads, lists every node in /object_info, and runs each API-format
example through /prompt on a tiny checkpoint.

Runs only when COMFYUI_PATH points at a ComfyUI checkout (0.8.x). The server is started with
COMFYUI_PYTHON (default: COMFYUI_PATH/.venv/bin/python if present, else this interpreter) on
127.0.0.1, CPU only, with this repository linked into a temporary custom_nodes folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.jobs import tiny_overrides
from comfyui_svd_lab.svd_model.tiny import write_tiny_checkpoint
from comfyui_svd_lab.workflow import apply_overrides, load_workflow

REPO = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server test")
SMALL = {
    "SVDLab_ImageToVideoConditioning": {"width": 64, "height": 48, "frames": 3},
    "SVDLab_Sampler": {"steps": 2},
    "SVDLab_LoadVideo": {"frame_cap": 3, "width": 64, "height": 48},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / "comfyui-svd-lab").symlink_to(REPO, target_is_directory=True)
    write_tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors", seed=7)
    (root / "extra.yaml").write_text(
        f"svd_lab_test:\n  base_path: {root}\n  custom_nodes: custom_nodes\n  checkpoints: models/checkpoints\n"
    )
    for sub in ("input", "output", "temp"):
        (root / sub).mkdir()
    python = os.environ.get("COMFYUI_PYTHON") or next(
        (str(p) for p in [Path(COMFYUI) / ".venv" / "bin" / "python"] if p.exists()), sys.executable)
    port = _free_port()
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--extra-model-paths-config", str(root / "extra.yaml"), "--input-directory", str(root / "input"),
           "--output-directory", str(root / "output"), "--temp-directory", str(root / "temp"),
           "--disable-all-custom-nodes", "--whitelist-custom-nodes", "comfyui-svd-lab"]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited with {proc.returncode}: {(root / 'server.log').read_text()[-3000:]}")
        try:
            _get(base + "/system_stats")
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("ComfyUI did not start within 240 s")
    yield base, root
    proc.terminate()
    proc.wait(30)
    log.close()


def test_object_info_lists_every_node(server):
    base, root = server
    info = _get(base + "/object_info")
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered: {missing}; log: {(root / 'server.log').read_text()[-2000:]}"
    for name in NODE_CLASS_MAPPINGS:
        assert info[name]["category"].startswith("SVD Lab")
        assert "comfyui-svd-lab" in info[name]["python_module"]
    assert "tiny.safetensors" in info["SVDLab_CheckpointLoader"]["input"]["required"]["ckpt_name"][0]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "example_workflows" / "api").glob("*.json")))
def test_api_example_runs_through_prompt(server, name):
    base, root = server
    prompt, _ = load_workflow(REPO / "example_workflows" / "api" / name, NODE_CLASS_MAPPINGS)
    prompt = apply_overrides(prompt, tiny_overrides(prompt, "tiny.safetensors", SMALL), NODE_CLASS_MAPPINGS)
    status, reply = _post(base + "/prompt", {"prompt": prompt, "client_id": "svd-lab-test"})
    assert status == 200, reply
    prompt_id = reply["prompt_id"]
    deadline = time.time() + 300
    while time.time() < deadline:
        history = _get(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            break
        time.sleep(1)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = [item for out in entry["outputs"].values() for item in out.get("images", [])]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    assert (root / "output" / saved[0]["subfolder"] / saved[0]["filename"]).stat().st_size > 0


def test_validation_errors_come_back_per_node(server):
    base, _ = server
    prompt, _ = load_workflow(REPO / "example_workflows" / "api" / "svd_image_to_video.json", NODE_CLASS_MAPPINGS)
    bad_size = json.loads(json.dumps(prompt))
    bad_size["1"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    bad_size["3"]["inputs"]["width"] = 1001  # not a multiple of 8
    status, reply = _post(base + "/prompt", {"prompt": bad_size})
    assert status == 400 and set(reply["node_errors"]) == {"3"}
    assert "1001" in json.dumps(reply["node_errors"]["3"])
    prompt["1"]["inputs"]["ckpt_name"] = "missing.safetensors"
    status, reply = _post(base + "/prompt", {"prompt": prompt})
    assert status == 400 and "1" in reply["node_errors"]
