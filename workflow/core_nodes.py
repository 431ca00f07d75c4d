"""Workflows that need ComfyUI itself: ComfyUI core nodes, which the headless runner cannot run.

The runner runs only the nodes of its registry (this pack's). A workflow that also uses ComfyUI's own nodes (a
text-to-image first frame made with CheckpointLoaderSimple, CLIPTextEncode, KSampler, ...) is refused before
anything else with ONE message that names those node types and says where to run the workflow, instead of an
"unknown node type" problem per node, or a UI -> API conversion that cannot place their widget values.

What counts as a core node: a class_type the registry does not have and that is in :data:`CORE_NODES`, a fixed
list of core node names (the classic nodes of ComfyUI's nodes.py and the core video/sampling nodes that appear
next to this pack's). Not "every type without the pack's SVDLab_ prefix", because:
- only a name known to be ComfyUI's can be called a ComfyUI core node: a misspelled pack node (SVDLab_Samplr,
  svdlab_sampler) or a garbled type is a mistake in the file and keeps its "unknown node type ... (did you mean
  ...?)" problem, and another node pack's node (VHS_VideoCombine) is not a core node either;
- the list need not be complete: a core node missing from it still gets the per-node "unknown node type"
  problem, which names it (with a "did you mean" where a pack node is close, e.g. LoadImage).
When a workflow has core nodes, other types the registry lacks are named in the same message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..svd_model.errors import shorten
from .errors import WorkflowError
from .spec import Registry

#: ComfyUI core node types (class_type names) this module recognises.
CORE_NODES = frozenset({
    # nodes.py
    "KSampler", "KSamplerAdvanced", "CheckpointLoaderSimple", "CheckpointLoader", "DiffusersLoader",
    "unCLIPCheckpointLoader", "CLIPTextEncode", "CLIPSetLastLayer", "CLIPLoader", "DualCLIPLoader", "UNETLoader",
    "VAELoader", "VAEDecode", "VAEEncode", "VAEEncodeForInpaint", "VAEDecodeTiled", "VAEEncodeTiled",
    "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "LatentFromBatch", "RepeatLatentBatch",
    "LatentComposite", "LatentBlend", "LatentRotate", "LatentFlip", "LatentCrop", "SetLatentNoiseMask",
    "LoadLatent", "SaveLatent", "SaveImage", "PreviewImage", "LoadImage", "LoadImageMask", "LoadImageOutput",
    "ImageScale", "ImageScaleBy", "ImageInvert", "ImageBatch", "ImagePadForOutpaint", "EmptyImage",
    "ConditioningAverage", "ConditioningCombine", "ConditioningConcat", "ConditioningMultiply",
    "ConditioningSetArea", "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength", "ConditioningSetMask",
    "ConditioningZeroOut", "ConditioningSetTimestepRange", "LoraLoader", "LoraLoaderModelOnly",
    "CLIPVisionLoader", "CLIPVisionEncode", "StyleModelLoader", "StyleModelApply", "unCLIPConditioning",
    "ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced", "GLIGENLoader",
    "GLIGENTextBoxApply", "InpaintModelConditioning",
    # comfy_extras: video models, custom sampling, images and video files
    "ImageOnlyCheckpointLoader", "SVD_img2vid_Conditioning", "VideoLinearCFGGuidance", "VideoTriangleCFGGuidance",
    "ImageOnlyCheckpointSave", "SV3D_Conditioning", "StableZero123_Conditioning", "ModelSamplingDiscrete",
    "SamplerCustom", "SamplerCustomAdvanced", "KSamplerSelect", "BasicScheduler", "KarrasScheduler",
    "RandomNoise", "CFGGuider", "BasicGuider", "EmptySD3LatentImage", "ImageScaleToTotalPixels", "ImageCrop",
    "ImageFromBatch", "RepeatImageBatch", "UpscaleModelLoader", "ImageUpscaleWithModel", "SaveAnimatedWEBP",
    "SaveAnimatedPNG", "SaveWEBM", "SaveVideo", "CreateVideo", "GetVideoComponents", "LoadVideo", "PreviewAny",
})

RUN_IN_COMFYUI = ("run it in ComfyUI: open it in the editor, queue it on a server (POST /prompt), or "
                  "`comfy run --workflow FILE` (comfy-cli)")


class CoreNodesError(WorkflowError):
    """The workflow uses ComfyUI core nodes. ``class_types``: those types; ``unknown``: other types the registry
    lacks (each list sorted, each type once)."""

    def __init__(self, class_types: list[str], unknown: list[str] | None = None) -> None:
        self.class_types = list(class_types)
        self.unknown = list(unknown or ())
        super().__init__(core_nodes_message(self.class_types, self.unknown))


def core_nodes_message(class_types: list[str], unknown: list[str] | None = None) -> str:
    also = f" (and node types it does not know: {_names(unknown)})" if unknown else ""
    return (f"this workflow uses ComfyUI core nodes the headless runner cannot run: {_names(class_types)}{also}; "
            f"{RUN_IN_COMFYUI}")


def foreign_types(class_types: Iterable[Any], registry: Registry) -> tuple[list[str], list[str]]:
    """(the core node types among ``class_types`` that ``registry`` lacks, the other string types it lacks);
    non-string entries are skipped (the schema checks report them)."""
    missing = {t for t in class_types if isinstance(t, str) and t not in registry}
    core = sorted((t for t in missing if t in CORE_NODES), key=_order)
    return core, sorted(missing.difference(core), key=_order)


def check_core_nodes(class_types: Iterable[Any], registry: Registry) -> None:
    """Raise :class:`CoreNodesError` when ``class_types`` include ComfyUI core nodes that ``registry`` lacks."""
    core, unknown = foreign_types(class_types, registry)
    if core:
        raise CoreNodesError(core, unknown)


def _order(name: str) -> tuple[str, str]:
    return name.casefold(), name


def _names(types: list[str] | None) -> str:
    return ", ".join(t if len(t) <= 60 else shorten(t, 60) for t in types or ())
