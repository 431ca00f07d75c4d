"""Model files: the checkpoints, VAEs and LoRAs a node may load (names from ComfyUI's model folders; headless the
configured ones), and supporting model files named relative to a model folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...svd_model.curation import shot_model
from ...svd_model.errors import CheckpointError, InputError, shorten
from . import confine
from .comfy import _folder_paths, in_comfyui
from .confine import PathRefused
from .folders import _config, any_path_allowed, folder

SVD_FOLDER = "svd"
#: ComfyUI model folder of user-supplied shot-boundary networks (.onnx) for the learned cut detector.
SHOT_FOLDER = "shot_detectors"
MODEL_EXTENSIONS = (".safetensors", ".sft")


def register_model_folder() -> None:
    """Register ComfyUI's `svd` model folder (models/svd, .safetensors/.sft only) and `shot_detectors`
    (models/shot_detectors, .onnx only); no-op headless."""
    fp = _folder_paths()
    if fp is None:
        return
    default = os.path.join(fp.models_dir, SVD_FOLDER)
    paths, _ = fp.folder_names_and_paths.setdefault(SVD_FOLDER, ([], set()))
    if default not in paths:
        paths.append(default)
    fp.folder_names_and_paths[SVD_FOLDER] = (paths, set(MODEL_EXTENSIONS))
    shot_default = os.path.join(fp.models_dir, SHOT_FOLDER)
    shot_paths, _ = fp.folder_names_and_paths.setdefault(SHOT_FOLDER, ([], set()))
    if shot_default not in shot_paths:
        shot_paths.append(shot_default)
    fp.folder_names_and_paths[SHOT_FOLDER] = (shot_paths, {shot_model.SUFFIX})


def model_dirs() -> list[Path]:
    """Headless model folders: configure() > $SVD_LAB_MODELS > ./models/svd."""
    if "models_dirs" in _config:
        return list(_config["models_dirs"])
    env = os.environ.get("SVD_LAB_MODELS", "")
    return [Path(p) for p in env.split(os.pathsep) if p] or [Path("models") / SVD_FOLDER]


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
    return _find_model(name, "checkpoint", lambda: [root for _, root in _searched_folders()], Path.exists)


def _find_model(name: str, what: str, roots: Callable[[], list[Path]], usable: Callable[[Path], bool]) -> Path | None:
    """``name`` in the first of the ``roots()`` where ``usable(path)``, never outside that root; an absolute path
    only headless with the opt-in (:func:`any_path_allowed`), and then no folder is consulted."""
    if not name or confine.relative_problem(name, what) and not any_path_allowed():
        return None
    if Path(name).is_absolute():
        return Path(name) if any_path_allowed() and usable(Path(name)) else None
    for root in roots():
        path = root / name
        if _in_model_folder(path, root) and usable(path):
            return path
    return None


def _in_model_folder(path: Path, root: Path) -> bool:
    """Lexically inside ``root``. Model folders are the one place where symlinks that leave the folder are
    followed: only the server's owner can place files there (a workflow can name, never create them), and
    linking model files in from shared storage is how ComfyUI installs are commonly set up."""
    return confine.lexically_inside(path, root)


def missing_checkpoint_message(name: str) -> str:
    if in_comfyui():
        return (f"checkpoint {shorten(name)} not found in ComfyUI's model folders (models/svd, "
                "models/checkpoints): put the .safetensors file there and pick it from the list")
    where = "; ".join(f"{path} ({key})" for key, path in _searched_folders())
    hint = "bridge.configure(models_dirs=...) or $SVD_LAB_MODELS"
    return f"checkpoint {shorten(name)} not found; looked in: {where}. Put the .safetensors file into {hint}"


def resolve_checkpoint(name: str) -> Path:
    path = find_checkpoint(name)
    if path is None:
        raise CheckpointError(missing_checkpoint_message(name))
    return path


# ------------------------------------------------------------------------------------- vaes and unets

VAE_FOLDER = "vae"
UNET_FOLDER = "diffusion_models"  # ComfyUI's models/unet and models/diffusion_models ("unet" is its legacy name)


def _weight_files(roots: list[Path]) -> list[str]:
    """The .safetensors/.sft files below `roots`, relative to their root, in root order, without duplicates."""
    names = []
    for root in roots:
        if root.is_dir():
            names += sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                            if p.suffix.lower() in MODEL_EXTENSIONS and p.is_file())
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class WeightFolder:
    """Single network files of one kind (a VAE, a UNet) a loader node lists: ComfyUI's `folder` folders, then the
    `svd` folders (a full checkpoint there lends its network); headless the model folders. `what` names the kind
    in messages, `comfy_folders` the folders a ComfyUI user is told to use."""

    what: str
    folder: str
    comfy_folders: str

    def roots(self) -> list[Path]:
        fp = _folder_paths()
        if fp is None:
            return model_dirs()
        keys = [self.folder] if self.folder in fp.folder_names_and_paths else []
        return [Path(d) for key in (*keys, SVD_FOLDER) for d in fp.get_folder_paths(key)]

    def list(self) -> list[str]:
        """Names for a COMBO (relative to their folder), the kind's own folders first."""
        return _weight_files(self.roots())

    def find(self, name: str) -> Path | None:
        """A listed name -> its file, confined like :func:`find_checkpoint`."""
        return _find_model(name, self.what, self.roots, Path.is_file)

    def missing_message(self, name: str) -> str:
        if in_comfyui():
            return (f"{self.what} {shorten(name)} not found in ComfyUI's model folders ({self.comfy_folders}): put "
                    "the .safetensors file there and pick it from the list")
        where = "; ".join(str(root) for root in self.roots()) or "(no model folder configured)"
        return f"{self.what} {shorten(name)} not found; looked in: {where}"

    def resolve(self, name: str) -> Path:
        path = self.find(name)
        if path is None:
            raise CheckpointError(self.missing_message(name))
        return path


