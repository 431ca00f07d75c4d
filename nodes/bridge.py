"""The only module that touches ComfyUI at run time; every ComfyUI import is optional.

Inside ComfyUI: model folders (`folder_paths`, with an `svd` folder registered at import), device and
memory (`comfy.model_management`), progress bars with latent previews (`comfy.utils.ProgressBar`),
interruption, input/output/temp folders. Headless (tests, CLI, workflow runner): folders come from
:func:`configure`, else the environment (``SVD_LAB_MODELS``: os.pathsep-separated model folders,
``SVD_LAB_OUTPUT``), else ``./models/svd``, ``./output``, ``./temp``, ``./input``; progress goes to
``workflow.progress`` when that module is present.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..svd_model.errors import CheckpointError, InputError
from ..svd_model.loader import SVDBundle
from ..svd_model.sampling import StepInfo
from . import adapters, confine
from .confine import PathRefused, Root

log = logging.getLogger(__name__)

SVD_FOLDER = "svd"
MODEL_EXTENSIONS = (".safetensors", ".sft")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp", ".m4v")
#: Inputs the bundled example workflows use; listed and found after the input folder's own files.
PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_INPUTS = PACK_ROOT / "example_workflows" / "inputs"
#: ComfyUI's annotation suffixes on input names ("x.png [output]"), as its upload widget and core LoadImage use.
#: ComfyUI's filename_prefix patterns (%date:yyyy-MM-dd%, %width%, %NodeName.input%).
_PATTERNS = re.compile(r"%[A-Za-z0-9_. -]+(:[^%/\\]*)?%")
ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}
_config: dict[str, Any] = {}
#: Models loaded with offload "cpu between nodes": model -> compute device.
_offloaded: weakref.WeakKeyDictionary[torch.nn.Module, torch.device] = weakref.WeakKeyDictionary()


def _folder_paths() -> Any | None:
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def _mm() -> Any | None:
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return mm


def in_comfyui() -> bool:
    return _folder_paths() is not None


def _comfy_args() -> Any | None:
    try:
        from comfy.cli_args import args
    except ImportError:
        return None
    return args


def configure(*, models_dirs: list[str | os.PathLike] | None = None, output_dir: str | os.PathLike | None = None,
              temp_dir: str | os.PathLike | None = None, input_dir: str | os.PathLike | None = None,
              loras_dirs: list[str | os.PathLike] | None = None, allow_any_path: bool | None = None) -> None:
    """Headless folders (ignored inside ComfyUI). Arguments left None keep their current setting.
    ``allow_any_path``: the local user's explicit opt-in (``svd-lab run --allow-any-path``) to name files
    anywhere; never honoured inside ComfyUI, where a workflow may come from anyone who reaches the server."""
    if allow_any_path is not None:
        _config["allow_any_path"] = bool(allow_any_path)
    if models_dirs is not None:
        _config["models_dirs"] = [Path(p) for p in models_dirs]
    if loras_dirs is not None:
        _config["loras_dirs"] = [Path(p) for p in loras_dirs]
    for kind, value in (("output", output_dir), ("temp", temp_dir), ("input", input_dir)):
        if value is not None:
            _config[kind] = Path(value)


def reset() -> None:
    """Forget :func:`configure` settings (tests)."""
    _config.clear()


def register_model_folder() -> None:
    """Register ComfyUI's `svd` model folder (models/svd, .safetensors/.sft only); no-op headless."""
    fp = _folder_paths()
    if fp is None:
        return
    default = os.path.join(fp.models_dir, SVD_FOLDER)
    paths, _ = fp.folder_names_and_paths.setdefault(SVD_FOLDER, ([], set()))
    if default not in paths:
        paths.append(default)
    fp.folder_names_and_paths[SVD_FOLDER] = (paths, set(MODEL_EXTENSIONS))


# ------------------------------------------------------------------------------------------- folders


