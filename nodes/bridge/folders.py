"""Folders: where a node reads and writes, and the confinement of every path a workflow names.

Inside ComfyUI the input / output / temp / user folders are ComfyUI's (``folder_paths``). Headless (tests, CLI,
workflow runner) they come from :func:`configure` (the runner hands its folders over with
:func:`~.headless_run`), else ``$SVD_LAB_OUTPUT`` for the output folder, else ``./output``, ``./temp``, ``./input``.
Every value a workflow gives is checked by :mod:`.confine` against these folders (see the README, "trust").
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...svd_model.errors import InputError, shorten
from ...svd_model.media.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from . import confine
from .comfy import _comfy_args, _folder_paths, in_comfyui
from .confine import PathRefused, Root

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_INPUTS = PACK_ROOT / "example_workflows" / "inputs"
#: ComfyUI's annotation suffixes on input names ("x.png [output]"), as its upload widget and core LoadImage use.
#: ComfyUI's filename_prefix patterns (%date:yyyy-MM-dd%, %width%, %NodeName.input%).
_PATTERNS = re.compile(r"%[A-Za-z0-9_. -]+(:[^%/\\]*)?%")
ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}
_config: dict[str, Any] = {}


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


def output_path(name: str, what: str, *, under: str = "") -> Path:
    """A folder a node creates in the output folder for ``name`` (a run name, a cache name: plain names, optionally
    ``sub/name``), below ``under``; refused (PathRefused) when it is a path, hidden, or a symlink leads out."""
    problem = confine.relative_problem(name, what)
    if problem:
        raise PathRefused(problem)
    base = folder("output").absolute()
    target = base / under / name.strip()
    if not confine.is_inside(target, base):
        raise PathRefused(f"{what} {shorten(name)} leads out of the output folder through a symbolic link")
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
    problem = confine.relative_problem(plain, "filename_prefix", shown=prefix)
    if problem:
        return problem
    literal = prefix.split("%", 1)[0].replace("\\", "/")  # the part no pattern expands: links there are known now
    base = folder(kind).absolute()
    if not confine.is_inside(base / os.path.dirname(literal), base):
        return (f"filename_prefix {shorten(prefix)} leads out of the {kind} folder through a symbolic "
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
            raise PathRefused(f"filename_prefix {shorten(prefix)} leads out of the {kind} folder "
                              "(through '..' or a symbolic link) or names no file")
        target.mkdir(parents=True, exist_ok=True)
        if not confine.is_inside(target, base):  # a link swapped in while the folder was created
            raise PathRefused(f"filename_prefix {shorten(prefix)} leads out of the {kind} folder")
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


@contextlib.contextmanager
def using_output(path: str | os.PathLike | None) -> Iterator[None]:
    """Headless: write into ``path`` inside the ``with`` block (None: keep the configured folder)."""
    if path is None:
        yield
        return
    previous = _config.get("output")
    configure(output_dir=path)
    try:
        yield
    finally:
        if previous is None:
            _config.pop("output", None)
        else:
            _config["output"] = previous
