"""Near-duplicate clips (re-uploads, the same shot under several names, re-encoded / resized / cropped copies):
found over the whole curated dataset, one representative kept per group, the others marked dropped with
"duplicate of <clip id>".

Two signals, either of which makes a pair near-duplicate:

* a 64-bit perceptual hash of the clip's middle keyframe (DCT hash, :func:`perceptual_hash`), computed in the
  worker for every clip (``CurationConfig.perceptual_hash``) and stored in the row's ``extra`` JSON as
  ``"phash"`` (16 hex digits): pairs within ``hamming`` differing bits. It needs no model, so clips are
  comparable without a CLIP checkpoint;
* the CLIP image embeddings the pipeline saves (``save_embeddings``, one (k, d) tensor per clip): the mean of the
  clip's unit-length keyframe embeddings, renormalised; pairs with cosine similarity >= ``cosine``.

Pairs are found with blocked all-pairs comparisons (XOR + popcount for hashes, matrix products for
embeddings), so memory stays at O(n d) for the embeddings plus one block of at most ``block_elements``
similarities, whatever the dataset size (100k clips x 1024 dims: 400 MB of embeddings and 64 MB blocks).
Groups are the connected components of the pairs (union-find). Per group the representative is the best clip
by: passes the filter rules, then aesthetic score (when present), then resolution (pixels), then duration,
then the smallest clip id (deterministic). Every other member is marked ``keep = False`` with the reason
``duplicate of <representative> (cosine 0.987, hash distance 3/64)`` (its own similarity to the
representative; in a chain it can be below the threshold). Nothing is deleted; the dedup runs after the filter
pass, in the driver, over the merged manifest, so it works the same for every engine.

Files in the output folder: ``dedup.json`` (the settings, counts and the (kept, dropped) pairs the report
draws); once it exists, every later filter pass (``svd-lab curate-report``, the report node) applies the
dedup again with the same settings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError, SVDError
from ..fsutil import write_text_atomic
from .dedup_config import BLOCK, HASH_BITS, DedupConfig
from .manifest import arrow_array
from .phash import HASH_KEY, hamming, perceptual_hash  # the worker-side half (no pyarrow); re-exported

#: How this pass starts the drop reason it writes: "duplicate of <clip id> (...)"; filtering groups them by it.
DUPLICATE_PREFIX = "duplicate of "

log = logging.getLogger(__name__)

DEDUP_JSON = "dedup.json"
Pairs = tuple[np.ndarray, np.ndarray]  # (i, j) index arrays, i < j


# ------------------------------------------------------------------------------------------ settings


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class DedupPair:
    """A dropped clip and the representative kept in its place, with their own similarities (None: a signal
    one of them lacks)."""

    kept: str
    dropped: str
    cosine: float | None
    hamming: int | None

    def reason(self) -> str:
        sims = [f"cosine {self.cosine:.3f}"] if self.cosine is not None else []
        sims += [f"hash distance {self.hamming}/{HASH_BITS}"] if self.hamming is not None else []
        return f"{DUPLICATE_PREFIX}{self.kept}" + (f" ({', '.join(sims)})" if sims else "")


@dataclass
class DedupResult:
    """The table with duplicates marked, the pairs, and what was compared."""

    table: pa.Table
    config: DedupConfig
    pairs: list[DedupPair] = field(default_factory=list)
    groups: int = 0
    clips: int = 0
    hashed: int = 0
    embedded: int = 0

    @property
    def dropped(self) -> int:
        return len(self.pairs)

    def summary(self) -> str:
        return (f"near-duplicates: {self.dropped} clip(s) dropped in {self.groups} group(s) of {self.clips} clips "
                f"({self.config.describe()}; {self.hashed} with a hash, {self.embedded} with a CLIP embedding)")

    def to_json(self) -> str:
        return json.dumps({"config": asdict(self.config), "summary": self.summary(), "clips": self.clips,
                           "hashed": self.hashed, "embedded": self.embedded, "groups": self.groups,
                           "dropped": self.dropped,
                           "pairs": [asdict(p) for p in self.pairs]}, indent=1)


# ------------------------------------------------------------------------------------------ pair search


class _UnionFind:
    """Disjoint sets over 0..n-1, merged by whole arrays of pairs (vectorised: a group of thousands of identical
    clips gives millions of pairs). Every parent index is smaller than its child's, so there are no cycles; the
    root of a set is its smallest member."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def roots(self, x: np.ndarray) -> np.ndarray:
        """The root of each index in ``x`` (pointer jumping; compresses the paths it walks)."""
        parent = self.parent
        r = parent[x]
        while True:
            up = parent[r]
            if np.array_equal(up, r):
                return r
            parent[x] = up  # path compression for the queried indices
            r = up

    def find(self, i: int) -> int:
        return int(self.roots(np.array([i]))[0])

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of a[k] and b[k] for every k. Each round hooks every root met by a pair onto the
        smallest root it is paired with; pairs whose ends meet drop out, so at least one root goes per round."""
        while len(a):
            ra, rb = self.roots(a), self.roots(b)
            differ = ra != rb
            a, b = ra[differ], rb[differ]
            if not len(a):
                return
            np.minimum.at(self.parent, np.maximum(a, b), np.minimum(a, b))


def _rows_per_block(n: int, budget: int) -> int:
    return max(1, min(n, budget // max(n, 1)))


def iter_hash_pairs(hashes: np.ndarray, max_distance: int, block_elements: int = BLOCK) -> Iterator[Pairs]:
    """hashes: (n,) uint64 -> per block of rows, index arrays (i, j), i < j, of the pairs at most
    ``max_distance`` bits apart. XOR + popcount on at most ``block_elements`` hash pairs at a time."""
    n = len(hashes)
    rows = _rows_per_block(n, block_elements)
    for start in range(0, n, rows):
        block = hashes[start : start + rows, None] ^ hashes[None, start:]  # (b, n - start)
        i, j = np.nonzero(np.bitwise_count(block) <= max_distance)
        keep = j > i  # j is offset by start like i: the upper triangle only
        yield i[keep] + start, j[keep] + start


def iter_embedding_pairs(emb: np.ndarray, threshold: float, block_elements: int = BLOCK) -> Iterator[Pairs]:
    """emb: (n, d) float32 unit rows -> per block of rows, index arrays (i, j), i < j, of the pairs with cosine
    >= ``threshold``. Matrix products (torch, float32) of at most ``block_elements`` similarities at a time."""
    import torch

    n = len(emb)
    rows = _rows_per_block(n, block_elements)
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    for start in range(0, n, rows):
        sims = x[start : start + rows] @ x[start:].T  # (b, n - start)
        i, j = (t.numpy() for t in torch.nonzero(sims >= threshold, as_tuple=True))
        keep = j > i
        yield i[keep] + start, j[keep] + start


def hash_pairs(hashes: np.ndarray, max_distance: int, block_elements: int = BLOCK) -> Pairs:
    """All pairs of :func:`iter_hash_pairs` as two arrays."""
    return _cat(list(iter_hash_pairs(hashes, max_distance, block_elements)))


def embedding_pairs(emb: np.ndarray, threshold: float, block_elements: int = BLOCK) -> Pairs:
    """All pairs of :func:`iter_embedding_pairs` as two arrays."""
    return _cat(list(iter_embedding_pairs(emb, threshold, block_elements)))


def _cat(blocks: list[Pairs]) -> Pairs:
    if not blocks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate([i for i, _ in blocks]).astype(np.int64),
            np.concatenate([j for _, j in blocks]).astype(np.int64))


# ------------------------------------------------------------------------------------------ inputs


def row_hash(row: dict[str, Any]) -> str | None:
    """The perceptual hash stored in a manifest row's ``extra`` (None when absent or malformed)."""
    try:
        value = json.loads(row.get("extra") or "{}").get(HASH_KEY)
        int(value, 16)
    except (ValueError, TypeError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) == 16 else None