def model_dirs() -> list[Path]:
    """Headless model folders: configure() > $SVD_LAB_MODELS > ./models/svd."""
    if "models_dirs" in _config:
        return list(_config["models_dirs"])
    env = os.environ.get("SVD_LAB_MODELS", "")
    return [Path(p) for p in env.split(os.pathsep) if p] or [Path("models") / SVD_FOLDER]


def folder(kind: str) -> Path:
    """The "output", "temp" or "input" folder: ComfyUI's, else configure() > $SVD_LAB_OUTPUT (output) > ./<kind>."""
    fp = _folder_paths()
    if fp is not None:
        return Path({"output": fp.get_output_directory, "temp": fp.get_temp_directory,
                     "input": fp.get_input_directory}[kind]())
    if kind in _config:
        return _config[kind]
    if kind == "output" and os.environ.get("SVD_LAB_OUTPUT"):
        return Path(os.environ["SVD_LAB_OUTPUT"])
    return Path(kind)


def user_folder() -> Path | None:
    """ComfyUI's user folder (where the server's owner keeps settings such as svd_lab/captioners.json); None
    headless."""
    fp = _folder_paths()
    if fp is None or not hasattr(fp, "get_user_directory"):
        return None
    return Path(fp.get_user_directory())


def _is_diffusers_folder(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("unet", "vae", "image_encoder"))


def _scan_models(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    files = [p for p in root.rglob("*") if p.suffix.lower() in MODEL_EXTENSIONS and p.is_file()]
    dirs = [p for p in root.iterdir() if p.is_dir() and _is_diffusers_folder(p)]
    return sorted(p.relative_to(root).as_posix() for p in files + dirs)


def _searched_folders() -> list[tuple[str, Path]]:
    """(folder key, path) pairs searched for checkpoints, svd folder first."""
    fp = _folder_paths()
    if fp is None:
        return [(SVD_FOLDER, d) for d in model_dirs()]
    return [(key, Path(d)) for key in (SVD_FOLDER, "checkpoints") for d in fp.get_folder_paths(key)]


def list_checkpoints() -> list[str]:
    """Checkpoint names for the loader's COMBO: the `svd` folder(s) first, then `checkpoints`
    (.safetensors/.sft files, plus diffusers-format SVD folders directly inside an `svd` folder)."""
    fp = _folder_paths()
    if fp is None:
        names = [n for _, d in _searched_folders() for n in _scan_models(d)]
    else:
        files = [*fp.get_filename_list(SVD_FOLDER), *fp.get_filename_list("checkpoints")]
        folders = [n for d in fp.get_folder_paths(SVD_FOLDER) for n in _scan_models(Path(d))]
        names = [n for n in files if n.lower().endswith(MODEL_EXTENSIONS)] + folders
    return list(dict.fromkeys(names))


def find_checkpoint(name: str) -> Path | None:
    """A listed name (relative to a model folder) -> its path; headless, an absolute path is accepted too.
    Inside ComfyUI a name may not leave its model folder."""
    if not name or confine.relative_problem(name, "checkpoint") and not any_path_allowed():
        return None
    if Path(name).is_absolute():
        return Path(name) if any_path_allowed() and Path(name).exists() else None
    for _, root in _searched_folders():
        path = root / name
        if _in_model_folder(path, root) and path.exists():
            return path
    return None


def _in_model_folder(path: Path, root: Path) -> bool:
    """Lexically inside ``root``. Model folders are the one place where symlinks that leave the folder are
    followed: only the server's owner can place files there (a workflow can name, never create them), and
    linking model files in from shared storage is how ComfyUI installs are commonly set up."""
    return os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) == os.path.abspath(root)


def missing_checkpoint_message(name: str) -> str:
    if in_comfyui():
        return (f"checkpoint {confine.short(name)} not found in ComfyUI's model folders (models/svd, "
                "models/checkpoints): put the .safetensors file there and pick it from the list")
    where = "; ".join(f"{path} ({key})" for key, path in _searched_folders())
    hint = "bridge.configure(models_dirs=...) or $SVD_LAB_MODELS"
    return f"checkpoint {confine.short(name)} not found; looked in: {where}. Put the .safetensors file into {hint}"


