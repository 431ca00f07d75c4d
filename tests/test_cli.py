"""`svd-lab` commands, run in-process."""

from __future__ import annotations

from PIL import Image

from comfyui_svd_lab.cli import main


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
