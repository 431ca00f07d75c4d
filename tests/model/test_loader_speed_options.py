"""The Checkpoint Loader's attention and compile options, and the same flags of `svd-lab image-to-video`.

Compiling is lazy: these tests check what the loader sets on the UNet (nothing is run through the compiler here; the
compiled path is tested in test_compile.py)."""

from __future__ import annotations

import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.cli import build_parser
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.nn.attention import attention_layers, attention_precision
from comfyui_svd_lab.svd_model.nn.compile import compile_request, compiled_regions, regions
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder / "tiny.safetensors")
    return folder


def _loader():
    return NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]()


def test_defaults_are_unchanged(folders) -> None:
    optional = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"].INPUT_TYPES()["optional"]
    assert optional["attention"][1]["default"] == "fp32" and optional["compile"][1]["default"] == "off"
    for name in ("attention", "compile"):
        assert "tooltip" in optional[name][1]
    bundle, info = _loader().load("tiny.safetensors", "fp32", "auto", "none")
    unet = bundle.model.unet
    assert attention_precision(unet) == "fp32" and compile_request(unet) is None and compiled_regions(unet) == 0
    assert "compile" not in info


def test_attention_and_compile_are_applied(folders) -> None:
    bundle, info = _loader().load("tiny.safetensors", "fp32", "auto", "none", attention="prescale", compile="regional")
    unet = bundle.model.unet
    assert attention_precision(unet) == "prescale"
    assert {layer.precision for _, layer in attention_layers(unet)} == {"prescale"}
    assert compile_request(unet).mode == "regional" and compiled_regions(unet) == len(regions(unet)) > 0
    assert "attention prescale" in info and "compile regional" in info


def test_cudagraphs_with_streaming_is_refused(folders) -> None:
    with pytest.raises(InputError, match="regional\\+cudagraphs.*low_vram"):
        _loader().load("tiny.safetensors", "fp32", "auto", "none", memory="low_vram", compile="regional+cudagraphs")


def test_cli_flags() -> None:
    args = build_parser().parse_args(["image-to-video", "--attention", "auto", "--compile", "regional"])
    assert (args.attention, args.compile) == ("auto", "regional")
    defaults = build_parser().parse_args(["image-to-video"])
    assert (defaults.attention, defaults.compile) == ("fp32", "off")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["image-to-video", "--compile", "max-autotune"])
