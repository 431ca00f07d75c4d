"""Multi-view orbits with SV3D: camera orbits, the input image the model expects, and the orbit run.

Camera conventions (Stability-AI generative-models, ``scripts/sampling/simple_video_sample.py``):

- frames are views along an orbit; the LAST frame is the input view (azimuth 0);
- elevation is degrees above the horizon; the model gets polar = deg2rad(90 - elevation) per frame;
- azimuths are degrees; the model gets deg2rad((a_i - a_last) mod 360), i.e. relative to the input view,
  increasing along the orbit. The default (static) orbit is linspace(0, 360, t + 1)[1:] mod 360:
  360/t, 2*360/t, ..., 0 (the script's convention; the streamlit demo's 2*pi for the last frame is not used);
- a camera at (elevation e, azimuth a) sits at (cos e cos a, cos e sin a, sin e) on the unit sphere around the
  object (z up), as the reference demo's orbit plot draws it; positive azimuth turns counter-clockwise seen
  from above.

SV3D_u has no camera input: it always renders the static orbit at the input's elevation (the elevation only
documents the camera list). SV3D_p is conditioned on each frame's polar and azimuth angle. Both use the
triangle guidance of the reference (1.0 -> 2.5 -> 1.0 over 21 frames at 576x576, 50 steps, cond_aug 1e-5),
which :meth:`VideoParams.for_variant` supplies.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..conditioning import Cond
from ..config import Family
from ..diffusion.sampling import StepInfo
from ..errors import ConfigError, InputError
from ..weights.loader import SVDBundle
from .image_to_video import MAX_FRAMES, VideoParams, encode_condition, sample_video
from .object_image import prepare_object_image

__all__ = [
    "DEFAULT_ELEVATION", "ORBIT_PRESETS", "SV3D_FRAMES", "OrbitCameras", "check_orbit_model", "custom_orbit",
    "dynamic_orbit", "orbit_cameras", "orbit_condition", "orbit_params", "orbit_video", "parse_angles",
    "prepare_object_image", "static_orbit", "with_input_view",
]

log = logging.getLogger(__name__)

SV3D_FRAMES = 21
DEFAULT_ELEVATION = 10.0  # the reference script's default elevations_deg
ORBIT_PRESETS = ("static", "dynamic", "custom")
ELEVATION_RANGE = (-90.0, 90.0)
AZIMUTH_RANGE = (-360.0, 360.0)
# Dynamic orbit (reference demo's gen_dynamic_loop): 84 sinusoids on a 4x finer orbit, smoothed over 5 samples.
_DYN_OVERSAMPLE, _DYN_COMPONENTS, _DYN_SMOOTH, _DYN_TRIES = 4, 84, 5, 1000


@dataclass(frozen=True)
class OrbitCameras:
    """One camera per frame, in degrees, frame order (the last frame is the input view).

    azimuths_deg are as given (any origin); :attr:`relative_azimuths_deg` are what the model sees.
    """

    elevations_deg: tuple[float, ...]
    azimuths_deg: tuple[float, ...]
    preset: str = "custom"

    def __post_init__(self) -> None:
        _check_angles(self.elevations_deg, self.azimuths_deg)

    @property
    def num_frames(self) -> int:
        return len(self.elevations_deg)

    @property
    def relative_azimuths_deg(self) -> tuple[float, ...]:
        """(a_i - a_last) mod 360, in [0, 360): the azimuth of each view relative to the input view."""
        last = self.azimuths_deg[-1]
        return tuple(float((a - last) % 360.0) for a in self.azimuths_deg)

    def polars_rad(self) -> Tensor:
        """(t,) float64: deg2rad(90 - elevation)."""
        return torch.tensor([math.radians(90.0 - e) for e in self.elevations_deg], dtype=torch.float64)

    def azimuths_rad(self) -> Tensor:
        """(t,) float64: deg2rad((a_i - a_last) mod 360)."""
        return torch.tensor([math.radians(a) for a in self.relative_azimuths_deg], dtype=torch.float64)

    def conditioning(self) -> dict[str, Tensor]:
        """The SV3D_p vector inputs for :func:`encode_condition` (``camera=``)."""
        return {"polars_rad": self.polars_rad(), "azimuths_rad": self.azimuths_rad()}

    def is_static(self, tol: float = 1e-6) -> bool:
        """True for one elevation and the evenly spaced orbit (what SV3D_u renders)."""
        t = self.num_frames
        even = [((i + 1) * 360.0 / t) % 360.0 for i in range(t)]
        same_elevation = max(self.elevations_deg) - min(self.elevations_deg) <= tol
        return same_elevation and all(_angle_close(a, b, tol) for a, b in zip(self.relative_azimuths_deg, even,
                                                                               strict=True))

    def to_dict(self, model: str = "") -> dict:
        """A JSON-ready description for reconstruction tools (see the module docstring for conventions)."""
        frames = []
        for i, (e, a) in enumerate(zip(self.elevations_deg, self.relative_azimuths_deg, strict=True)):
            er, ar = math.radians(e), math.radians(a)
            frames.append({
                "frame": i, "elevation_deg": e, "azimuth_deg": a, "polar_rad": math.radians(90.0 - e),
                "azimuth_rad": ar, "position": [math.cos(er) * math.cos(ar), math.cos(er) * math.sin(ar),
                                                math.sin(er)],
            })
        return {
            "format": "svd_lab.orbit_cameras", "version": 1, **({"model": model} if model else {}),
            "preset": self.preset,
            "num_frames": self.num_frames, "input_view_frame": self.num_frames - 1,
            "convention": "azimuth_deg relative to the input view (the last frame), counter-clockwise seen from "
                          "above; elevation_deg above the horizon; polar_rad = radians(90 - elevation); position "
                          "= camera on the unit sphere around the object, z up, looking at the origin",
            "frames": frames,
        }

    def to_json(self, model: str = "") -> str:
        return json.dumps(self.to_dict(model), indent=1)


def _angle_close(a: float, b: float, tol: float) -> bool:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d) <= tol


def _check_angles(elevations: Sequence[float], azimuths: Sequence[float]) -> None:
    t = len(elevations)
    if not 1 <= t <= MAX_FRAMES:
        raise InputError(f"an orbit needs 1..{MAX_FRAMES} cameras, got {t}")
    if len(azimuths) != t:
        raise InputError(f"the orbit has {t} elevations but {len(azimuths)} azimuths; give one of each per frame")
    for what, values, (lo, hi), hint in (
        ("elevation", elevations, ELEVATION_RANGE, "elevation is degrees above the horizon"),
        ("azimuth", azimuths, AZIMUTH_RANGE, "angles wrap: use the value mod 360"),
    ):
        for i, v in enumerate(values):
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{what} of frame {i} is {v!r}; a finite number of degrees is needed")
            if not lo <= v <= hi:
                raise InputError(f"{what} {v:g} degrees (frame {i}) is outside [{lo:g}, {hi:g}]; {hint}")


def static_orbit(num_frames: int = SV3D_FRAMES, elevation_deg: float = DEFAULT_ELEVATION) -> OrbitCameras:
    """The reference's default orbit: one elevation, azimuths linspace(0, 360, t + 1)[1:] mod 360."""
    _check_frames(num_frames)
    azimuths = np.linspace(0.0, 360.0, num_frames + 1)[1:] % 360.0
    return OrbitCameras((float(elevation_deg),) * num_frames, tuple(float(a) for a in azimuths), "static")


