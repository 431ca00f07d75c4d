"""Starting a real ComfyUI server for tests, and talking to it (127.0.0.1 only).

Used by tests/test_comfyui_server.py and tests/fuzz/test_fuzz_comfyui.py. The server runs only when COMFYUI_PATH
points at a ComfyUI checkout; it is started with COMFYUI_PYTHON (default: COMFYUI_PATH/.venv/bin/python if
present, else this interpreter), CPU only, on a free port of 127.0.0.1, with a temporary --base-directory
(models, custom_nodes with this repository linked in, input, output, temp, user), so nothing in the checkout is
read or written except its code. Only this pack's custom nodes are loaded.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACK = "comfyui-svd-lab"
COMFYUI = os.environ.get("COMFYUI_PATH")
SKIP_REASON = "set COMFYUI_PATH to a ComfyUI checkout to run the real-server tests"
START_TIMEOUT = 240.0


class ServerError(RuntimeError):
    """The server did not start, or a prompt did not finish in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post_json(url: str, body: dict) -> tuple[int, Any]:
    """POST `body` as JSON; (HTTP status, decoded reply), also for 4xx/5xx answers."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, _decode(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read())


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or next(
        (str(p) for p in [Path(COMFYUI or ".") / ".venv" / "bin" / "python"] if p.exists()), sys.executable)


@contextmanager
def comfyui_server(root: Path, pack: Path = REPO, args: tuple[str, ...] = ()) -> Iterator[str]:
    """Run ComfyUI with `root` as its base directory and `pack` linked into root/custom_nodes; yields the base URL.
    `args`: more command-line options (e.g. ``("--verbose", "DEBUG")``).

    The server's log is root/server.log. Raises :class:`ServerError` when it exits or does not answer in time.
    """
    if not COMFYUI:
        raise ServerError(SKIP_REASON)
    (root / "custom_nodes").mkdir(exist_ok=True)
    link = root / "custom_nodes" / PACK
    if not link.exists():
        link.symlink_to(pack, target_is_directory=True)
    port = free_port()
    cmd = [comfyui_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(root), "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK, *args]
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_started(proc, base, log_path)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def _wait_started(proc: subprocess.Popen, base: str, log_path: Path) -> None:
    deadline = time.time() + START_TIMEOUT
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"ComfyUI exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            get_json(base + "/system_stats")
            return
        except OSError:
            time.sleep(1)
    raise ServerError(f"ComfyUI did not start within {START_TIMEOUT:.0f} s: {log_path.read_text()[-3000:]}")


def queue_prompt(base: str, prompt: dict, extra_data: dict | None = None) -> tuple[int, Any]:
    """POST a prompt to /prompt; (HTTP status, reply) without judging either."""
    return post_json(base + "/prompt", {"prompt": prompt, "client_id": "svd-lab-test", "extra_data": extra_data or {}})


def wait_history(base: str, prompt_id: str, timeout: float = 300.0) -> dict:
    """The finished /history entry of `prompt_id` (success or error). On timeout the run is interrupted and
    :class:`ServerError` raised."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = get_json(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    post_json(base + "/queue", {"delete": [prompt_id]})
    post_json(base + "/interrupt", {})
    raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def run_prompt(base: str, prompt: dict, workflow: dict | None = None, timeout: float = 300.0) -> dict:
    """Queue `prompt` (with the UI `workflow` as the frontend sends it, when given), wait for it and return its
    /history entry; assertion errors for a refused prompt or a failed run (naming ComfyUI's execution errors),
    pytest.fail on a time-out."""
    import pytest

    status, reply = queue_prompt(base, prompt, {"extra_pnginfo": {"workflow": workflow}} if workflow else None)
    assert status == 200, reply
    try:
        entry = wait_history(base, reply["prompt_id"], timeout)
    except ServerError as exc:
        pytest.fail(str(exc))
    assert entry["status"]["status_str"] == "success", execution_errors(entry) or entry["status"]
    return entry


def execution_errors(entry: dict) -> list[dict]:
    """The execution_error messages of a history entry (each a dict with node_type, exception_message, ...)."""
    return [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