def resolve_checkpoint(name: str) -> Path:
    path = find_checkpoint(name)
    if path is None:
        raise CheckpointError(missing_checkpoint_message(name))
    return path


# --------------------------------------------------------------------------------------------- loras

LORA_FOLDER = "loras"


def _lora_roots() -> list[tuple[Path, str]]:
    """(root, required first path part) pairs searched for LoRA files: ComfyUI's `loras` folders (any file),
    then the `loras/` subfolder of each svd model folder, then output/SVDLab/loras (where LoRA Convert writes).
    Headless: configure(loras_dirs) > $SVD_LAB_LORAS, then `<model folder>/loras`, then the same output folder."""
    fp = _folder_paths()
    if fp is not None:
        roots, svd = ([Path(d) for d in fp.get_folder_paths(key)] if key in fp.folder_names_and_paths else []
                      for key in (LORA_FOLDER, SVD_FOLDER))
    else:
        env = [Path(p) for p in os.environ.get("SVD_LAB_LORAS", "").split(os.pathsep) if p]
        roots, svd = list(_config.get("loras_dirs", env)), model_dirs()
    return [(r, "") for r in roots] + [(d, LORA_FOLDER) for d in svd] + [(lora_output_dir(), "")]


def list_loras() -> list[str]:
    """LoRA names (relative to their root, like ComfyUI's LoraLoader lists them) for a COMBO."""
    names = []
    for root, sub in _lora_roots():
        base = root / sub if sub else root
        if base.is_dir():
            names += sorted(p.relative_to(root).as_posix() for p in base.rglob("*")
                            if p.suffix.lower() in MODEL_EXTENSIONS and p.is_file())
    return list(dict.fromkeys(names))


def find_lora(name: str) -> Path | None:
    """A listed LoRA name -> its path (never outside its root); headless, an absolute path is accepted too."""
    if not name or confine.relative_problem(name, "LoRA") and not any_path_allowed():
        return None
    if Path(name).is_absolute():
        return Path(name) if any_path_allowed() and Path(name).is_file() else None
    for root, sub in _lora_roots():
        path = root / name
        if _in_model_folder(path, root) and path.is_file() and (not sub or Path(name).parts[0] == sub):
            return path
    return None


def resolve_lora(name: str) -> Path:
    path = find_lora(name)
    if path is None:
        if in_comfyui():
            raise CheckpointError(f"LoRA {confine.short(name)} not found in ComfyUI's loras folder (or models/svd/"
                                  "loras): put the file there and pick it from the list")
        where = "; ".join(str(root / sub) for root, sub in _lora_roots()) or "(no loras folder configured)"
        raise CheckpointError(f"LoRA {confine.short(name)} not found; looked in: {where}")
    return path


def lora_output_dir() -> Path:
    """Where LoRA Convert writes: output/SVDLab/loras. Nodes write only into the output and temp folders; this
    folder is searched for LoRAs too, so a converted file is in the LoRA list at once."""
    return folder("output").absolute() / "SVDLab" / LORA_FOLDER


def list_inputs(kind: str) -> list[str]:
    """Files of the input folder for an upload COMBO (kind "image" or "video"), sorted."""
    base, fp = folder("input"), _folder_paths()
    names = [p.name for p in base.iterdir() if p.is_file()] if base.is_dir() else []
    names += [p.name for p in sorted(PACK_INPUTS.glob("*")) if p.is_file() and p.name not in names]
    if fp is not None and hasattr(fp, "filter_files_content_types"):
        return sorted(fp.filter_files_content_types(names, [kind]))
    exts = IMAGE_EXTENSIONS if kind == "image" else VIDEO_EXTENSIONS
    return sorted(n for n in names if n.lower().endswith(exts))


def any_path_allowed() -> bool:
    """Headless only, and only after the local user's explicit opt-in (``configure(allow_any_path=True)``)."""
    return not in_comfyui() and bool(_config.get("allow_any_path"))


