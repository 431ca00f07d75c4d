"""Which checkpoint a pipeline accepts, and inputs that must come from the same run: the package's policy, so that
a library caller and the nodes get the same errors.

- :func:`require_svd_family`: video pipelines (image-to-video, extend, keyframes, finetuning) need an SVD / SVD-XT
  checkpoint; an SV3D (multi-view) one is refused with a pointer to the orbit nodes.
- :func:`require_image_to_video_model`: image-to-video conditioning needs an SVD / SVD-XT checkpoint; an SV3D
  (multi-view) checkpoint or a keyframe-interpolation one (12-channel concat) is refused with a pointer to the
  pipeline / node that takes it.
- :func:`check_input_view`: the SV3D input view pasted over an orbit's last frame must have the decoded frames' size.
"""

from __future__ import annotations

from torch import Tensor

from ..config import Family
from ..errors import InputError
from ..weights.loader import SVDBundle


def require_svd_family(bundle: SVDBundle, what: str, error: type[Exception] = InputError) -> None:
    """``error`` unless ``bundle`` is an SVD-family (video) model; ``what`` names the caller in the message."""
    if bundle.family is not Family.SVD:
        raise error(f"{bundle.variant} is an SV3D (multi-view) model; {what} needs an SVD / SVD-XT checkpoint. "
                    "SV3D models need the multi-view node SVD Lab Orbit Conditioning (pipelines.multiview)")


def require_image_to_video_model(bundle: SVDBundle, what: str = "image-to-video conditioning") -> None:
    """InputError unless ``bundle`` is an image-to-video SVD model; ``what`` names the caller in the message."""
    require_svd_family(bundle, what)
    unet = bundle.config.unet
    if unet.concat_keyframes:
        raise InputError(f"{bundle.source} is a keyframe-interpolation checkpoint (UNet input {unet.in_channels} "
                         "channels: first and last keyframe in the concat conditioning); use SVD Lab Keyframe "
                         "Interpolate (pipelines.keyframes) with it")


def check_input_view(frames: Tensor, view: Tensor) -> None:
    """InputError unless the input view ``view`` (1, 3, H, W) fits the decoded orbit ``frames`` (1, t, 3, H, W)."""
    if tuple(view.shape[-2:]) != tuple(frames.shape[-2:]) or frames.shape[0] != 1:
        raise InputError(f"the conditioning's input view is {view.shape[-1]}x{view.shape[-2]}, the decoded frames "
                         f"{frames.shape[-1]}x{frames.shape[-2]}: link the conditioning that made this latent")
