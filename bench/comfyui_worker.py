"""A ComfyUI-side worker for the benches: runs ComfyUI's own code on request, in ComfyUI's Python.

Not imported by the package. A bench starts it with ComfyUI's interpreter (``COMFYUI_PATH/.venv/bin/python``
when it exists) so that ComfyUI's dependencies never enter the project's environment, and talks to it over
stdin / stdout, one JSON object per line each way, so that the parent can interleave its own runs with
ComfyUI's (min-of-N on a shared machine). The worker is idle (blocked on stdin) while the parent runs.

Requests (``{"op": ...}``):

- ``load_vae`` ``path``: comfy.sd.VAE from a safetensors state dict (official first-stage keys, no prefix).
- ``decode`` ``latents`` (a safetensors file with ``z``: (n, 4, h, w) unscaled), optional ``out``: times
  ``VAE.decode`` (the VAEDecode node's work, under ``torch.inference_mode``); writes the frames (n, H, W, 3) in
  [0, 1] to ``out`` when given.
- ``load_checkpoint`` ``path``: comfy.sd.load_checkpoint_guess_config (ImageOnlyCheckpointLoader's work).
- ``generate`` ``image`` (safetensors ``image``: (1, H, W, 3) in [0, 1]), ``frames``, ``steps``, ``cfg``,
  ``min_cfg``, ``seed``, ``fps``, ``motion_bucket_id``, ``augmentation_level``, optional ``out``: ComfyUI's native
  SVD graph (SVD_img2vid_Conditioning -> VideoLinearCFGGuidance -> KSampler euler / karras -> VAEDecode) called
  node by node; replies the wall times of the whole job, of the sampler and of the decode.
- ``quit``.

Every reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``; peak RSS (``ru_maxrss``) is included.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback


def _reply(obj: dict) -> None:
    obj["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    comfy_path = os.environ["COMFYUI_PATH"]
    sys.path.insert(0, comfy_path)
    os.chdir(comfy_path)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # ComfyUI prints; keep the protocol channel clean
    import torch

    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()  # ComfyUI's --cpu, read when model_management loads
    import comfy.sd
    import comfy.utils
    from safetensors.torch import load_file, save_file

    sys.stdout = real_stdout
    state: dict = {}
    _reply({"ok": True, "torch": torch.__version__, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "quit":
                _reply({"ok": True})
                return
            if op == "load_vae":
                sd = comfy.utils.load_torch_file(request["path"], safe_load=True)
                state["vae"] = comfy.sd.VAE(sd=sd)
                _reply({"ok": True, "dtype": str(state["vae"].vae_dtype)})
            elif op == "decode":
                z = load_file(request["latents"])["z"]
                with torch.inference_mode():
                    start = time.perf_counter()
                    frames = state["vae"].decode(z)  # (n, H, W, 3) in [0, 1]
                    seconds = time.perf_counter() - start
                if request.get("out"):
                    save_file({"frames": frames.contiguous()}, request["out"])
                _reply({"ok": True, "seconds": seconds})
            elif op == "load_checkpoint":
                model, _clip, vae, clip_vision = comfy.sd.load_checkpoint_guess_config(
                    request["path"], output_vae=True, output_clip=False, output_clipvision=True)
                state.update(model=model, vae=vae, clip_vision=clip_vision)
                _reply({"ok": True})
            elif op == "generate":
                _reply({"ok": True, **generate(state, request, load_file, save_file)})
            else:
                _reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception:  # noqa: BLE001 - reported to the parent, which decides
            _reply({"ok": False, "error": traceback.format_exc()[-3000:]})


def generate(state: dict, request: dict, load_file, save_file) -> dict:
    """ComfyUI's native SVD image-to-video graph, node by node (the nodes' own functions)."""
    import torch
    from comfy_extras.nodes_video_model import SVD_img2vid_Conditioning, VideoLinearCFGGuidance

    from nodes import KSampler, VAEDecode

    def node(cls, *args):  # old-style nodes: FUNCTION; v3 nodes: execute
        out = cls.execute(*args) if hasattr(cls, "execute") else getattr(cls(), cls.FUNCTION)(*args)
        return tuple(out.result if hasattr(out, "result") else out)

    image = load_file(request["image"])["image"]  # (1, H, W, 3) in [0, 1]
    height, width = image.shape[1:3]
    with torch.inference_mode():
        start = time.perf_counter()
        positive, negative, latent = node(
            SVD_img2vid_Conditioning, state["clip_vision"], image, state["vae"], width, height,
            request["frames"], request["motion_bucket_id"], request["fps"], request["augmentation_level"])
        model = node(VideoLinearCFGGuidance, state["model"], request["min_cfg"])[0]
        sample_start = time.perf_counter()
        (samples,) = node(KSampler, model, request["seed"], request["steps"], request["cfg"], "euler", "karras",
                          positive, negative, latent, 1.0)
        decode_start = time.perf_counter()
        (frames,) = node(VAEDecode, state["vae"], samples)
        end = time.perf_counter()
    if request.get("out"):
        save_file({"frames": frames.contiguous()}, request["out"])
    return {"job_s": end - start, "sample_s": decode_start - sample_start, "decode_s": end - decode_start}


if __name__ == "__main__":
    main()