def input_roots(*, data: bool = False) -> list[Root]:
    """Folders a workflow may read files from: the input folder and the pack's bundled example inputs (also
    named ``example_workflows/inputs/...`` relative to the pack); with ``data`` (curation folders, manifests,
    training clips) also the output folder, where curation writes its results."""
    roots = [Root(folder("input").absolute(), "the input folder"),
             Root(PACK_INPUTS, "the pack's example inputs"),
             Root(PACK_INPUTS, "the pack's example inputs", base=PACK_ROOT)]
    if data:
        roots.append(Root(folder("output").absolute(), "the output folder"))
    return roots


def _annotated(name: str) -> tuple[str, list[Root]]:
    """ComfyUI's "name [output]" / "name [temp]" annotations choose the folder (as core LoadImage)."""
    for suffix, kind in ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], [Root(folder(kind).absolute(), f"the {kind} folder")]
    return name, input_roots()


def input_file(name: str, path: str = "", what: str = "file") -> Path:
    """The file a loader node reads: a non-empty ``path`` (relative to the input folder; absolute only inside it
    or headless with the opt-in) wins over ``name`` (a list entry, ComfyUI annotations understood). Raises
    :class:`PathRefused` for a value leaving the folders and :class:`InputError` (one message for missing and
    unreadable) otherwise."""
    if path:
        return confine.find_file(path, input_roots(), what, allow_absolute=any_path_allowed())
    if not name:
        raise InputError(f"no {what} selected: upload one, pick one from the list, or set path")
    plain, roots = _annotated(name)
    return confine.find_file(plain, roots, what)


def input_problem(name: str | None, path: str | None, what: str) -> str | None:
    """For VALIDATE_INPUTS: why :func:`input_file` would refuse these values (None when it would not, or when a
    value is linked and unknown yet)."""
    if name is None or path is None:
        return None
    try:
        input_file(name, path, what)
    except InputError as exc:
        return str(exc)
    return None


def data_path(value: str, what: str, *, folder_only: bool = False) -> Path:
    """A file or folder of training / curation data named by a workflow: inside the input folder, the output
    folder (curation results) or the pack's example inputs; anywhere only headless with the opt-in."""
    return confine.find_file(value.strip(), input_roots(data=True), what, folder=True if folder_only else None,
                             allow_absolute=any_path_allowed())


def check_data_files(paths: list[Path], what: str) -> None:
    """Refuse a list of files that came with the workflow's data (a list file, a manifest) when one of them lies
    outside the folders a workflow may read (skipped headless with the opt-in)."""
    if not any_path_allowed():
        confine.check_inside(paths, input_roots(data=True), what)


def model_file(name: str, what: str) -> Path:
    """A supporting model file (aesthetic head, text tower, tokenizer, OpenCV text model) named relative to a
    model folder (the svd folders, then ComfyUI's checkpoints / clip / text_encoders folders); absolute paths
    only headless with the opt-in."""
    if Path(name).is_absolute() and any_path_allowed():
        if Path(name).is_file():
            return Path(name)
        raise InputError(f"{what} file not found: {confine.short(name)}")
    problem = confine.relative_problem(name, what)
    if problem:
        raise PathRefused(f"{problem} (files come from the model folders)")
    fp = _folder_paths()
    keys = (SVD_FOLDER, "checkpoints", "clip", "text_encoders")
    roots = [Path(d) for d in model_dirs()] if fp is None else [
        Path(d) for key in keys if key in fp.folder_names_and_paths for d in fp.get_folder_paths(key)]
    for root in roots:
        path = root / name
        if _in_model_folder(path, root) and path.is_file():
            return path
    where = "the model folders (models/svd, checkpoints, clip, text_encoders)" if fp else "the model folders"
    raise InputError(f"{what} {confine.short(name)}: no readable file of that name in {where}")


