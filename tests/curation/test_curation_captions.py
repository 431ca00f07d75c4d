"""Per-clip curation captions: caption sets and sampling, the captioner registry (settings file, CLI
registrations), command captioners and a local image captioner with a tiny model."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_svd_lab.svd_model.curation import captioner_registry as reg
from comfyui_svd_lab.svd_model.curation import captions as cap
from comfyui_svd_lab.svd_model.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------


class _FakeCaptioner:
    def __init__(self, kind: str) -> None:
        self.name, self.kind, self.seen = f"fake-{kind}", kind, []

    def caption(self, frames, *, captions=None) -> str:  # noqa: ANN001
        self.seen.append((len(frames), int(frames[0][0, 0, 0]) if frames else None, dict(captions or {})))
        return f" {self.kind} of {len(frames)} frames "


def test_caption_set_probabilities_and_sampling() -> None:
    full = cap.CaptionSet(image="a", video="b", summary="c")
    assert full.probabilities() == {"image": 0.5, "video": 0.25, "summary": 0.25}
    partial = cap.CaptionSet(image="a", video="b")
    assert partial.probabilities() == pytest.approx({"image": 2 / 3, "video": 1 / 3})
    assert cap.CaptionSet().sample(np.random.default_rng(0)) is None
    rng = np.random.default_rng(1)
    draws = [full.sample(rng) for _ in range(4000)]
    assert draws.count("a") / 4000 == pytest.approx(0.5, abs=0.03)
    assert draws.count("c") / 4000 == pytest.approx(0.25, abs=0.03)
    assert full.to_dict()["sampling_probs"] == cap.SAMPLING_PROBS


def test_caption_clip_feeds_each_kind() -> None:
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(5)]
    image, video, summary = (_FakeCaptioner(k) for k in ("image", "video", "summary"))
    assert all(isinstance(c, cap.Captioner) for c in (image, video, summary))
    result = cap.caption_clip(frames, [summary, image, video])
    assert result == cap.CaptionSet("image of 1 frames", "video of 5 frames", "summary of 5 frames")
    assert image.seen[0][:2] == (1, 2)  # the middle frame only
    assert summary.seen[0][2] == {"image": "image of 1 frames", "video": "video of 5 frames"}
    with pytest.raises(ConfigError, match="two image captioners"):
        cap.caption_clip(frames, [image, _FakeCaptioner("image")])
    with pytest.raises(ConfigError, match="kind"):
        cap.caption_clip(frames, [_FakeCaptioner("audio")])


def test_captioners_are_chosen_by_registered_name_only(tmp_path: Path) -> None:
    assert cap.get_captioner(None) is None and cap.get_captioner("none") is None and cap.get_captioner("") is None
    registry = reg.CaptionerRegistry()
    with pytest.raises(ConfigError, match="unknown captioner 'coca'; registered captioners"):
        cap.get_captioner("coca", registry)
    for spec in ("command:/bin/sh -c id", "command-video:echo", "local-image:/no/such/folder", "/bin/sh", "a b"):
        with pytest.raises(ConfigError, match="registered by the local user outside workflows"):
            cap.get_captioner(spec, registry)
    cap.register_captioner("fake-test", lambda: _FakeCaptioner("video"), kind="video")
    try:
        made = cap.get_captioner("fake-test", registry)
        assert made is not None and made.kind == "video" and "fake-test" in cap.registered_captioners(registry)
        assert cap.registered_captioners(registry, kind="image") == []
    finally:
        reg.unregister_factory("fake-test")
    missing = reg.CaptionerRegistry([reg.CaptionerEntry("gone", "image", argv=("/no/such/program-xyz",))])
    with pytest.raises(ConfigError, match="not found"):
        cap.get_captioner("gone", missing)
    no_model = reg.CaptionerRegistry([reg.CaptionerEntry("blip", "image", model="/no/such/folder")])
    with pytest.raises(ConfigError, match="no local captioning model"):
        cap.get_captioner("blip", no_model)


def test_captioner_settings_file_and_cli_registrations(tmp_path: Path) -> None:
    path = tmp_path / "captioners.json"
    path.write_text(json.dumps({"captioners": [{"name": "blip", "kind": "image", "model": "/m/blip"},
                                               {"name": "vid", "kind": "video", "argv": ["/opt/v", "--x"]}]}))
    registry = reg.load_file(path)
    assert registry.names() == ["blip", "vid"] and registry.names("video") == ["vid"]
    assert registry.get("vid").argv == ("/opt/v", "--x") and str(path) in registry.where()
    assert reg.CaptionerRegistry.from_dict(registry.to_dict()).get("vid") == registry.get("vid")
    for bad, message in [({"captioners": [{"name": "x", "argv": "echo hi"}]}, "argv must be a non-empty list"),
                         ({"captioners": [{"name": "x y", "argv": ["a"]}]}, "must be a short name"),
                         ({"captioners": [{"name": "x", "argv": ["a"], "model": "m"}]}, "exactly one of"),
                         ({"captioners": [{"name": "x", "kind": "audio", "argv": ["a"]}]}, "kind 'audio'"),
                         ({"captioners": [{"name": "x", "argv": ["a"], "timeout": float("nan")}]}, "finite"),
                         ([1, 2], "must be a JSON object")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            reg.load_file(path)
    entry = reg.parse_registration("mine:summary=/opt/cap --fast 'two words'")
    assert (entry.name, entry.kind, entry.argv) == ("mine", "summary", ("/opt/cap", "--fast", "two words"))
    with pytest.raises(ConfigError, match="NAME\\[:KIND\\]=COMMAND"):
        reg.parse_registration("mine")


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_command_captioner(tmp_path: Path) -> None:
    prog = _script(
        tmp_path / "cap.py",
        (
            "req = json.load(sys.stdin)\n"
            "names = sorted(os.listdir(sys.argv[-1]))\n"
            "print(req['kind'], len(req['frames']), names[0], sorted(req['captions']))"
        ),
    )
    frames = [np.full((16, 24, 3), i * 10, np.uint8) for i in range(3)]
    registry = reg.CaptionerRegistry([
        reg.CaptionerEntry("img", "image", argv=(str(prog),)),
        reg.CaptionerEntry("vid", "video", argv=(str(prog), "--flag")),
        reg.CaptionerEntry("sum", "summary", argv=(str(prog),)),
        reg.CaptionerEntry("failing", "image", argv=(str(_script(tmp_path / "fail.py", "print('boom', "
                                                                 "file=sys.stderr); sys.exit(3)")),)),
        reg.CaptionerEntry("silent", "image", argv=(str(_script(tmp_path / "silent.py", "pass")),)),
    ])
    image = cap.get_captioner("img", registry)
    assert image.kind == "image" and image.name == "img" and image.caption(frames[1:2]) == "image 1 frame_00000.png []"
    video = cap.get_captioner("vid", registry)
    summary = cap.get_captioner("sum", registry)
    result = cap.caption_clip(frames, [image, video, summary])
    assert result.video == "video 3 frame_00000.png []"
    assert result.summary == "summary 3 frame_00000.png ['image', 'video']"
    with pytest.raises(cap.CaptionError, match="status 3.*boom"):
        cap.get_captioner("failing", registry).caption(frames)
    with pytest.raises(cap.CaptionError, match="no caption"):
        cap.get_captioner("silent", registry).caption(frames)
    slow = _script(tmp_path / "slow.py", "time.sleep(5)")
    with pytest.raises(cap.CaptionError, match="timeout"):
        cap.CommandCaptioner([str(slow)], timeout=0.5).caption(frames)


def test_local_image_captioner_with_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    words = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "a", "cat", "dog", "on", "the", "grass"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )
    encoder = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    decoder = transformers.GPT2Config(
        vocab_size=len(words),
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = transformers.VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = 1
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    folder = tmp_path / "tiny-captioner"
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    captioner = cap.get_captioner("tiny", reg.CaptionerRegistry([reg.CaptionerEntry("tiny", "image",
                                                                                    model=str(folder))]))
    assert captioner.kind == "image" and captioner.name == "local-image:tiny-captioner"
    text = captioner.caption([np.zeros((40, 60, 3), np.uint8), np.full((40, 60, 3), 200, np.uint8)])
    assert isinstance(text, str) and set(text.split()) <= set(words[4:])
    assert text == captioner.caption([np.zeros((40, 60, 3), np.uint8), np.full((40, 60, 3), 200, np.uint8)])
