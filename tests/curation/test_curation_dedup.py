"""Near-duplicate removal (svd_model/curation/dedup.py): the perceptual hash, the blocked pair search against
brute force, the representative and the reason, reruns, and a curated synthetic set with known duplicates
(renamed, re-encoded, resized and cropped copies) through the CLI flag, the node and the report."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.cli import main
from comfyui_svd_lab.svd_model.curation import dedup, filtering, manifest
from comfyui_svd_lab.svd_model.curation.dedup import DedupConfig, DedupPair, dedup_table, perceptual_hash
from comfyui_svd_lab.svd_model.curation.engine import run_curation
from comfyui_svd_lab.svd_model.curation.records import CurationConfig
from comfyui_svd_lab.svd_model.curation.synthetic_duplicates import VARIANTS, make_duplicate_set
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.training_nodes.curation_base import Manifest

#: Copies per source: source 0 in every variant, 1 re-encoded and cropped, 2 renamed; sources 3-5 unique.
COPIES = (VARIANTS, ("reencoded", "cropped"), ("renamed",))


def _image(seed: int, size: tuple[int, int] = (180, 320)) -> np.ndarray:
    """A smooth random RGB uint8 image (h, w, 3)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (9, 16, 3)).astype(np.float32)
    return cv2.resize(small, size[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def test_perceptual_hash_is_stable_under_copies_and_differs_between_images():
    img = _image(0)
    h = perceptual_hash(img)
    assert len(h) == 16 and int(h, 16) >= 0 and perceptual_hash(img.copy()) == h
    smaller = cv2.resize(img, (160, 90), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    assert dedup.hamming(h, perceptual_hash(smaller)) <= 4
    assert dedup.hamming(h, perceptual_hash(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))) <= 4
    others = [dedup.hamming(h, perceptual_hash(_image(s))) for s in range(1, 9)]
    assert min(others) > 12 and np.mean(others) > 20
    with pytest.raises(InputError, match="RGB uint8"):
        perceptual_hash(img.astype(np.float32))


def test_blocked_pair_search_matches_brute_force():
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, 50, dtype=np.int64).astype(np.uint64)
    hashes[7] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[20] = hashes[3]
    a, b = dedup.hash_pairs(hashes, 3, block_elements=64)  # one row per block: many blocks
    brute = {(i, j) for i, j in itertools.combinations(range(50), 2)
             if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 3}
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == brute and {(3, 7), (3, 20), (7, 20)} <= brute
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    emb[11] = emb[2] + 0.01
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a, b = dedup.embedding_pairs(emb, 0.9, block_elements=100)
    sims = emb @ emb.T
    brute = {(i, j) for i, j in itertools.combinations(range(40), 2) if sims[i, j] >= 0.9}
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == brute and (2, 11) in brute


def test_union_find_matches_connected_components_and_takes_a_huge_group():
    rng = np.random.default_rng(1)
    n = 300
    a, b = rng.integers(0, n, 250), rng.integers(0, n, 250)
    uf = dedup._UnionFind(n)
    for k in range(0, 250, 50):  # in several batches, as the blocks come
        uf.union_pairs(a[k : k + 50], b[k : k + 50])
    neighbours = {i: set() for i in range(n)}
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        neighbours[i].add(j)
        neighbours[j].add(i)
    for start in range(n):  # the root of each component is its smallest member
        seen, todo = {start}, [start]
        while todo:
            for j in neighbours[todo.pop()] - seen:
                seen.add(j)
                todo.append(j)
        assert uf.find(start) == min(seen)
    same = np.full(3000, 12345, np.uint64)  # 3000 identical clips: 4.5 million pairs, one group
    uf = dedup._UnionFind(3000)
    for i, j in dedup.iter_hash_pairs(same, 0, block_elements=1_000_000):
        uf.union_pairs(i, j)
    assert set(uf.roots(np.arange(3000)).tolist()) == {0}


def _row(cid: str, phash: str | None, **values) -> dict:
    row = manifest.empty_row()
    row.update(clip_id=cid, video_id=cid[:4], source=f"/nowhere/{cid}.mp4", source_rel=f"{cid}.mp4", clip_index=0,
               status="ok", start_time=0.0, end_time=2.0, duration=2.0, width=320, height=180, keep=True,
               extra=json.dumps({"phash": phash} if phash else {}))
    row.update(values)
    return row


def test_representative_by_filter_aesthetic_resolution_duration_then_id(tmp_path):
    h = perceptual_hash(_image(0))
    near = f"{int(h, 16) ^ 0b111:016x}"  # 3 bits apart
    rows = [
        _row("a000", h, aesthetic=5.0, width=64, height=36),
        _row("b000", near, aesthetic=6.0, width=32, height=18),  # best aesthetic wins over resolution
        _row("c000", h, aesthetic=9.0, keep=False, drop_reason="text_area > 0.07"),  # dropped by a filter rule
        _row("d000", h, width=640, height=360),  # no aesthetic: ranks after those with one
        _row("e000", perceptual_hash(_image(5))),  # unrelated
        {**manifest.empty_row(), "clip_id": "f000_err", "video_id": "f000", "source": "/x", "status": "error",
         "error": "bad", "drop_reason": "error: bad", "extra": "{}"},
    ]
    result = dedup_table(manifest.to_table(rows), tmp_path, DedupConfig(hamming=4))
    got = {r["clip_id"]: r for r in result.table.to_pylist()}
    assert [(p.kept, p.dropped) for p in result.pairs] == [("b000", "a000"), ("b000", "c000"), ("b000", "d000")]
    assert got["b000"]["keep"] and got["e000"]["keep"] and not got["f000_err"]["keep"]
    assert got["a000"]["drop_reason"] == "duplicate of b000 (hash distance 3/64)"
    assert got["c000"]["drop_reason"] == "text_area > 0.07; duplicate of b000 (hash distance 3/64)"
    assert got["f000_err"]["drop_reason"] == "error: bad"
    assert (result.groups, result.dropped, result.clips, result.hashed) == (1, 3, 5, 5)
    # without aesthetic scores: resolution, then duration, then the smallest clip id
    plain = [_row("z000", h, width=64, height=36, duration=3.0), _row("y000", h, width=64, height=36),
             _row("x000", h, width=64, height=36), _row("w000", h, width=32, height=18, duration=9.0)]
    result = dedup_table(manifest.to_table(plain), tmp_path, DedupConfig(hamming=0))
    assert {p.kept for p in result.pairs} == {"z000"}
    result = dedup_table(manifest.to_table(plain[1:]), tmp_path, DedupConfig(hamming=0))
    assert {p.kept for p in result.pairs} == {"x000"}
    # a rerun on its own output gives the same marks, not duplicated reasons; hashes off: nothing found
    again = dedup_table(result.table, tmp_path, DedupConfig(hamming=0))
    assert again.table.equals(result.table)
    assert dedup_table(result.table, tmp_path, DedupConfig(hamming=-1)).table["keep"].to_pylist() == [True] * 3


def test_clip_embeddings_join_groups_and_stay_inside_the_folder(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 16)).astype(np.float32)
    save_file({"a000": base.astype(np.float16), "b000": (base * 2 + 0.01).astype(np.float16),
               "c000": rng.standard_normal((3, 16)).astype(np.float16)}, tmp_path / "v.safetensors")
    rows = [_row(c, perceptual_hash(_image(i)), clip_embedding_path="v.safetensors")
            for i, c in enumerate(("a000", "b000", "c000"))]
    rows.append(_row("d000", perceptual_hash(_image(9)), clip_embedding_path="../outside.safetensors"))
    shutil.copy(tmp_path / "v.safetensors", tmp_path.parent / "outside.safetensors")
    result = dedup_table(manifest.to_table(rows), tmp_path, DedupConfig(cosine=0.99, hamming=4))
    assert result.embedded == 3  # d000's file lies outside the output folder: hash only
    (pair,) = result.pairs
    distance = dedup.hamming(dedup.row_hash(rows[0]), dedup.row_hash(rows[1]))
    assert (pair.kept, pair.dropped, pair.hamming) == ("a000", "b000", distance) and distance > 4
    assert pair.cosine == pytest.approx(1.0, abs=1e-3) and pair.reason().startswith("duplicate of a000 (cosine 1.000")
    assert dedup_table(manifest.to_table(rows), tmp_path, DedupConfig(cosine=0.99, hamming=4,
                                                                       use_clip=False)).pairs == []