VAES = WeightFolder("VAE", VAE_FOLDER, "models/vae, models/svd")
UNETS = WeightFolder("UNet", UNET_FOLDER, "models/unet, models/diffusion_models, models/svd")
list_vaes, find_vae, missing_vae_message, resolve_vae = VAES.list, VAES.find, VAES.missing_message, VAES.resolve
list_unets, find_unet, missing_unet_message, resolve_unet = (UNETS.list, UNETS.find, UNETS.missing_message,
                                                             UNETS.resolve)


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
            raise CheckpointError(f"LoRA {shorten(name)} not found in ComfyUI's loras folder (or models/svd/"
                                  "loras): put the file there and pick it from the list")
        where = "; ".join(str(root / sub) for root, sub in _lora_roots()) or "(no loras folder configured)"
        raise CheckpointError(f"LoRA {shorten(name)} not found; looked in: {where}")
    return path


def lora_output_dir() -> Path:
    """Where LoRA Convert writes: output/SVDLab/loras. Nodes write only into the output and temp folders; this
    folder is searched for LoRAs too, so a converted file is in the LoRA list at once."""
    return folder("output").absolute() / "SVDLab" / LORA_FOLDER


def _support_roots() -> list[Path]:
    """Folders of supporting model files: the svd folders, then ComfyUI's checkpoints / clip / text_encoders
    folders; headless the model folders."""
    fp = _folder_paths()
    if fp is None:
        return [Path(d) for d in model_dirs()]
    keys = (SVD_FOLDER, "checkpoints", "clip", "text_encoders")
    return [Path(d) for key in keys if key in fp.folder_names_and_paths for d in fp.get_folder_paths(key)]


def list_model_files(suffixes: tuple[str, ...], roots: list[Path] | None = None) -> list[str]:
    """Names (relative to their folder) of the supporting model files whose name ends with one of `suffixes`
    (lower case), for a loader's COMBO; the folders of :func:`model_file` (or ``roots``), in order, without
    duplicates."""
    names: list[str] = []
    for root in _support_roots() if roots is None else roots:
        if root.is_dir():
            names += sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                            if p.name.lower().endswith(suffixes) and p.is_file())
    return list(dict.fromkeys(names))


def model_file(name: str, what: str) -> Path:
    """A supporting model file (aesthetic head, text tower, tokenizer, OpenCV text model) named relative to a
    model folder (the svd folders, then ComfyUI's checkpoints / clip / text_encoders folders); absolute paths
    only headless with the opt-in."""
    if Path(name).is_absolute() and any_path_allowed():
        if Path(name).is_file():
            return Path(name)
        raise InputError(f"{what} file not found: {shorten(name)}")
    problem = confine.relative_problem(name, what)
    if problem:
        raise PathRefused(f"{problem} (files come from the model folders)")
    fp = _folder_paths()
    for root in _support_roots():
        path = root / name
        if _in_model_folder(path, root) and path.is_file():
            return path
    where = "the model folders (models/svd, checkpoints, clip, text_encoders)" if fp else "the model folders"
    raise InputError(f"{what} {shorten(name)}: no readable file of that name in {where}")


# ----------------------------------------------------------------------------------------- shot detectors


def shot_model_dirs() -> list[Path]:
    """Folders of shot-boundary networks: ComfyUI's `shot_detectors` folders (models/shot_detectors); headless
    $SVD_LAB_SHOT_MODELS (os.pathsep-separated), else `shot_detectors` inside each model folder and
    ./models/shot_detectors."""
    fp = _folder_paths()
    if fp is not None:
        return [Path(d) for d in fp.get_folder_paths(SHOT_FOLDER)] if SHOT_FOLDER in fp.folder_names_and_paths else []
    env = [Path(p) for p in os.environ.get("SVD_LAB_SHOT_MODELS", "").split(os.pathsep) if p]
    found = env or [*(d / SHOT_FOLDER for d in model_dirs()), Path("models") / SHOT_FOLDER]
    return list(dict.fromkeys(found))


def list_shot_models() -> list[str]:
    """Names of the .onnx files in the shot-detector folders (relative to their folder), for a COMBO."""
    return list_model_files((shot_model.SUFFIX,), shot_model_dirs())


def resolve_shot_model(name: str, what: str = "shot_model") -> Path:
    """A shot-detector name from a workflow -> its .onnx file inside a shot-detector folder. Raises PathRefused
    for a value that is not a plain relative name, ConfigError / InputError (see
    :func:`~...svd_model.curation.shot_model.find_shot_model`) otherwise."""
    problem = confine.relative_problem(name, what)
    if problem:
        raise PathRefused(f"{problem} (shot detectors come from the models/shot_detectors folder)")
    return shot_model.find_shot_model(name, shot_model_dirs())
