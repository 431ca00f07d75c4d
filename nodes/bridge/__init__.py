"""The only code that touches ComfyUI at run time; every ComfyUI import is optional (:mod:`.comfy`).

* :mod:`.folders`: input / output / temp / user folders and the confinement of every path a workflow names
  (:mod:`.confine`); numbered output files.
* :mod:`.models`: checkpoints, VAEs, LoRAs and supporting model files from the model folders.
* :mod:`.video`: ComfyUI's VIDEO values <-> IMAGE frames and a frame rate.
* :mod:`.memory`: the compute device, ComfyUI's memory manager, offload between nodes; :func:`on_device` loads
  the networks a node names (``UNET``, ``FIRST_STAGE``, ``CONDITIONING``, ``PARTS``).
* :mod:`.managed`: inside ComfyUI, each network as a ComfyUI ModelPatcher; LoRAs as its weight patches.
* :mod:`.progress`: progress bars with latent previews, interruption.

Inside ComfyUI all of it is ComfyUI's. Headless (tests, CLI, workflow runner) the folders come from
:func:`configure` (``SVD_LAB_MODELS``: os.pathsep-separated model folders, ``SVD_LAB_OUTPUT``; else ``./models/svd``,
``./output``, ``./temp``, ``./input``), and the runner hands its output folder and progress receiver over for one
run with :func:`headless_run`. Nodes use this package as ``bridge.<name>``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from . import confine, folders, managed, memory, models, progress, video
from .comfy import in_comfyui
from .confine import PathRefused, Root
from .folders import (
    ANNOTATIONS,
    IMAGE_EXTENSIONS,
    PACK_INPUTS,
    PACK_ROOT,
    VIDEO_EXTENSIONS,
    any_path_allowed,
    check_data_files,
    configure,
    data_path,
    display,
    folder,
    input_file,
    input_problem,
    input_roots,
    list_inputs,
    metadata_enabled,
    output_path,
    prefix_problem,
    reset,
    save_target,
    user_folder,
)
from .managed import CONDITIONING, FIRST_STAGE, PARTS, UNET, with_lora
from .memory import (
    comfy_managed,
    cpu_device,
    device,
    free_memory,
    inherit_offload,
    load_device,
    manage,
    model_bytes,
    network_on_device,
    on_device,
    place,
    release,
    resting_device,
    set_offload,
    soft_empty_cache,
    unet_state,
    unmanaged,
)
from .models import (
    LORA_FOLDER,
    MODEL_EXTENSIONS,
    SHOT_FOLDER,
    SVD_FOLDER,
    find_checkpoint,
    find_lora,
    find_unet,
    find_vae,
    list_checkpoints,
    list_loras,
    list_model_files,
    list_shot_models,
    list_unets,
    list_vaes,
    lora_output_dir,
    missing_checkpoint_message,
    missing_unet_message,
    model_dirs,
    model_file,
    register_model_folder,
    resolve_checkpoint,
    resolve_lora,
    resolve_shot_model,
    resolve_unet,
    resolve_vae,
    shot_model_dirs,
)
from .progress import Progress, Reporter, check_interrupt, chunk_callback, step_callback

__all__ = ["ANNOTATIONS", "CONDITIONING", "FIRST_STAGE", "IMAGE_EXTENSIONS", "LORA_FOLDER", "MODEL_EXTENSIONS",
    "PACK_INPUTS", "PACK_ROOT", "PARTS", "PathRefused", "Progress", "Reporter", "Root", "SHOT_FOLDER", "SVD_FOLDER",
    "UNET",
    "VIDEO_EXTENSIONS", "any_path_allowed", "check_data_files", "check_interrupt", "chunk_callback",
    "comfy_managed", "configure", "confine", "cpu_device", "data_path", "device", "display", "find_checkpoint",
    "find_lora", "find_unet", "find_vae", "folder", "folders", "free_memory", "headless_run", "in_comfyui",
    "inherit_offload",
    "input_file", "input_problem", "input_roots", "list_checkpoints", "list_inputs", "list_loras", "list_shot_models",
    "list_model_files", "list_unets", "list_vaes", "load_device", "lora_output_dir", "manage", "managed", "memory",
    "metadata_enabled", "missing_checkpoint_message", "missing_unet_message", "model_bytes", "model_dirs",
    "model_file", "models",
    "network_on_device", "on_device", "output_path", "place", "prefix_problem", "progress", "register_model_folder",
    "release", "reset", "resolve_checkpoint", "resolve_lora", "resolve_shot_model", "resolve_unet", "resolve_vae",
    "resting_device",
    "save_target", "shot_model_dirs",
    "set_offload", "soft_empty_cache", "step_callback", "unet_state", "unmanaged", "user_folder", "video",
    "with_lora"]


@contextlib.contextmanager
def headless_run(*, output_dir: str | Path | None = None, reporter: Reporter | None = None) -> Iterator[None]:
    """For one headless run: write into ``output_dir`` (None: keep the configured folder) and send every node's
    progress to ``reporter(value, total)``; both are restored afterwards. Ignored inside ComfyUI."""
    with folders.using_output(output_dir), progress.reporting(reporter):
        yield

register_model_folder()