def hash_sources(rows: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Row index -> the perceptual hash of the clip's middle frame, decoded from its source (one sorted read per
    video): for ok rows written without a hash (older runs, the step nodes). Unreadable sources are skipped."""
    from .frames_at import read_frames_at

    by_source: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_source.setdefault(str(row["source"]), []).append(i)
    found: dict[int, str] = {}
    for source, indices in sorted(by_source.items()):
        times = [(float(rows[i]["start_time"]) + float(rows[i]["end_time"])) / 2 for i in indices]
        try:
            frames = read_frames_at(source, times, max_side=256)
        except (SVDError, ValueError, OSError) as exc:
            log.warning("dedup: cannot read %s for its hashes (%s)", source, exc)
            continue
        for i, frame in zip(indices, frames, strict=False):
            found[i] = perceptual_hash(frame)
    return found


def _inside(out: Path, rel: str) -> Path | None:
    """``rel`` under the output folder (symlinks resolved); None when it points outside (a manifest is data, it
    never names files elsewhere)."""
    base = out.resolve()
    path = (base / rel).resolve()
    return path if path.is_relative_to(base) else None


def load_embeddings(out_dir: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> dict[int, np.ndarray]:
    """Row index -> the clip's unit-length mean CLIP embedding (d,), float32, for rows whose
    ``clip_embedding_path`` file (relative to the output folder, one safetensors file per video) holds their
    clip id. Missing or unreadable files are skipped with one warning each."""
    from safetensors import SafetensorError, safe_open

    out = Path(out_dir)
    by_file: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("clip_embedding_path"):
            by_file.setdefault(row["clip_embedding_path"], []).append(i)
    found: dict[int, np.ndarray] = {}
    for rel, indices in sorted(by_file.items()):
        path = _inside(out, rel)
        if path is None or not path.is_file():
            log.warning("dedup: embedding file %s is %s: its %d clip(s) use their hash only", rel,
                        "outside the output folder" if path is None else "missing", len(indices))
            continue
        try:
            with safe_open(str(path), framework="numpy") as handle:
                names = set(handle.keys())
                for i in indices:
                    cid = rows[i]["clip_id"]
                    if cid in names:
                        emb = np.atleast_2d(handle.get_tensor(cid).astype(np.float32))  # (k, d)
                        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # (k, d)
                        mean = unit.mean(0)
                        found[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        except (OSError, ValueError, SafetensorError) as exc:
            log.warning("dedup: cannot read %s (%s): its clip(s) use their hash only", rel, exc)
    return found


# ------------------------------------------------------------------------------------------ the pass


def _strip(reason: str) -> str:
    """A drop reason without earlier dedup marks (so a rerun starts from the filter's verdict)."""
    return "; ".join(p for p in (reason or "").split("; ") if p and not p.startswith(DUPLICATE_PREFIX))


def _rank_key(row: dict[str, Any]) -> tuple:
    """Sort key: the best representative first (kept by the filter, aesthetic, pixels, duration, clip id)."""
    aesthetic = row.get("aesthetic")
    aesthetic = float(aesthetic) if aesthetic is not None and np.isfinite(aesthetic) else -np.inf
    pixels = int(row.get("width") or 0) * int(row.get("height") or 0)
    return (not row["keep"], -aesthetic, -pixels, -float(row.get("duration") or 0.0), str(row["clip_id"]))


def dedup_table(table: pa.Table, out_dir: str | os.PathLike[str], config: DedupConfig | None = None) -> DedupResult:
    """Mark near-duplicates in a (filtered) manifest table; returns a new table (``keep`` / ``drop_reason``
    updated) with the pairs. ``out_dir``: the run's output folder, where the embedding files are."""
    config = config or DedupConfig()
    rows = table.to_pylist()
    for row in rows:  # undo an earlier dedup pass: the filter's verdict is what stays
        if row["status"] == "ok":
            row["drop_reason"] = _strip(row["drop_reason"])
            row["keep"] = not row["drop_reason"]
    ok = [i for i, r in enumerate(rows) if r["status"] == "ok"]
    hashes = {i: h for i in ok if (h := row_hash(rows[i])) is not None} if config.hamming >= 0 else {}
    missing = [i for i in ok if i not in hashes] if config.hamming >= 0 else []
    if missing:
        log.info("dedup: %d clip(s) have no stored hash; decoding their middle frames", len(missing))
        hashes.update({missing[k]: h for k, h in hash_sources([rows[i] for i in missing]).items()})
    found = load_embeddings(out_dir, [rows[i] for i in ok]) if config.use_clip else {}
    embeddings = {ok[k]: e for k, e in found.items()}
    if embeddings and len({e.shape for e in embeddings.values()}) > 1:
        raise InputError("dedup: the saved CLIP embeddings have different sizes (clips embedded by different "
                         "towers); curate with one clip_checkpoint")
    uf = _UnionFind(len(rows))
    if len(hashes) > 1:
        index = np.array(sorted(hashes), np.int64)
        values = np.array([int(hashes[i], 16) for i in index], np.uint64)
        for a, b in iter_hash_pairs(values, config.hamming, config.block_elements):
            uf.union_pairs(index[a], index[b])
    if len(embeddings) > 1:
        index = np.array(sorted(embeddings), np.int64)
        matrix = np.stack([embeddings[i] for i in index])  # (m, d)
        for a, b in iter_embedding_pairs(matrix, config.cosine, config.block_elements):
            uf.union_pairs(index[a], index[b])
    groups: dict[int, list[int]] = {}
    for i, root in zip(ok, uf.roots(np.array(ok, np.int64)).tolist(), strict=True):
        groups.setdefault(root, []).append(i)
    pairs = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: _rank_key(rows[i]))
        best = members[0]
        for i in members[1:]:
            cos = float(embeddings[i] @ embeddings[best]) if i in embeddings and best in embeddings else None
            dist = hamming(hashes[i], hashes[best]) if i in hashes and best in hashes else None
            pair = DedupPair(str(rows[best]["clip_id"]), str(rows[i]["clip_id"]), cos, dist)
            rows[i]["drop_reason"] = "; ".join(p for p in (rows[i]["drop_reason"], pair.reason()) if p)
            rows[i]["keep"] = False
            pairs.append(pair)
    pairs.sort(key=lambda p: (p.kept, p.dropped))
    keep = arrow_array([bool(r["keep"]) for r in rows], pa.bool_())
    reasons = arrow_array([r["drop_reason"] for r in rows], pa.string())
    out = table.set_column(table.schema.get_field_index("keep"), "keep", keep)
    out = out.set_column(out.schema.get_field_index("drop_reason"), "drop_reason", reasons)
    n_groups = sum(len(m) > 1 for m in groups.values())
    result = DedupResult(out, config, pairs, n_groups, len(ok), len(hashes), len(embeddings))
    log.info("%s", result.summary())
    return result


