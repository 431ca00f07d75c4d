"""All networks of one SVD-family checkpoint, with the official key prefixes, built from a ModelConfig."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import CheckpointError
from ..weights.detect import FIRST_STAGE_PREFIX, IMAGE_ENCODER_PREFIX, UNET_PREFIX, cond_vae_prefix
from .cast import convert
from .image_encoder import OpenCLIPVisionTower
from .unet import VideoUNet
from .vae import AutoencoderKL


class SVDModel(nn.Module):
    """unet (VideoUNet), first_stage (latents <-> frames), cond_vae (concat-path encoder),
    image_encoder (OpenCLIP vision tower). ``official_state_dict`` uses the single-file key layout.

    Every layer is cast-on-use (:func:`.cast.convert`): plain torch numerics, plus the protocol that lets weights
    live elsewhere than the compute (a patcher's partial load, fp8 storage).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.unet = VideoUNet(config.unet)
        self.first_stage = AutoencoderKL(config.first_stage)
        self.cond_vae = AutoencoderKL(config.cond_vae)
        self.image_encoder = OpenCLIPVisionTower(config.image_encoder)
        convert(self)

    def components(self) -> Iterator[tuple[str, nn.Module]]:
        """(official key prefix, module) for every network."""
        yield UNET_PREFIX, self.unet
        yield FIRST_STAGE_PREFIX, self.first_stage
        yield cond_vae_prefix(self.config.family), self.cond_vae
        yield IMAGE_ENCODER_PREFIX, self.image_encoder

    def official_shapes(self) -> dict[str, tuple[int, ...]]:
        return {p + k: tuple(v.shape) for p, m in self.components() for k, v in m.state_dict().items()}

    def official_state_dict(self) -> dict[str, Tensor]:
        return {p + k: v for p, m in self.components() for k, v in m.state_dict().items()}

    def load_official_state_dict(self, state_dict: Mapping[str, Tensor], *, assign: bool = False) -> None:
        """Strict load from official keys; raises CheckpointError naming missing/unexpected/mismatched keys."""
        check_keys(self.official_shapes(), {k: tuple(v.shape) for k, v in state_dict.items()})
        for prefix, module in self.components():
            sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            module.load_state_dict(sub, strict=True, assign=assign)


def _listing(keys: list[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> None:
    """Compare a checkpoint's key -> shape table with what the inferred model needs."""
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    mismatched = [
        f"{k}: file {list(found[k])}, model {list(expected[k])}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched, 3)}")
    if problems:
        raise CheckpointError(
            "the checkpoint does not match the architecture inferred from it (a damaged, partial or modified "
            "file?): " + "; ".join(problems)
        )


def build_model(config: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> SVDModel:
    """A model with freshly initialised weights (on the meta device when device='meta')."""
    with torch.device(device):
        model = SVDModel(config)
    return model.to(dtype) if dtype is not None else model