def test_config_is_checked():
    for bad in ({"cosine": 0.0}, {"cosine": 1.5}, {"hamming": 65}, {"hamming": -2}, {"cosine": float("nan")}):
        with pytest.raises(ConfigError):
            DedupConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        DedupConfig.from_dict({"cosinus": 0.9})


# ---------------------------------------------------------------------------------- a curated synthetic set


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """The duplicate set curated once (inline), with a tiny random CLIP tower and saved embeddings."""
    import torch
    from safetensors.torch import save_file

    from comfyui_svd_lab.svd_model.config import ImageEncoderConfig
    from comfyui_svd_lab.svd_model.nn.image_encoder import OpenCLIPVisionTower

    root = tmp_path_factory.mktemp("dups")
    data = make_duplicate_set(root / "videos", sources=6, copies=COPIES, seed=10)
    torch.manual_seed(0)
    tower = OpenCLIPVisionTower(ImageEncoderConfig(width=64, layers=1, mlp_width=128, embed_dim=32, head_width=64))
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, root / "clip.safetensors")
    config = CurationConfig.from_dict({"keyframe_max_side": 128, "split": {"min_seconds": 0.5}, "text": False,
                                       "clip_checkpoint": str(root / "clip.safetensors"), "save_embeddings": True})
    run_curation(data.folder, root / "out", config, engine="inline")
    return data, root / "out"


