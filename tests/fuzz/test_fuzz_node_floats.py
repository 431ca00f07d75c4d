"""NaN, infinities and out-of-range numbers for every FLOAT input of every node, as ComfyUI's /prompt sees them.

ComfyUI converts a FLOAT widget with ``float()`` and compares it with min/max: NaN passes both comparisons, and
JSON's ``NaN`` / ``Infinity`` literals parse in Python, so only the node's own ``VALIDATE_INPUTS`` can refuse
them. An input that ``VALIDATE_INPUTS`` names also skips ComfyUI's min/max check, so the node must re-check the
range. Here every FLOAT input (walked from the pack's NODE_CLASS_MAPPINGS, nothing listed by hand) is called
the way ComfyUI calls it: only the arguments the signature names, the other ones at their widget defaults (None
for links). A FLOAT input that no ``VALIDATE_INPUTS`` names fails, by design.

The second half checks the run-time guard in the package (library users call it without the nodes).
"""

from __future__ import annotations

import inspect
import math
import re
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.diffusion.guidance import cfg_denoiser, frame_scales
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.pipelines.extend import Segment, build_segments, extend_video, parse_segment_overrides
from comfyui_svd_lab.svd_model.pipelines.flow_interp import FlowSettings, resample_step
from comfyui_svd_lab.svd_model.pipelines.image_to_video import VideoParams
from comfyui_svd_lab.svd_model.pipelines.object_image import prepare_object_image

NAN, INF = float("nan"), float("inf")
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")
#: Floor on what the walk must find: a node module that fails to import drops its nodes from the mappings
#: (with a warning), which must not turn into fewer cases passing quietly.
MIN_FLOAT_INPUTS = 27
MIN_VALIDATED_CLASSES = 28


def _specs(cls: type) -> dict[str, tuple]:
    types = cls.INPUT_TYPES()
    return {**types.get("required", {}), **types.get("optional", {})}


def _options(spec: tuple) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 else {}


def _float_inputs() -> list[tuple[str, str]]:
    return [(node_id, name) for node_id, cls in sorted(NODE_CLASS_MAPPINGS.items())
            for name, spec in _specs(cls).items() if spec[0] == "FLOAT"]


def _validated() -> list[str]:
    return sorted(n for n, cls in NODE_CLASS_MAPPINGS.items() if hasattr(cls, "VALIDATE_INPUTS"))


FLOAT_INPUTS = _float_inputs()
VALIDATED = _validated()


def _baseline(cls: type) -> dict[str, Any]:
    """The arguments ComfyUI passes to VALIDATE_INPUTS for a node left at its defaults: widgets at their default
    (a combo at its default or first choice), sockets None (linked, unknown before the run)."""
    specs = _specs(cls)
    args: dict[str, Any] = {}
    for name in inspect.signature(cls.VALIDATE_INPUTS).parameters:
        kind, opts = specs[name][0], _options(specs[name])
        if isinstance(kind, list):
            args[name] = opts.get("default", kind[0] if kind else None)
        elif kind in WIDGETS:
            args[name] = opts.get("default")
        else:
            args[name] = None
    return args


def _named(name: str, message: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message) is not None


def _validate(node_id: str, name: str, value: Any) -> Any:
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert hasattr(cls, "VALIDATE_INPUTS"), (
        f"{node_id} has the FLOAT input {name!r} but no VALIDATE_INPUTS: NaN and Infinity pass ComfyUI's checks")
    params = inspect.signature(cls.VALIDATE_INPUTS).parameters
    assert name in params, (f"{node_id}.VALIDATE_INPUTS does not name its FLOAT input {name!r}: NaN and Infinity "
                            f"pass ComfyUI's checks (it names {', '.join(params)})")
    args = _baseline(cls)
    args[name] = value
    return cls.VALIDATE_INPUTS(**args)


# ------------------------------------------------------------------------------------------ the walk


def test_the_walk_finds_every_node_module():
    assert len(FLOAT_INPUTS) >= MIN_FLOAT_INPUTS, f"only {len(FLOAT_INPUTS)} FLOAT inputs: did a node module fail?"
    assert len(VALIDATED) >= MIN_VALIDATED_CLASSES
    modules = {NODE_CLASS_MAPPINGS[n].__module__.rsplit(".", 1)[1] for n, _ in FLOAT_INPUTS}
    assert modules >= {"video_nodes", "io_nodes", "multiview_nodes", "extend_nodes", "lora_nodes",
                       "interpolation_nodes", "curation_nodes", "train_nodes"}