def output_path(name: str, what: str, *, under: str = "") -> Path:
    """A folder a node creates in the output folder for ``name`` (a run name, a cache name: plain names, optionally
    ``sub/name``), below ``under``; refused (PathRefused) when it is a path, hidden, or a symlink leads out."""
    problem = confine.relative_problem(name, what)
    if problem:
        raise PathRefused(problem)
    base = folder("output").absolute()
    target = base / under / name.strip()
    if not confine.is_inside(target, base):
        raise PathRefused(f"{what} {confine.short(name)} leads out of the output folder through a symbolic link")
    return target


def display(path: str | os.PathLike) -> str:
    """``path`` for messages and UI text: relative to the output / temp / input folder it is in ("output/x/y"),
    never an absolute server path; headless, outside those folders, the path as given."""
    roots = [Root(folder(k).absolute(), f"the {k} folder") for k in ("output", "temp", "input")]
    roots.append(Root(PACK_INPUTS, "the example_inputs folder"))
    label = confine.relative_label(Path(path), roots)
    if label == Path(path).name and not in_comfyui() and not any(confine.is_inside(Path(path), r.path)
                                                                 for r in roots):
        return str(path)
    return label


def prefix_problem(prefix: str | None, kind: str = "output") -> str | None:
    """For VALIDATE_INPUTS of save nodes: None when ``prefix`` is a valid file name prefix (names separated by '/',
    ComfyUI's %date:...% and %width% patterns allowed) whose folder stays inside the ``kind`` folder after
    symbolic links are resolved, else why not."""
    if prefix is None:
        return None
    plain = _PATTERNS.sub("x", prefix)  # %date:yyyy-MM-dd% is expanded by ComfyUI, not a path character
    problem = confine.relative_problem(plain, "filename_prefix")
    if problem:
        return problem.replace(confine.short(plain), confine.short(prefix))
    literal = prefix.split("%", 1)[0].replace("\\", "/")  # the part no pattern expands: links there are known now
    base = folder(kind).absolute()
    if not confine.is_inside(base / os.path.dirname(literal), base):
        return (f"filename_prefix {confine.short(prefix)} leads out of the {kind} folder through a symbolic "
                "link")
    return None