def dynamic_orbit(
    num_frames: int = SV3D_FRAMES, elevation_deg: float = DEFAULT_ELEVATION, *, rng: np.random.Generator
) -> OrbitCameras:
    """A closed orbit whose elevation varies along the way, drawn as the reference demo's dynamic orbit
    (``scripts/demo/sv3d_helpers.py`` gen_dynamic_loop), from `rng`:

    on a 4x finer orbit (84 samples for 21 frames) the elevation is `elevation_deg` plus 84 sinusoids, each
    completing 1..4 whole cycles, amplitude U(0.5, 10) degrees, phase 0 or pi; it is smoothed by a circular
    5-sample moving average and redrawn until every |elevation| < 90. Azimuth steps are U(0, 2), scaled so
    the orbit ends (360 / n) * U(0, 2) short of 360. Every 4th sample is kept and the first one is rolled
    to the end, so the last frame (azimuth 0, elevation ~ `elevation_deg`) is the input view.
    """
    _check_frames(num_frames)
    n = _DYN_OVERSAMPLE * num_frames
    k = np.arange(n)
    for _ in range(_DYN_TRIES):
        elevation = np.full(n, float(elevation_deg))
        for _ in range(_DYN_COMPONENTS):
            frequency = rng.integers(1, 5) * 2.0 * np.pi / n
            amplitude = rng.uniform(0.5, 10.0)
            phase = rng.choice([0.0, np.pi])
            elevation += amplitude * np.sin(frequency * k + phase)
        steps = rng.uniform(0.0, 2.0, n - 1)
        scale = (360.0 - (360.0 / n) * rng.uniform(0.0, 2.0)) / steps.sum()
        azimuth = np.concatenate([[0.0], np.cumsum(steps * scale)])
        half = _DYN_SMOOTH // 2
        elevation = np.mean([np.roll(elevation, s) for s in range(-half, half + 1)], axis=0)
        if np.abs(elevation).max() < 90.0:
            break
    else:
        raise ConfigError(f"no dynamic orbit with |elevation| < 90 found around {elevation_deg} degrees; "
                          "choose an elevation closer to 0")
    keep = slice(None, None, _DYN_OVERSAMPLE)
    elevation, azimuth = np.roll(elevation[keep], -1), np.roll(azimuth[keep], -1)
    return OrbitCameras(tuple(map(float, elevation)), tuple(map(float, azimuth)), "dynamic")


