"""The one scale-to-cover + centre-crop (svd_model.resize): geometry, identity, values, and its users."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_svd_lab.svd_model.errors import ShapeError
from comfyui_svd_lab.svd_model.media.resize import cover_box, resize_cover


@pytest.mark.parametrize(("src", "target", "expect"), [
    ((1024, 576), (1024, 576), (1024, 576, 0, 0)),
    ((640, 480), (1024, 576), (1024, 768, 0, 96)),  # taller source: crop top and bottom
    ((480, 640), (1024, 576), (1024, 1365, 0, 394)),
    ((2000, 500), (512, 512), (2048, 512, 768, 0)),  # wider source: crop the sides
    ((7, 3), (16, 16), (37, 16, 10, 0)),
])
def test_cover_box(src, target, expect):
    assert cover_box(*src, *target) == expect
    sw, sh, left, top = expect
    assert sw >= target[0] and sh >= target[1] and left + target[0] <= sw and top + target[1] <= sh


def test_resize_cover_values_shape_and_identity():
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 48, 80, generator=gen) * 2 - 1
    assert resize_cover(frames, 80, 48) is frames
    out = resize_cover(frames, 32, 32)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1.0
    ref = F.interpolate(frames, size=(32, 53), mode="bilinear", antialias=True)[..., :, 10:42]
    torch.testing.assert_close(out, ref.clamp(-1, 1))
    with pytest.raises(ShapeError, match="frames must be"):
        resize_cover(frames[0], 32, 32)


def test_nodes_and_cli_condition_on_the_same_frame(tmp_path):
    """The CLI's image reader and the conditioning node's adapter give the same frame for the same picture."""
    from PIL import Image

    from comfyui_svd_lab.cli.jobs import read_image
    from comfyui_svd_lab.nodes.adapters import conditioning_frame

    pixels = (torch.rand(40, 60, 3, generator=torch.Generator().manual_seed(1)) * 255).round().to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(tmp_path / "x.png")
    cli = read_image(tmp_path / "x.png", 32, 24)
    node, count = conditioning_frame(pixels[None].float() / 255.0, 32, 24)
    assert count == 1 and cli.shape == node.shape == (1, 3, 24, 32)
    torch.testing.assert_close(cli, node, atol=1e-5, rtol=0)
