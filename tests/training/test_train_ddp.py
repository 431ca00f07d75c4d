"""`svd-lab train --nproc 2`: two gloo processes (torchrun on 127.0.0.1) with batch 1 each compute what one
process with batch 2 computes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from train_support import micro_files, one_thread_fixture, train_config

from comfyui_svd_lab.svd_model.training.report import read_log
from comfyui_svd_lab.svd_model.training.run import run_training
from comfyui_svd_lab.svd_model.training.state import latest_checkpoint, load_state
from comfyui_svd_lab.svd_model.weights.loader import load_bundle

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")
_one_thread = one_thread_fixture()  # the one-process run; torchrun starts its workers with OMP_NUM_THREADS=1


def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    ckpt = micro_files(tmp_path, clips=4)
    bundle = load_bundle(ckpt)
    base = {k: v.clone() for k, v in bundle.model.unet.state_dict().items()}
    # Adam's eps well above the gradients' rounding noise: updates then follow the gradients linearly, so the
    # comparison measures the gradients (with eps 1e-8, sign-like updates of ~zero gradients amplify the
    # all-reduce's rounding to ~1 % of a step).
    common = {"steps": 3, "method": "full", "ema_decay": 0.9, "objective__cond_dropout": 0.3, "optim__eps": 1e-3,
              "cache__dir": str(tmp_path / "cache")}
    one = run_training(train_config(tmp_path / "one", ckpt, tmp_path / "clips", batch_size=2, **common),
                       bundle=bundle)
    two = train_config(tmp_path / "two", ckpt, tmp_path / "clips", batch_size=1, **common)
    (tmp_path / "two.json").write_text(json.dumps(two.to_dict()))
    run = subprocess.run([sys.executable, "-m", "comfyui_svd_lab.cli", "train", str(tmp_path / "two.json"),
                          "--nproc", "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "starting 2 processes with torchrun" in run.stdout and "step 3/3" in run.stdout
    a = load_state(one.state_path)
    b = load_state(latest_checkpoint(tmp_path / "two" / "out" / "checkpoints"))
    assert a["model"].keys() == b["model"].keys() and b["step"] == 3
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    update = max((a["model"][k] - base[k]).abs().max().item() for k in a["model"])
    ema_diff = max((a["ema"][k] - b["ema"][k]).abs().max().item() for k in a["ema"])
    print(f"ddp: max |1 process - 2 processes| = {diff:.3g} ({diff / update:.2g} of the largest update {update:.3g}), "
          f"EMA {ema_diff:.3g}")
    assert diff <= 1e-3 * update and ema_diff <= 1e-3 * update
    losses_one = [r["loss"] for r in read_log(one.log_path)]
    losses_two = [r["loss"] for r in read_log(tmp_path / "two" / "out" / "loss.jsonl")]
    assert losses_two == pytest.approx(losses_one, rel=1e-5)  # the mean over both processes' samples
    assert (tmp_path / "two" / "out" / "model.safetensors").is_file()  # rank 0 exported the result


def test_cli_print_config_cache_only_and_bad_config(tmp_path, capsys):
    from comfyui_svd_lab.cli import main

    assert main(["train", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["objective"]["p_mean"] == 0.7
    ckpt = micro_files(tmp_path, clips=1)
    config = train_config(tmp_path, ckpt, tmp_path / "clips")
    (tmp_path / "run.json").write_text(json.dumps(config.to_dict()))
    assert main(["train", str(tmp_path / "run.json"), "--cache-only"]) == 0
    assert "latent cache" in capsys.readouterr().out and (tmp_path / "cache" / "index.json").is_file()
    assert main(["train", str(tmp_path / "run.json"), "--set", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