def _copy(out: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(out, target)
    return target


def test_known_duplicates_are_found_by_hash_alone(curated, tmp_path):
    data, out = curated
    out = _copy(out, tmp_path)
    rows = manifest.read_manifest(out).to_pylist()
    assert len(rows) == len(data.groups) and all(r["status"] == "ok" and dedup.row_hash(r) for r in rows)
    result = filtering.dedup_manifest(out, DedupConfig(use_clip=False))
    precision, recall = data.precision_recall(result.pairs, rows)
    print(f"hash only: precision {precision:.2f} recall {recall:.2f}")
    assert precision == 1.0 and recall > 0.5
    # re-encoded, resized and renamed copies are always found; cropped ones only when few bits change
    uncropped = {p for p in data.true_pairs() if "cropped" not in p[0] + p[1]}
    assert uncropped <= data.predicted_pairs(result.pairs, rows)
    kept = {Path(r["source"]).name for r in pq.read_table(out / manifest.FILTERED_NAME).to_pylist() if r["keep"]}
    assert {"src_3.mp4", "src_4.mp4", "src_5.mp4"} <= kept  # the unique clips stay
    assert set(data.groups.values()) == {data.groups[name] for name in kept}  # every shot keeps a clip
    # deterministic: a second pass (and a fresh copy) give the same marks and pairs
    again = filtering.dedup_manifest(out, DedupConfig(use_clip=False))
    assert again.pairs == result.pairs and again.table.equals(result.table)
    # rows written without a hash (older runs, the step nodes): decoded from the sources, same verdicts
    bare = manifest.to_table({**r, "extra": "{}"} for r in rows)
    decoded = dedup_table(bare, out, DedupConfig(use_clip=False))
    assert decoded.hashed == len(rows) and data.precision_recall(decoded.pairs, rows)[0] == 1.0
    assert uncropped <= data.predicted_pairs(decoded.pairs, rows)


def test_identical_clips_are_found_by_clip_embeddings_alone(curated, tmp_path):
    """A random tower's embeddings of different frames are close too (cosine ~0.99), but copies are closer:
    byte-identical ones (renamed) give identical embeddings. With hashes off and cosine 0.9999, copies are found
    and nothing else."""
    data, out = curated
    out = _copy(out, tmp_path)
    result = filtering.dedup_manifest(out, DedupConfig(cosine=0.9999, hamming=-1))
    rows = manifest.read_manifest(out).to_pylist()
    assert result.embedded == len(rows) and result.hashed == 0
    predicted = data.predicted_pairs(result.pairs, rows)
    assert predicted <= data.true_pairs()
    assert {("src_0.mp4", "src_0_renamed.mp4"), ("src_2.mp4", "src_2_renamed.mp4")} <= predicted
    assert all(p.cosine is not None and p.hamming is None for p in result.pairs)  # a chain may end lower


def test_cli_flag_report_and_refilter(curated, tmp_path, capsys):
    data, out = curated
    out = _copy(out, tmp_path)
    assert main(["curate-report", str(out), "--filter", "none", "--dedup", "--dedup-threshold", "0.9999"]) == 0
    text = capsys.readouterr().out
    assert "near-duplicates:" in text and "CLIP cosine >= 0.9999" in text
    stored = json.loads((out / dedup.DEDUP_JSON).read_text())
    dropped = [r for r in pq.read_table(out / manifest.FILTERED_NAME).to_pylist() if not r["keep"]]
    assert stored["dropped"] == len(dropped) >= 4 and all(r["drop_reason"].startswith("duplicate of ")
                                                         for r in dropped)
    page = (out / "report.html").read_text()
    assert f"<h2>Near-duplicates ({len(dropped)} dropped)</h2>" in page
    assert page.count('class="dup"') == len(dropped) and page.count("data:image/jpeg") >= 2 * len(dropped)
    assert json.loads((out / "filter.json").read_text())["reasons"] == {"near-duplicate of a kept clip": len(dropped)}
    assert main(["curate-report", str(out), "--filter", "none"]) == 0  # the stored setting applies again
    assert sum(not r["keep"] for r in pq.read_table(out / manifest.FILTERED_NAME).to_pylist()) == len(dropped)
    assert main(["curate-report", str(out), "--filter", "none", "--no-dedup"]) == 0
    assert all(r["keep"] for r in pq.read_table(out / manifest.FILTERED_NAME).to_pylist())
    assert "Near-duplicates" not in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(["curate-report", str(out), "--dedup", "--dedup-hamming", "99"]) == 2
    assert "hamming distance must be" in capsys.readouterr().err


def test_node_marks_the_folder(curated, tmp_path):
    data, out = curated
    out = _copy(out, tmp_path)
    node = NODE_CLASS_MAPPINGS["SVDLab_DedupClips"]
    assert node.CATEGORY == "SVD Lab/curation"
    assert node.VALIDATE_INPUTS(cosine_threshold=0.2, hash_distance=8) == ("cosine_threshold = 0.2 is below the "
                                                                          "minimum 0.5")
    assert node.VALIDATE_INPUTS(cosine_threshold=0.9, hash_distance=8) is True
    result = node().run(Manifest(out), 0.95, 8, False)
    folder, summary = result["result"]
    assert folder.out_dir == out and summary.startswith("near-duplicates:") and result["ui"]["text"] == [summary]
    stored = dedup.stored_pairs(out)
    assert stored and all(isinstance(p, DedupPair) for p in stored)
    precision, _ = data.precision_recall(stored, manifest.read_manifest(out).to_pylist())
    assert precision == 1.0