def save_target(prefix: str, kind: str, extension: str, size: tuple[int, int] = (0, 0)) -> tuple[Path, str, str]:
    """(full path, subfolder, file name) for a ComfyUI-style numbered file `prefix_00001_.ext` in the output
    or temp folder (inside ComfyUI through folder_paths.get_save_image_path, so %date:...% etc. work).
    Raises PathRefused for a prefix that is not a relative name or leads out of the folder (also through a
    symlink), OSError naming the folder when it cannot be created or written."""
    problem = prefix_problem(prefix, kind)
    if problem:
        raise PathRefused(problem)
    base, subfolder = folder(kind).absolute(), ""
    fp = _folder_paths()
    try:
        if fp is not None:
            where, stem, counter, subfolder, _ = fp.get_save_image_path(prefix, str(base), *size)
            target = Path(where)
        else:
            subfolder, stem = os.path.split(os.path.normpath(prefix))
            target = base / subfolder
        if not confine.is_inside(target, base) or not stem or stem.startswith("."):
            raise PathRefused(f"filename_prefix {confine.short(prefix)} leads out of the {kind} folder "
                              "(through '..' or a symbolic link) or names no file")
        target.mkdir(parents=True, exist_ok=True)
        if not confine.is_inside(target, base):  # a link swapped in while the folder was created
            raise PathRefused(f"filename_prefix {confine.short(prefix)} leads out of the {kind} folder")
        if not os.access(target, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except PathRefused:
        raise
    except (OSError, ValueError) as exc:
        where = f"{kind}/{subfolder}" if in_comfyui() else str(base / subfolder)
        raise OSError(f"cannot write to the {kind} folder {where}: {getattr(exc, 'strerror', None) or exc}. "
                      "Choose a writable folder (headless: $SVD_LAB_OUTPUT or "
                      "bridge.configure(output_dir=...))") from exc
    if fp is None:
        taken = [n[len(stem) + 1 :].split("_")[0] for n in os.listdir(target) if n.startswith(f"{stem}_")]
        counter = max((int(d) for d in taken if d.isdigit()), default=0) + 1
    name = f"{stem}_{counter:05}_.{extension}"
    return target / name, str(subfolder).replace(os.sep, "/"), name


def metadata_enabled() -> bool:
    """False under ComfyUI's --disable-metadata."""
    return not getattr(_comfy_args(), "disable_metadata", False)


# ------------------------------------------------------------------------------------ device, memory


def device() -> torch.device:
    mm = _mm()
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_device() -> torch.device:
    return torch.device("cpu")


def free_memory(num_bytes: int, target: torch.device) -> None:
    """Ask ComfyUI to evict its own models until `num_bytes` fit on `target` (no-op headless)."""
    mm = _mm()
    if mm is not None:
        mm.free_memory(num_bytes, target)
        mm.soft_empty_cache()


def soft_empty_cache() -> None:
    mm = _mm()
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_bytes(bundle: SVDBundle) -> int:
    return sum(t.numel() * t.element_size() for t in (*bundle.model.parameters(), *bundle.model.buffers()))


def set_offload(bundle: SVDBundle, target: torch.device) -> None:
    """Keep `bundle` on the CPU between nodes; :func:`on_device` moves it to `target` while it works."""
    _offloaded[bundle.model] = target


def inherit_offload(source: SVDBundle, copy: SVDBundle) -> None:
    """Give a derived bundle (e.g. a LoRA-patched copy) the offload setting of the one it came from."""
    target = _offloaded.get(source.model)
    if target is not None:
        _offloaded[copy.model] = target


@contextlib.contextmanager
def on_device(bundle: SVDBundle) -> Iterator[SVDBundle]:
    """For an offloaded model: free ComfyUI memory, move to the compute device, and back to the CPU after."""
    target = _offloaded.get(bundle.model)
    if target is None or target.type == "cpu":
        yield bundle
        return
    free_memory(model_bytes(bundle), target)
    bundle.model.to(target)
    try:
        yield bundle
    finally:
        bundle.model.to("cpu")
        soft_empty_cache()


# ----------------------------------------------------------------------- progress, interrupt, previews


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed cancel."""
    mm = _mm()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def _preview_size() -> int | None:
    """Preview size when ComfyUI's latent previews are on (--preview-method / the frontend's setting), else None."""
    method = getattr(_comfy_args(), "preview_method", None)
    if method is None or getattr(method, "value", method) == "none":
        return None
    return int(getattr(_comfy_args(), "preview_size", 512))


class Progress:
    """A node's progress bar: comfy.utils.ProgressBar in ComfyUI, workflow.progress.report headless."""

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self._bar: Any = None
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(self.total)
        except ImportError:
            pass

    @property
    def in_comfyui(self) -> bool:
        return self._bar is not None

    def update(self, value: int, total: int | None = None, preview: tuple[str, Any, int] | None = None) -> None:
        self.total = max(1, int(total or self.total))
        check_interrupt()
        if self._bar is not None:
            self._bar.update_absolute(value, self.total, preview)
            return
        try:
            from ..workflow import progress
        except ImportError:
            log.debug("progress %d/%d", value, self.total)
            return
        progress.report(value, self.total)


def step_callback(steps: int) -> Callable[[StepInfo], None]:
    """Sampler callback: interruption check, progress per step, latent previews inside ComfyUI."""
    bar = Progress(steps)
    size = _preview_size() if bar.in_comfyui else None

    def callback(info: StepInfo) -> None:
        preview = ("JPEG", adapters.latent_preview(info.denoised), size) if size else None
        bar.update(info.index + 1, info.total, preview)

    return callback


def chunk_callback(total: int) -> Callable[[int, int], None]:
    """Decode callback (frames_done, frames_total): interruption check and progress."""
    bar = Progress(total)
    return lambda done, frames: bar.update(done, frames)


register_model_folder()