def custom_orbit(
    elevations_deg: Sequence[float], azimuths_deg: Sequence[float] | None = None, num_frames: int = SV3D_FRAMES
) -> OrbitCameras:
    """Per-frame lists: elevations (one value = every frame, or one per frame) and azimuths (one per frame,
    or None / empty for the evenly spaced orbit). A list of another length is an error."""
    _check_frames(num_frames)
    elevations = [float(e) for e in elevations_deg]
    if len(elevations) == 1:
        elevations *= num_frames
    if len(elevations) != num_frames:
        raise InputError(f"elevations has {len(elevations_deg)} values but the orbit has {num_frames} frames; "
                         f"give 1 value (used for every frame) or {num_frames}")
    if not azimuths_deg:
        azimuths = list(static_orbit(num_frames).azimuths_deg)
    elif len(azimuths_deg) != num_frames:
        raise InputError(f"azimuths has {len(azimuths_deg)} values but the orbit has {num_frames} frames; give "
                         f"{num_frames} (the last is the input view) or none for the evenly spaced orbit")
    else:
        azimuths = [float(a) for a in azimuths_deg]
    cameras = OrbitCameras(tuple(elevations), tuple(azimuths), "custom")
    rel = cameras.relative_azimuths_deg[:-1]
    if any(b <= a for a, b in zip(rel, rel[1:], strict=False)):
        log.warning("azimuths relative to the input view are not increasing along the orbit (%s); SV3D was "
                    "trained on orbits that turn one way", ", ".join(f"{a:.1f}" for a in rel))
    return cameras


def orbit_cameras(
    preset: str,
    num_frames: int = SV3D_FRAMES,
    elevation_deg: float = DEFAULT_ELEVATION,
    *,
    rng: np.random.Generator | int | None = None,
    elevations: Sequence[float] | None = None,
    azimuths: Sequence[float] | None = None,
) -> OrbitCameras:
    """Cameras of a preset: static (one elevation), dynamic (needs `rng`: a numpy Generator or a seed), custom
    (`elevations` / `azimuths`; with no elevations given, `elevation_deg` for every frame)."""
    if preset == "static":
        return static_orbit(num_frames, elevation_deg)
    if preset == "dynamic":
        if rng is None:
            raise InputError("the dynamic orbit is random: pass rng (a numpy Generator or a seed)")
        rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
        return dynamic_orbit(num_frames, elevation_deg, rng=rng)
    if preset == "custom":
        return custom_orbit(list(elevations) if elevations else [elevation_deg], azimuths, num_frames)
    raise ConfigError(f"unknown orbit preset {preset!r}; choose from {', '.join(ORBIT_PRESETS)}")


