"""Finetuning data: manifest and folder datasets, frame windows, size buckets, reading, the latent cache, config."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from train_support import FRAMES, SIZE, clip_frames, micro_setup, one_thread_fixture, train_config

from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.media.video import read_video, write_video
from comfyui_svd_lab.svd_model.training.cache import LatentCache, StaleCacheError, build_cache
from comfyui_svd_lab.svd_model.training.config import CacheConfig, DataConfig, config_from_dict, load_config
from comfyui_svd_lab.svd_model.training.data import (
    load_manifest,
    make_dataset,
    nearest_bucket,
    plan_windows,
    read_window,
    scan_folder,
    window_indices,
)
from comfyui_svd_lab.svd_model.training.loop import BatchPlan, make_batch

_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_setup(tmp_path_factory.mktemp("data"), clips=3, cache=False)[:3]


def manifest_rows(root, clips):
    """Rows as the curation manifest writes them: one source split in two clips (no clip files), one written
    clip file, a dropped clip and an error row."""
    source = str(clips / "clip0.mp4")
    rows = [
        {"clip_id": "v0_0000", "source": source, "clip_path": "", "start_frame": 0, "end_frame": 4, "fps": 8.0,
         "motion_bucket_id": 40, "width": SIZE, "height": SIZE, "keep": True, "status": "ok"},
        {"clip_id": "v0_0001", "source": source, "clip_path": None, "start_frame": 4, "end_frame": 8, "fps": 8.0,
         "motion_bucket_id": 200, "width": SIZE, "height": SIZE, "keep": True, "status": "ok"},
        {"clip_id": "v1_0000", "source": str(clips / "clip1.mp4"), "clip_path": "clips/clip1.mp4", "start_frame": 10,
         "end_frame": 18, "fps": 8.0, "motion_bucket_id": 90, "width": SIZE, "height": SIZE, "keep": True,
         "status": "ok"},
        {"clip_id": "v2_0000", "source": str(clips / "clip2.mp4"), "clip_path": "", "start_frame": 0, "end_frame": 8,
         "fps": 8.0, "motion_bucket_id": 10, "width": SIZE, "height": SIZE, "keep": False, "status": "ok"},
        {"clip_id": "v3_err", "source": "missing.mp4", "clip_path": "", "start_frame": 0, "end_frame": 0,
         "fps": None, "motion_bucket_id": None, "width": None, "height": None, "keep": False, "status": "error"},
    ]
    return rows


def test_manifest_clips_use_measured_values_and_read_the_right_frames(micro):
    root, _, _ = micro
    path = root / "manifest_filtered.parquet"
    pq.write_table(pa.Table.from_pylist(manifest_rows(root, root / "clips")), path)
    clips = load_manifest(path)
    assert [c.clip_id for c in clips] == ["v0_0000", "v0_0001", "v1_0000"]  # dropped and error rows skipped
    assert clips[2].path == root / "clips" / "clip1.mp4" and (clips[2].start_frame, clips[2].end_frame) == (0, 8)
    assert (clips[1].start_frame, clips[1].end_frame) == (4, 8) and clips[1].path.name == "clip0.mp4"
    windows, skipped = plan_windows(clips, DataConfig(num_frames=FRAMES, fps=8.0, width=SIZE, height=SIZE))
    assert not skipped
    assert [w.motion_bucket_id for w in windows] == [40, 200, 90]  # per clip, from the manifest
    assert all(w.fps_id == 7 for w in windows)  # 8 fps -> fps_id 7
    source, _ = read_video(root / "clips" / "clip0.mp4")  # (t, H, W, 3) in [0, 1]
    frames = read_window(windows[1])  # (T, 3, H, W) in [-1, 1]
    assert frames.shape == (FRAMES, 3, SIZE, SIZE) and -1 <= frames.min() and frames.max() <= 1
    expected = source[list(windows[1].indices)].permute(0, 3, 1, 2) * 2 - 1
    assert torch.allclose(frames, expected, atol=1e-6)
    assert min(windows[1].indices) >= 4


def test_captions_come_from_the_manifest_columns_or_sidecar_files(micro, tmp_path):
    root, _, _ = micro
    rows = manifest_rows(root, root / "clips")[:3]
    rows[0].update(caption_summary="  a summary ", caption_video="a video caption", caption_image="an image")
    rows[1].update(caption_summary="", caption_video=None, caption_image="only the image caption")
    rows[2].update(caption_summary=None, caption_video=None, caption_image=None)
    path = tmp_path / "captioned.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert [c.caption for c in load_manifest(path)] == ["a summary", "only the image caption", ""]
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("clip0.mp4", "clip1.mp4"):
        (folder / name).write_bytes((root / "clips" / name).read_bytes())
    (folder / "clip0.txt").write_text("\ufeffa red square\n  moving right\n", encoding="utf-8")
    assert [c.caption for c in scan_folder(folder)] == ["a red square moving right", ""]
    (folder / "clip1.txt").write_bytes(b"\xfa\xfb not utf-8")
    with pytest.raises(InputError, match="clip1.txt is not UTF-8 text"):
        scan_folder(folder)


def test_manifest_folder_layout_reads_completed_parts(micro):
    from comfyui_svd_lab.svd_model.curation import manifest
    root, _, _ = micro
    out = root / "curated"
    writer = manifest.ManifestWriter(out)
    rows = manifest_rows(root, root / "clips")
    for row in rows[:2]:
        row.update(video_id="v0", clip_index=int(row["clip_id"][-1]))
    writer.add("v0", rows[0]["source"], rows[:2])
    writer.flush()
    clips = load_manifest(out)
    assert [c.motion_bucket_id for c in clips] == [40, 200]


def test_manifest_without_needed_columns_names_them(micro, tmp_path):
    root, _, _ = micro
    rows = [{k: v for k, v in r.items() if k not in ("motion_bucket_id", "fps")} for r in manifest_rows(root, root)]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(InputError, match=r"lacks the column\(s\) \['fps', 'motion_bucket_id'\]"):
        load_manifest(path)


def test_short_clips_are_skipped_with_a_message_and_all_short_is_an_error(micro, caplog):
    root, _, _ = micro
    config = DataConfig(folder=str(root / "clips"), num_frames=4, fps=4.0, width=SIZE, height=SIZE)
    dataset = make_dataset(config)  # 8 frames at 8 fps -> stride 2: 4 frames need 7 source frames: fits
    assert all(w.indices[1] - w.indices[0] == 2 for w in dataset.windows)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(InputError, match="no clip is long enough for 5 frames at 4.0 fps.*lower data.num_frames"):
            make_dataset(DataConfig(folder=str(root / "clips"), num_frames=5, fps=4.0, width=SIZE, height=SIZE))
    assert "shorter than 5 frames" in caplog.text and "9 needed" in caplog.text


def test_window_indices_stride_spread_and_no_upsampling():
    rng = np.random.default_rng(0)
    windows, fps = window_indices(100, 24.0, 8.0, 4, 3, rng)
    assert fps == 8.0 and [w[1] - w[0] for w in windows] == [3, 3, 3]
    assert windows[0][0] == 0 and windows[-1][-1] == 99  # spread over the whole clip
    windows, fps = window_indices(10, 8.0, 24.0, 4, 1, rng)  # asks for more frames than exist: stride 1
    assert fps == 8.0 and windows[0][1] - windows[0][0] == 1
    assert window_indices(5, 8.0, 4.0, 4, 1, rng) == ([], 4.0)


def test_mixed_resolutions_go_to_buckets_and_batches_never_mix(tmp_path):
    sizes = ((64, 64), (128, 64), (64, 128))
    assert nearest_bucket(1920, 1080, sizes) == (128, 64)
    assert nearest_bucket(720, 1280, sizes) == (64, 128)
    assert nearest_bucket(500, 480, sizes) == (64, 64)
    groups = {(64, 64): [0, 1, 2, 3, 4], (128, 64): [5, 6], (64, 128): [7]}
    plan = BatchPlan(groups, 2, seed=3)
    assert plan.per_epoch == 3
    seen = [plan.batch(i) for i in range(9)]
    for batch in seen:
        assert len(batch) == 2 and len({next(s for s, idx in groups.items() if i in idx) for i in batch}) == 1
    assert seen[:3] != seen[3:6] and sorted(map(sorted, seen[:3])) != []  # reshuffled per epoch
    assert plan.batch(4) == BatchPlan(groups, 2, seed=3).batch(4)  # stateless
    with pytest.raises(InputError, match="no size bucket holds a full batch of 8 clips"):
        BatchPlan(groups, 8, seed=0)


def test_folder_of_mixed_sizes_builds_a_bucketed_cache(micro, tmp_path):
    _, _, bundle = micro
    clips = tmp_path / "mixed"
    write_video(torch.from_numpy(clip_frames(0, 6)), clips / "square.mp4", fps=8)
    write_video(torch.from_numpy(clip_frames(1, 6, size=64, width=128)), clips / "wide.mp4", fps=8)
    config = DataConfig(folder=str(clips), num_frames=FRAMES, fps=8.0, width=64, height=64, buckets=((128, 64),))
    dataset = make_dataset(config)
    assert sorted(w.size for w in dataset.windows) == [(64, 64), (128, 64)]
    cfg = train_config(tmp_path, "x.safetensors")
    cache = build_cache(bundle, dataset, tmp_path / "cache", cfg.cache, cfg.objective)
    assert sorted(cache.groups()) == [(64, 64), (128, 64)]
    assert cache.item(cache.groups()[(128, 64)][0]).moments.shape == (FRAMES, 8, 8, 16)


def test_cache_contents_resume_and_settings_guard(micro, tmp_path):
    root, _, bundle = micro
    cfg = train_config(tmp_path, "x.safetensors", root / "clips")
    dataset = make_dataset(cfg.data)
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(bundle, dataset, tmp_path / "c", CacheConfig(shard_clips=1, dtype="fp32"),
                    cfg.objective, callback=stop_after_two)
    partial = LatentCache(tmp_path / "c")
    assert not partial.complete and len(partial) == 2
    calls.clear()
    cache = build_cache(bundle, dataset, tmp_path / "c", CacheConfig(shard_clips=1, dtype="fp32"),
                        cfg.objective, callback=lambda done, total: calls.append(done))
    assert cache.complete and len(cache) == 3 and calls == [3]  # only the missing window was encoded
    item = cache.item(0)
    assert item.moments.shape == (FRAMES, 8, 8, 8) and item.crossattn.shape == (2, 64)
    assert item.cond_frames.shape == (2, 3, SIZE, SIZE) and item.concat is None
    first = read_window(next(w for w in dataset.windows if w.key == item.entry.key))
    assert torch.allclose(item.cond_frames, first[[0, -1]])  # clean first and last frame
    mean = bundle.model.first_stage.encode_moments(first).chunk(2, 1)[0]
    assert torch.allclose(item.moments.chunk(2, 1)[0], mean, atol=1e-5)  # the posterior, not a sample
    with pytest.raises(ConfigError, match="built with other settings"):
        build_cache(bundle, dataset, tmp_path / "c", CacheConfig(dtype="fp16"), cfg.objective)


def test_a_cache_of_a_recurated_manifest_is_refused_or_rebuilt_never_reused(micro, tmp_path):
    """The manifest at the same path re-curated: other clips of the same count, more clips, a re-measured motion
    bucket. Each is refused naming what differs, leaving the cache as it was; rebuild replaces it, and the result
    equals a cache built fresh from that dataset."""
    root, _, bundle = micro
    rows = [dict(r, clip_path="") for r in manifest_rows(root, root / "clips")[:4]]  # v0_0000, v0_0001, v2_0000
    manifest = tmp_path / "manifest.parquet"
    cfg = train_config(tmp_path, "x.safetensors", data__manifest=str(manifest))
    settings = CacheConfig(dtype="fp32", shard_clips=1)

    def curate(keep: set[str], **changes: dict):
        table = [dict(r, keep=r["clip_id"] in keep, **changes.get(r["clip_id"], {})) for r in rows]
        pq.write_table(pa.Table.from_pylist(table), manifest)
        return make_dataset(cfg.data)

    def keys(cache):
        return sorted(e.key for e in cache.entries)

    cache = build_cache(bundle, curate({"v0_0000", "v0_0001"}), tmp_path / "c", settings, cfg.objective)
    encoded: list[int] = []
    cases = [({"v0_0000", "v2_0000"}, {}, r"1 new \(e.g. v2_0000\), 1 gone \(e.g. v0_0001\)"),  # same count
             ({"v0_0000", "v0_0001", "v2_0000"}, {}, r"differ from the dataset's: 1 new \(e.g. v0_0001\) \("),
             ({"v0_0000", "v0_0001", "v2_0000"}, {"v2_0000": {"motion_bucket_id": 7}}, r"1 changed \(e.g. v2_0000\)")]
    for keep, changes, difference in cases:
        before = keys(cache)
        dataset = curate(keep, **changes)
        with pytest.raises(StaleCacheError, match=difference):
            build_cache(bundle, dataset, tmp_path / "c", settings, cfg.objective)
        assert keys(LatentCache(tmp_path / "c")) == before  # refused: nothing deleted, nothing added
        cache = build_cache(bundle, dataset, tmp_path / "c", settings, cfg.objective, rebuild=True)
        assert cache.complete and keys(cache) == sorted(w.key for w in dataset.windows) == sorted(keep)
        again = build_cache(bundle, dataset, tmp_path / "c", settings, cfg.objective,
                            callback=lambda done, total: encoded.append(done))
        assert keys(again) == keys(cache) and encoded == []  # now up to date: reused without encoding
    assert {e.key: e.motion_bucket_id for e in cache.entries} == {"v0_0000": 40, "v0_0001": 200, "v2_0000": 7}
    fresh = build_cache(bundle, dataset, tmp_path / "fresh", settings, cfg.objective)
    for i, entry in enumerate(cache.entries):
        twin = fresh.item(next(j for j, e in enumerate(fresh.entries) if e.key == entry.key))
        assert twin.entry == dataclasses.replace(cache.item(i).entry, shard=twin.entry.shard)
        assert torch.equal(cache.item(i).moments, twin.moments) and torch.equal(cache.item(i).cond_frames,
                                                                                twin.cond_frames)


def test_cached_and_exact_augmentation_condition_on_the_frame(micro, tmp_path):
    """With a negligible augmentation both modes give the conditioner's posterior mean of the clean frame."""
    root, _, bundle = micro
    cfg = train_config(tmp_path, "x.safetensors", root / "clips", objective__cond_aug_mean=-40.0,
                       objective__cond_dropout=0.0)
    dataset = make_dataset(cfg.data)
    for mode in ("exact", "cached"):
        cache_cfg = CacheConfig(cond_aug_mode=mode, dtype="fp32", aug_draws=2)
        cache = build_cache(bundle, dataset, tmp_path / mode, cache_cfg, cfg.objective)
        item = cache.item(0)
        vae = bundle.model.cond_vae if mode == "exact" else None
        batch = make_batch([item], [torch.Generator().manual_seed(1)], objective=cfg.objective, keyframes=True,
                           scale_factor=0.18215, cond_vae=vae, device=torch.device("cpu"))
        frames = read_window(next(w for w in dataset.windows if w.key == item.entry.key))[[0, -1]]
        clean = bundle.model.cond_vae.encode_mode(frames).reshape(1, 8, 8, 8)
        assert torch.allclose(batch.cond.concat, clean, atol=1e-4), mode
        assert torch.allclose(batch.cond.crossattn[0], item.crossattn[:1])
        assert batch.x0.shape == (1, FRAMES, 4, 8, 8) and batch.sigma.shape == (1,)
        if mode == "cached":
            assert item.concat.shape == (2, 2, 4, 8, 8) and item.cond_aug.shape == (2,)


def test_config_errors_name_the_key_and_files_load(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        config_from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"data.num_frames = 'x' has the wrong type"):
        config_from_dict({"data": {"num_frames": "x"}})
    with pytest.raises(ConfigError, match="method = 'lokr' is not one of"):
        config_from_dict({"method": "lokr"})
    with pytest.raises(ConfigError, match="not a positive multiple of 64"):
        config_from_dict({"data": {"buckets": [[64, 100]]}})
    (tmp_path / "run.toml").write_text('steps = 7\n[optim]\nlr = 3e-5\n[data]\nbuckets = [[576, 1024]]\n')
    config = load_config(tmp_path / "run.toml", overrides=["data.num_frames=25", "objective.sigma_per=frame"])
    assert (config.steps, config.optim.lr, config.data.num_frames) == (7, 3e-5, 25)
    assert config.data.buckets == ((576, 1024),) and config.objective.sigma_per == "frame"
    (tmp_path / "run.json").write_text(json.dumps(config.to_dict()))
    assert load_config(tmp_path / "run.json") == config
