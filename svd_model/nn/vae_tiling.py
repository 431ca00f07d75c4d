"""Where the temporal VAE decodes a clip piece by piece: frame chunks, spatial tiles, and their blend weights.

Pure geometry, no networks: :func:`chunk_ranges` cuts the frame axis, :func:`tile_ranges` one spatial axis,
and :func:`blend_weights` gives, along one axis, each piece's weights that ramp linearly over the part it
shares with its neighbours and sum to 1 at every position. A 2-D tile's weights are the outer product of
its row and column weights, so they sum to 1 over the tiles too. Used by :func:`.vae.decode_chunked`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError


def chunk_ranges(
    num_frames: int, chunk_size: int, num_frames_per_video: int | None = None, overlap: int = 0
) -> list[tuple[int, int]]:
    """[start, stop) frame ranges of the decoding chunks.

    None: sgm ``decode_first_stage`` semantics, consecutive chunks of ``chunk_size`` along the flat frame axis
    (the last may be shorter; with several videos a chunk may straddle two). With ``num_frames_per_video``,
    each video is chunked on its own, so no chunk mixes videos. Both agree for a single video. With
    ``overlap`` > 0, consecutive chunks of a video share that many frames.
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise InputError(f"need 0 <= overlap < chunk_size, got overlap {overlap} and chunk_size {chunk_size}")
    if num_frames == 0:
        return []
    per_video = num_frames if num_frames_per_video is None else num_frames_per_video
    if per_video < 1 or num_frames % per_video:
        raise InputError(f"{num_frames} frames are not a whole number of videos of {num_frames_per_video} frames")
    ranges = []
    for video in range(0, num_frames, per_video):
        start = 0
        while True:
            stop = min(start + chunk_size, per_video)
            ranges.append((video + start, video + stop))
            if stop == per_video:
                break
            start = stop - overlap
    return ranges


def tile_ranges(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of the tiles along one spatial axis of `length` latent pixels.

    As few tiles as fit the edge `tile` with `overlap` shared pixels, then all made the same edge (<= `tile`,
    as small as still covers `length`) so no tile is a thin sliver; neighbours share `overlap` pixels (the
    last pair up to n - 1 more, from rounding). One tile [0, length) when `length` <= `tile`.
    """
    if tile < 1:
        raise InputError(f"the tile edge must be >= 1 latent pixel, got {tile}")
    if not 0 <= overlap < tile:
        raise InputError(f"need 0 <= tile overlap < tile edge, got overlap {overlap} and tile {tile}")
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))  # tiles of edge `tile` needed to cover `length`
    edge = math.ceil((length + (n - 1) * overlap) / n)  # <= tile, since n * (tile - overlap) >= length - overlap
    starts = [i * (edge - overlap) for i in range(n - 1)] + [length - edge]
    return [(start, start + edge) for start in starts]


def blend_weights(ranges: list[tuple[int, int]], length: int, group: int | None = None) -> list[Tensor]:
    """Per range, (stop - start,) float32 weights for blending overlapping pieces along one axis.

    A piece's weights are 1 except over the positions it shares with the previous / next range (of the same
    group of `group` positions, e.g. one video's frames; None: one group), where they ramp linearly:
    k / (s + 1), k = 1..s for s shared positions, so two neighbours' ramps sum to 1. They are then
    normalised so the weights of every position sum to exactly 1 (this also covers positions in three pieces).
    """
    group = group or length
    raw, total = [], torch.zeros(length)
    for i, (start, stop) in enumerate(ranges):
        w = torch.ones(stop - start)
        if i and ranges[i - 1][1] > start and start % group:  # shares its first positions with the previous
            s = min(ranges[i - 1][1] - start, stop - start)
            w[:s] = torch.arange(1, s + 1, dtype=torch.float32) / (s + 1)
        if i + 1 < len(ranges) and ranges[i + 1][0] < stop and stop % group:  # ... its last with the next
            s = min(stop - ranges[i + 1][0], stop - start)
            w[-s:] = torch.minimum(w[-s:], torch.arange(s, 0, -1, dtype=torch.float32) / (s + 1))
        raw.append(w)
        total[start:stop] += w
    return [w / total[start:stop] for w, (start, stop) in zip(raw, ranges, strict=True)]