@pytest.mark.parametrize(("node_id", "name"), FLOAT_INPUTS, ids=[f"{n}.{i}" for n, i in FLOAT_INPUTS])
def test_float_widget_declares_its_range(node_id, name):
    opts = _options(_specs(NODE_CLASS_MAPPINGS[node_id])[name])
    assert {"min", "max", "default"} <= set(opts), f"{node_id}.{name} needs min, max and default"
    assert all(math.isfinite(opts[k]) for k in ("min", "max", "default"))


BAD = {
    "nan": (NAN, "finite"),
    "inf": (INF, "finite"),
    "-inf": (-INF, "finite"),
    "below_min": ("below", "below the minimum"),
    "above_max": ("above", "above the maximum"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize(("node_id", "name"), FLOAT_INPUTS, ids=[f"{n}.{i}" for n, i in FLOAT_INPUTS])
def test_bad_float_is_refused_naming_the_input(node_id, name, case, sandbox, no_process):
    value, expected = BAD[case]
    opts = _options(_specs(NODE_CLASS_MAPPINGS[node_id])[name])
    if value == "below":
        value = opts["min"] - max(1.0, abs(opts["min"]))
    elif value == "above":
        value = opts["max"] + max(1.0, abs(opts["max"]))
    result = _validate(node_id, name, value)
    assert isinstance(result, str), f"{node_id}: {name} = {value} was accepted ({result!r})"
    assert expected in result and _named(name, result), f"{node_id}: {name} = {value}: {result!r}"


@pytest.mark.parametrize("where", ["min", "max", "linked"])
@pytest.mark.parametrize(("node_id", "name"), FLOAT_INPUTS, ids=[f"{n}.{i}" for n, i in FLOAT_INPUTS])
def test_float_at_its_bounds_or_linked_is_accepted(node_id, name, where, sandbox, no_process):
    opts = _options(_specs(NODE_CLASS_MAPPINGS[node_id])[name])
    value = None if where == "linked" else float(opts[where])
    assert _validate(node_id, name, value) is True


# ------------------------------------------------------------------------ VALIDATE_INPUTS, every class


@pytest.mark.parametrize("node_id", VALIDATED)
def test_validate_inputs_accepts_the_defaults(node_id, sandbox, no_process):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert cls.VALIDATE_INPUTS(**_baseline(cls)) is True


@pytest.mark.parametrize("node_id", VALIDATED)
def test_validate_inputs_names_only_real_inputs_and_takes_no_kwargs(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    params = inspect.signature(cls.VALIDATE_INPUTS).parameters
    assert all(p.kind is not p.VAR_KEYWORD for p in params.values()), (
        f"{node_id}.VALIDATE_INPUTS takes **kwargs: ComfyUI then skips every built-in range and choice check")
    specs = _specs(cls)
    assert set(params) <= set(specs) | {"input_types"}, f"{node_id}: {sorted(set(params) - set(specs))}"
    optional = set(cls.INPUT_TYPES().get("optional", {}))
    for name in optional & set(params):  # ComfyUI leaves an unset optional input out of the call
        assert params[name].default is not inspect.Parameter.empty, f"{node_id}.{name} needs a default"


# --------------------------------------------------------------------------- the package's own guard

BAD_NUMBERS = {"nan": NAN, "inf": INF, "-inf": -INF}
VIDEO_FLOATS = ("cond_aug", "min_cfg", "max_cfg", "denoise", "sigma_min", "sigma_max", "rho")


@pytest.mark.parametrize("bad", list(BAD_NUMBERS))
@pytest.mark.parametrize("field", VIDEO_FLOATS)
def test_video_params_refuse_non_finite(field, bad):
    value = BAD_NUMBERS[bad]
    with pytest.raises(ConfigError, match=rf"^{field} must be a finite number, got {re.escape(str(value))}$"):
        VideoParams(**{field: value})
    with pytest.raises(ConfigError, match=rf"^{field} must be a finite number"):
        VideoParams.for_variant("svd_xt", **{field: value})


@pytest.mark.parametrize("field", ["fps", "motion_bucket_id"])
def test_video_params_refuse_nan_in_integer_fields(field):
    with pytest.raises(ConfigError, match=rf"^{field} must be a finite number, got nan$"):
        VideoParams(**{field: NAN})


def test_video_params_defaults_still_valid():
    for variant in ("svd", "svd_xt"):
        assert VideoParams.for_variant(variant).cond_aug >= 0
    assert VideoParams(cond_aug=0.0, min_cfg=0.0, max_cfg=30.0, denoise=1.0).max_cfg == 30.0


@pytest.mark.parametrize("bad", list(BAD_NUMBERS))
@pytest.mark.parametrize("which", ["min_cfg", "max_cfg"])
def test_frame_scales_refuse_non_finite(which, bad):
    scales = {"min_cfg": 1.0, "max_cfg": 2.5, which: BAD_NUMBERS[bad]}
    for shape in ("linear", "triangle", "constant"):
        with pytest.raises(ConfigError, match=rf"^{which} must be a finite number"):
            frame_scales(shape, scales["min_cfg"], scales["max_cfg"], 4)


@pytest.mark.parametrize("bad", list(BAD_NUMBERS))
def test_cfg_denoiser_refuses_non_finite_scales(bad):
    scales = torch.tensor([1.0, BAD_NUMBERS[bad], 2.0])
    with pytest.raises(ConfigError, match="guidance scales must be finite numbers"):
        cfg_denoiser(lambda x, s, c: x, None, None, scales, cat=lambda a, b: a)


@pytest.mark.parametrize("bad", list(BAD_NUMBERS))
@pytest.mark.parametrize("field", ["consistency_a", "consistency_b", "mask_sigma", "splat_sharpness"])
def test_flow_settings_refuse_non_finite(field, bad):
    with pytest.raises(ConfigError, match=rf"^{field} must be a finite number"):
        FlowSettings(**{field: BAD_NUMBERS[bad]})


@pytest.mark.parametrize("bad", list(BAD_NUMBERS))
@pytest.mark.parametrize("which", ["factor", "target_fps", "source_fps"])
def test_resample_step_refuses_non_finite(which, bad):
    args: dict[str, Any] = {"factor": 2.0, "source_fps": 8.0} if which != "target_fps" else {"source_fps": 8.0}
    args[which] = BAD_NUMBERS[bad]
    with pytest.raises(ConfigError, match=rf"^{which} must be a finite number"):
        resample_step(**args)


@pytest.mark.parametrize("text", ["cond_aug=nan", "min_cfg=inf", "max_cfg=-inf", "seed=inf", "fps=nan",
                                  "motion_bucket_id=Infinity"])
def test_segment_overrides_refuse_non_finite(text):
    key, value = text.split("=")
    with pytest.raises(InputError, match=rf"^segment 1: {key}='{value}' is not a finite number$"):
        parse_segment_overrides(text, 1)


def test_build_segments_names_the_segment_of_a_non_finite_override():
    base = VideoParams(num_frames=4, width=64, height=64)
    with pytest.raises(InputError, match=r"^segment 2: cond_aug must be a finite number, got nan$"):
        build_segments(base, 0, [{}, {"cond_aug": NAN}])


@pytest.mark.parametrize("bad", [NAN, INF, -0.5, 1.5], ids=["nan", "inf", "negative", "above_1"])
def test_extend_video_refuses_bad_drift_correction(bad):
    bundle = SimpleNamespace(family=Family.SVD, variant="svd")
    segment = Segment(VideoParams(num_frames=4, width=64, height=64))
    with pytest.raises(InputError, match=r"^drift_correction must be in \[0, 1\], got "):
        extend_video(bundle, torch.zeros(1, 2, 3, 64, 64), [segment], overlap=1, drift_correction=bad)


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_prepare_object_image_refuses_non_finite_ratio(bad):
    with pytest.raises(InputError, match=r"^object_ratio must be in \(0, 1\]"):
        prepare_object_image(torch.zeros(1, 3, 32, 32), 64, bad)


def test_fraction_fps_still_accepted():
    assert resample_step(target_fps=Fraction(24), source_fps=8.0)[1] == 24.0