def parse_angles(text: str, what: str = "angles") -> list[float]:
    """Numbers (degrees) from text: separated by commas, semicolons, spaces or new lines; brackets allowed."""
    items = [s for s in re.split(r"[\s,;]+", text.strip().strip("[]()")) if s]
    values = []
    for i, item in enumerate(items):
        try:
            values.append(float(item))
        except ValueError:
            raise InputError(f"{what}: item {i + 1} ({item!r}) is not a number; write degrees separated by "
                             "commas, e.g. '10, 12.5, 15'") from None
    return values


def _check_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES:
        raise InputError(f"an orbit needs 1..{MAX_FRAMES} frames, got {num_frames!r}")


# ------------------------------------------------------------------------------------------------- the run


def check_orbit_model(bundle: SVDBundle) -> None:
    if bundle.family is Family.SVD:
        raise InputError(f"{bundle.variant} is an SVD (image-to-video) checkpoint; orbits need an SV3D checkpoint "
                         "(sv3d_u.safetensors or sv3d_p.safetensors). For SVD use the image-to-video nodes")


def orbit_params(bundle: SVDBundle, cameras: OrbitCameras, **overrides: object) -> VideoParams:
    """The reference's SV3D settings (576x576, triangle guidance 1.0 -> 2.5, 50 steps, cond_aug 1e-5) for the
    cameras' frame count, with overrides."""
    check_orbit_model(bundle)
    if cameras.num_frames != SV3D_FRAMES:
        log.warning("%d-frame orbit: SV3D was trained on %d frames", cameras.num_frames, SV3D_FRAMES)
    return VideoParams.for_variant(bundle.variant, **{"num_frames": cameras.num_frames, **overrides})


def orbit_condition(
    bundle: SVDBundle,
    image: Tensor,
    cameras: OrbitCameras,
    params: VideoParams,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Cond, Cond]:
    """(cond, uncond) for an orbit of `image` (b, 3, S, S) in [-1, 1] (prepared: square, object centred)."""
    check_orbit_model(bundle)
    if cameras.num_frames != params.num_frames:
        raise InputError(f"the camera list has {cameras.num_frames} frames but the run is set to "
                         f"{params.num_frames}; make them equal")
    if bundle.family is Family.SV3D_U and not cameras.is_static():
        raise InputError(f"sv3d_u cannot follow a camera path: it always renders the evenly spaced orbit at the "
                         f"input's elevation, and these cameras are a {cameras.preset} orbit. Use the static preset "
                         "or an sv3d_p checkpoint")
    if image.shape[-1] != image.shape[-2]:
        log.warning("orbit input is %dx%d; SV3D expects a square image", image.shape[-1], image.shape[-2])
    camera = cameras.conditioning() if bundle.family is Family.SV3D_P else None
    return encode_condition(bundle, image, params, generator=generator, camera=camera)


def orbit_video(
    bundle: SVDBundle,
    image: Tensor,
    cameras: OrbitCameras,
    params: VideoParams | None = None,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Orbit latents (b, t, 4, S/8, S/8) for `image` (b, 3, S, S) in [-1, 1]; params default to
    :func:`orbit_params` at the image's size. One generator seeds the augmentation and the sampling noise."""
    if params is None:
        params = orbit_params(bundle, cameras, width=image.shape[-1], height=image.shape[-2])
    cond, uncond = orbit_condition(bundle, image, cameras, params, generator=generator)
    return sample_video(bundle, cond, uncond, params, generator=generator, noise=noise, callback=callback)


def with_input_view(frames: Tensor, image: Tensor) -> Tensor:
    """Decoded orbit frames (b, t, 3, H, W) with the last frame replaced by the input view (b, 3, H, W), as the
    reference script writes its output. Returns a new tensor."""
    if frames.ndim != 5 or image.shape != (frames.shape[0], *frames.shape[2:]):
        raise InputError(f"frames (b, t, 3, H, W) {tuple(frames.shape)} and image (b, 3, H, W) "
                         f"{tuple(image.shape)} do not match")
    out = frames.clone()
    out[:, -1] = image.to(out)
    return out
