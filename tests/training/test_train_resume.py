"""Resume exactness (N steps straight == N/2, interrupt, resume, N/2: bitwise) and crash-safe checkpoints."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch
from train_support import micro_setup, one_thread_fixture, train_config, write_micro_checkpoint

from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError
from comfyui_svd_lab.svd_model.training.report import read_log
from comfyui_svd_lab.svd_model.training.run import run_training
from comfyui_svd_lab.svd_model.training.state import (
    capture_rng,
    latest_checkpoint,
    load_state,
    restore_rng,
    save_state,
    state_path,
)
from comfyui_svd_lab.svd_model.weights import checkpoint as checkpoint_mod

N = 4
#: Every source of randomness on: conditioning dropout and augmentation, LoRA dropout, EMA, warmup + cosine.
RANDOM = {"ema_decay": 0.9, "objective__cond_dropout": 0.5, "lora__dropout": 0.2, "optim__warmup_steps": 1,
          "optim__schedule": "cosine"}


_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_setup(tmp_path_factory.mktemp("resume"), clips=3)


class Stop(Exception):
    """Stands in for ComfyUI's InterruptProcessingException / Ctrl-C."""


def test_interrupt_and_resume_continue_bitwise_exactly(micro, tmp_path):
    _, ckpt, bundle, cache = micro
    straight = run_training(train_config(tmp_path / "a", ckpt, steps=N, batch_size=2, **RANDOM), bundle=bundle,
                            cache=cache)
    config = train_config(tmp_path / "b", ckpt, steps=N, batch_size=2, **RANDOM)

    def stop_half_way(event):
        if event.stats.step == N // 2:
            raise Stop

    with pytest.raises(Stop):
        run_training(config, bundle=bundle, cache=cache, on_step=stop_half_way)
    written = latest_checkpoint(tmp_path / "b" / "out" / "checkpoints")
    assert written is not None and load_state(written)["step"] == N // 2  # written on the interruption
    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG it starts with
    resumed = run_training(config, bundle=bundle, cache=cache)
    a, b = load_state(straight.state_path), load_state(resumed.state_path)
    assert a["step"] == b["step"] == N
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    print(f"resume: max |straight - resumed| over {len(a['model'])} trained tensors = {diff}")
    for group in ("model", "ema"):
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            assert torch.equal(a[group][key], b[group][key]), (group, key)
    for key in a["optimizer"]["state"]:
        for name, value in a["optimizer"]["state"][key].items():
            assert torch.equal(value, b["optimizer"]["state"][key][name])
    losses = [r["loss"] for r in read_log(straight.log_path)]
    assert losses == [r["loss"] for r in read_log(resumed.log_path)]  # same data, sigmas, noise, dropout
    assert len(set(losses)) == N


def test_resume_with_other_training_settings_is_refused(micro, tmp_path):
    _, ckpt, bundle, cache = micro
    run_training(train_config(tmp_path, ckpt, steps=1), bundle=bundle, cache=cache)
    more = run_training(train_config(tmp_path, ckpt, steps=2), bundle=bundle, cache=cache)  # more steps: fine
    assert more.step == 2 and [r["step"] for r in more.records] == [1, 2]
    with pytest.raises(ConfigError, match=r"cannot resume from .*other \['lora'\]"):
        run_training(train_config(tmp_path, ckpt, steps=3, lora__rank=8), bundle=bundle, cache=cache)


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((4,), float(step))}, "optimizer": {"state": {}, "param_groups": []},
            "ema": None, "scaler": None, "config": {"steps": 9}}


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_state(state_path(tmp_path, 1), **_state(1))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_mod.os, "fsync", no_space)
    with pytest.raises(CheckpointError, match=r"the disk is full; the previous checkpoint .*step0000001.* is intact"):
        save_state(state_path(tmp_path, 2), **_state(2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-step0000001.safetensors"]  # no temp file left
    assert torch.equal(load_state(latest_checkpoint(tmp_path))["model"]["w"], torch.ones(4))


def test_a_killed_save_leaves_nothing_a_resume_would_read(tmp_path):
    save_state(state_path(tmp_path, 1), **_state(1))
    good = state_path(tmp_path, 1).read_bytes()
    (tmp_path / ".state-step0000002.safetensors.x1y2.tmp").write_bytes(good[: len(good) // 2])  # killed mid-write
    state_path(tmp_path, 3).write_bytes(good[: len(good) // 2])  # a truncated file (e.g. copied by hand)
    assert latest_checkpoint(tmp_path) == state_path(tmp_path, 1)
    save_state(state_path(tmp_path, 4), **_state(4))
    assert not list(tmp_path.glob(".*.tmp"))  # the next save clears the leftover
    assert load_state(latest_checkpoint(tmp_path))["step"] == 4
    with pytest.raises(CheckpointError, match="not a training-state checkpoint"):
        load_state(write_micro_checkpoint(tmp_path / "model.safetensors"))


def test_rng_states_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    tensors, info = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    restore_rng(tensors, info)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