# ------------------------------------------------------------------------------------------ the folder


def load_config(out_dir: str | os.PathLike[str]) -> DedupConfig | None:
    """The dedup settings stored in ``out_dir`` (None when the folder was never deduplicated)."""
    path = Path(out_dir) / DEDUP_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); delete it or run the dedup again") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise InputError(f"{path} has no 'config' object; delete it or run the dedup again")
    return DedupConfig.from_dict(data["config"])


def store_config(out_dir: str | os.PathLike[str], config: DedupConfig | None) -> None:
    """Make later filter passes in ``out_dir`` deduplicate with ``config`` (None: stop deduplicating)."""
    path = Path(out_dir) / DEDUP_JSON
    if config is None:
        path.unlink(missing_ok=True)
    else:
        write_text_atomic(json.dumps({"config": asdict(config)}, indent=1), path)


def stored_summary(out_dir: str | os.PathLike[str]) -> str:
    """The summary line of the folder's last dedup pass ('' when none)."""
    path = Path(out_dir) / DEDUP_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return ""
    return str(data.get("summary", "")) if isinstance(data, dict) else ""


def stored_pairs(out_dir: str | os.PathLike[str]) -> list[DedupPair]:
    """The pairs of the folder's last dedup pass ([] when none)."""
    path = Path(out_dir) / DEDUP_JSON
    if not path.is_file():
        return []
    try:
        items = json.loads(path.read_text(encoding="utf-8")).get("pairs", [])
        return [DedupPair(str(p["kept"]), str(p["dropped"]), p.get("cosine"), p.get("hamming")) for p in items]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable pairs (%s)", path, exc)
        return []
