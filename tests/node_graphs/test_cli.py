"""`svd-lab` commands, run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from comfyui_svd_lab.cli import main
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.errors import ConfigError


def test_make_tiny_checkpoint_and_info(tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    assert main(["make-tiny-checkpoint", str(path), "--family", "sv3d_p"]) == 0
    assert "RANDOM" in capsys.readouterr().out
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "family: sv3d_p" in out and "tiny_random" in out


def test_image_to_video_on_tiny_model_writes_frames(tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.new("RGB", (100, 80), (200, 40, 40)).save(image)
    out_dir = tmp_path / "out"
    argv = ["image-to-video", "--image", str(image), "--output-dir", str(out_dir), "--frames", "3", "--steps", "2",
            "--width", "64", "--height", "48", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tiny RANDOM-weight model" in printed
    frames = sorted(out_dir.glob("frame_*.png"))
    assert len(frames) == 3 and Image.open(frames[0]).size == (64, 48)
    preview = Image.open(out_dir / "video.webp")
    assert preview.n_frames == 3


def test_image_to_video_in_low_vram_and_with_fp8_weights(tmp_path, capsys):
    argv = ["image-to-video", "--frames", "3", "--steps", "2", "--width", "64", "--height", "48", "--device", "cpu"]
    assert main([*argv, "--output-dir", str(tmp_path / "normal")]) == 0
    assert main([*argv, "--output-dir", str(tmp_path / "low"), "--memory", "low_vram"]) == 0
    assert main([*argv, "--output-dir", str(tmp_path / "fp8"), "--weight-storage", "fp8_e4m3fn"]) == 0
    capsys.readouterr()
    frames = {name: [np.asarray(Image.open(p), np.float32) for p in sorted((tmp_path / name).glob("frame_*.png"))]
              for name in ("normal", "low", "fp8")}
    assert all(len(f) == 3 for f in frames.values())
    low = max(np.abs(a - b).max() for a, b in zip(frames["low"], frames["normal"], strict=True))
    fp8 = np.mean([np.abs(a - b).mean() for a, b in zip(frames["fp8"], frames["normal"], strict=True)])
    assert low > 0  # the same sampling; the decode at chunk 1 differs (much, with a random temporal decoder)
    assert 0 < fp8 < 25  # of 255 levels (measured 11.6): fp8 weights move the random model's frames a little
    with pytest.raises(SystemExit) as exit_code:
        main([*argv, "--output-dir", str(tmp_path / "x"), "--weight-storage", "fp4"])
    assert exit_code.value.code == 2 and "invalid choice: 'fp4'" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"\x80\x04not a safetensors file")
    assert main(["info", str(bad)]) == 2
    assert "pickle" in capsys.readouterr().err
    tiny = tmp_path / "t.safetensors"
    main(["make-tiny-checkpoint", str(tiny)])
    argv = ["image-to-video", "--checkpoint", str(tiny), "--output-dir", str(tmp_path / "o"), "--width", "50"]
    assert main(argv) == 2
    assert "multiples of 8, got 50x576" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input: one line, exit 2, never a traceback


def _config_text(lr: str = "1e-4") -> str:
    return json.dumps({"steps": 3, "optim": {"lr": "@"}}).replace('"@"', lr)


def _write(name: str, data: bytes):
    def write(folder):
        (folder / name).write_bytes(data)
        return folder / name
    return write


def _mkdir(folder):
    (folder / "conf.json").mkdir()
    return folder / "conf.json"


def _mkfifo(folder):
    os.mkfifo(folder / "conf.json")
    return folder / "conf.json"


CONFIG_CASES = [
    ("nan_literal", _write("c.json", _config_text("NaN").encode()), (), "optim.lr must be a finite number, got nan"),
    ("utf8_bom", _write("c.json", b"\xef\xbb\xbf" + _config_text("Infinity").encode()), (),
     "optim.lr must be a finite number, got inf"),
    ("utf16_bom", _write("c.json", b"\xff\xfe" + _config_text("-Infinity").encode("utf-16-le")), (),
     "optim.lr must be a finite number, got -inf"),
    ("utf16_no_bom", _write("c.json", _config_text("-1").encode("utf-16-be")), (), "optim.lr must be > 0, got -1.0"),
    ("toml_nan", _write("c.toml", b"steps = 3\n[optim]\nlr = nan\n"), (), "optim.lr must be a finite number, got nan"),
    ("toml_deep", _write("c.toml", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n"), (),
     "nests objects/arrays more than 64 levels deep"),
    ("toml_invalid", _write("c.toml", b"steps = = 3\n"), (), "is not valid TOML: "),
    ("json_deep", _write("c.json", b"[" * 100_000), (), "nests objects/arrays more than 64 levels deep"),
    ("latin1", _write("c.json", '{"output_dir": "d\xe9j\xe0"}'.encode("latin-1")), (), "is not UTF-8 text (byte 0xe9"),
    ("top_level_list", _write("c.json", b"[1]"), (), "must hold a JSON object at the top level, got list"),
    ("huge_string_key", _write("c.json", json.dumps({"k" * 100_000: 1}).encode()), (),
     "unknown config key 'kkkk"),
    ("a_directory", _mkdir, (), "is a folder, not a file"),
    ("a_fifo", _mkfifo, (), "is not a regular file: it is a named pipe (FIFO)"),
    ("missing", lambda folder: folder / "none.json", (), "training config not found: "),
    ("set_nan", _write("c.json", _config_text().encode()), ("optim.lr=NaN",), "optim.lr must be a finite number"),
    ("set_text_for_float", _write("c.json", _config_text().encode()), ("optim.lr=nan",),
     "optim.lr = 'nan' has the wrong type (expected float)"),
    ("set_negative_eps", _write("c.json", _config_text().encode()), ("optim.eps=-1e-8",), "optim.eps must be > 0"),
    ("set_huge_float", _write("c.json", _config_text().encode()), ("optim.lr=1e999",),
     "optim.lr must be a finite number, got inf"),
    ("set_deep_value", _write("c.json", _config_text().encode()), ("lora.patterns=" + "[" * 10_000,),
     "lora.patterns must be a list, got '[[[["),
]


@pytest.mark.parametrize(("writer", "sets", "expect"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_train_config_problems_are_one_clear_error(tmp_path, capsys, writer, sets, expect):
    path = writer(tmp_path)
    argv = ["train", str(path)]
    for text in sets:
        argv += ["--set", text]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and len(err) < 2000, err[:500]
    assert err.startswith("svd-lab: error: ") and err.count("\n") == 1


def test_user_file_errors_and_debug(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"svd-lab: error: workflow {tmp_path} is a folder, not a file\n"
    os.mkfifo(tmp_path / "img.png")
    assert main(["image-to-video", "--image", str(tmp_path / "img.png"), "--output-dir", str(tmp_path / "o"),
                 "--frames", "2", "--steps", "1", "--width", "64", "--height", "64", "--device", "cpu"]) == 2
    assert "image " + str(tmp_path / "img.png") + " is not a regular file" in capsys.readouterr().err
    assert main(["image-to-video", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "checkpoint not found: " in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is a folder"):  # --debug: the error with its traceback
        main(["--debug", "train", str(tmp_path)])


@pytest.fixture
def bridge_reset():
    yield bridge
    bridge.reset()


def test_run_folder_flags_and_path_opt_in(tmp_path, capsys, bridge_reset):
    outside = tmp_path / "elsewhere" / "frame.png"
    outside.parent.mkdir()
    Image.new("RGB", (64, 64)).save(outside)
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({  # a bad quality keeps it from running; only the path check differs
        "1": {"class_type": "SVDLab_LoadImage", "inputs": {"image": "", "path": str(outside)}},
        "2": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["1", 0], "fps": 8.0, "format": "webp",
                                                          "quality": -1, "filename_prefix": "x"}}}))
    folders = ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
               "--models-dir", str(tmp_path / "models")]
    assert main(["run", str(workflow), *folders]) == 2
    err = capsys.readouterr().err
    assert "node 2 (SVDLab_SaveVideo) input 'quality': value -1 is below the minimum 0" in err
    assert "node 1 (SVDLab_LoadImage)" in err and str(outside) not in err  # refused, without echoing the path
    assert bridge.folder("input") == tmp_path / "in" and not bridge.any_path_allowed()
    assert main(["run", str(workflow), *folders, "--allow-any-path"]) == 2
    err = capsys.readouterr().err
    assert bridge.any_path_allowed() and "1 problem(s)" in err and "node 1" not in err
    assert main(["run", str(workflow), *folders]) == 2  # the opt-in does not outlive its run
    assert not bridge.any_path_allowed() and "node 1 (SVDLab_LoadImage)" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["cli", "cli.train"])
def test_closed_stdout_ends_quietly(module):
    code = ["-m", f"comfyui_svd_lab.{module}"] + (["train"] if module == "cli" else []) + ["--print-config"]
    proc = subprocess.Popen([sys.executable, *code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdout.close()  # like `| head -1` that has already exited: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def test_image_to_video_with_a_few_step_unet_file(tmp_path, capsys, caplog):
    """--unet swaps in a UNet-only file; a few-step one ("lcm" in the name) brings its recommended settings: 4 lcm
    steps on the animatelcm schedule (steps, sampler and schedule still overridable)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = tmp_path / "svd_xt.safetensors"
    assert main(["make-tiny-checkpoint", str(ckpt)]) == 0
    with safe_open(ckpt, "pt") as f:
        unet = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
    save_file(unet, tmp_path / "tiny-AnimateLCM-SVD-xt.safetensors")
    argv = ["image-to-video", "--checkpoint", str(ckpt), "--unet", str(tmp_path / "tiny-AnimateLCM-SVD-xt.safetensors"),
            "--frames", "3", "--width", "64", "--height", "48", "--device", "cpu"]
    with caplog.at_level("INFO"):
        assert main([*argv, "--output-dir", str(tmp_path / "o")]) == 0
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(steps) == 4 and steps[-1].startswith("step 4/4") and "animatelcm_svd_xt" in caplog.text
    assert len(sorted((tmp_path / "o").glob("frame_*.png"))) == 3
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main([*argv, "--output-dir", str(tmp_path / "p"), "--steps", "2", "--sampler", "euler",
                     "--schedule", "ays"]) == 0
    assert [r.getMessage()[:8] for r in caplog.records if r.getMessage().startswith("step ")] == ["step 1/2",
                                                                                                "step 2/2"]
    capsys.readouterr()
    assert main([*argv, "--output-dir", str(tmp_path / "q"), "--sampler", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
