"""Small fake V1 node classes for the headless workflow runner tests (tests/node_graphs/test_workflow_*.py), so
they run without the pack's nodes (and without ComfyUI); the calls they record, and prompt helpers."""

from __future__ import annotations

import torch

from comfyui_svd_lab.workflow import Problem, runtime
from comfyui_svd_lab.workflow import progress as progress_mod

CALLS: list[str] = []
SEEN: list[dict] = []


class Number:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": -100, "max": 100})}}

    def run(self, value):
        CALLS.append("Number")
        return (value,)


class Add:
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("sum",)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 0, "min": 1, "max": 50}), "b": ("INT", {"default": 0})},
                "optional": {"scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})}}

    def add(self, a, b, scale=1.0):
        CALLS.append("Add")
        return (int((a + b) * scale),)


class Sampler:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**32}),
                             "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                             "sampler": (["euler", "heun"],),
                             "model": ("INT", {"forceInput": True})},
                "optional": {"strength": ("INT", {"default": 3, "control_after_generate": True}),
                             "flag": ("BOOLEAN", {"default": False}),
                             "tags": ("STRING", {"default": "x"})}}

    def sample(self, **kwargs):
        CALLS.append("Sampler")
        return ({"samples": kwargs},)


class Latent:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ({"samples": None},)


class Blend:  # a union input type
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("IMAGE,LATENT",)}}

    def run(self, x):
        return (x,)


class Show:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}, "optional": {"label": ("STRING", {"default": ""})},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def show(self, value, label="", unique_id=None, prompt=None, extra_pnginfo=None):
        CALLS.append("Show")
        SEEN.append({"unique_id": unique_id, "prompt": prompt, "extra_pnginfo": extra_pnginfo,
                     "inference": torch.is_inference_mode_enabled(), "out_dir": runtime.output_directory()})
        return {"ui": {"text": [f"{label}{value}"]}, "result": ()}


class Sized:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 64, "max": 1024}),
                             "height": ("INT", {"default": 64, "min": 64, "max": 1024})}}

    @classmethod
    def VALIDATE_INPUTS(cls, width):
        return True if width % 64 == 0 else f"width {width} is not a multiple of 64"

    def run(self, width, height):
        return ({"samples": (width, height)},)


class Boom:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    def run(self, value):
        raise ValueError("frames must be a multiple of 8")


class Steps:  # reports its own progress like nodes do through the bridge
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3, "min": 1})}}

    def run(self, steps):
        for i in range(1, steps + 1):
            progress_mod.report(i, steps)
        return (steps,)


class Spread:
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ([1, 2, 3],)


class Save:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "prefix": ("STRING", {"default": "out"})}}

    def save(self, value, prefix):
        folder = runtime.output_directory() / "run"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{prefix}.txt").write_text(str(value))
        return {"ui": {"files": [{"filename": f"{prefix}.txt", "subfolder": "run", "type": "output"}]}}


class Pick:  # an upload combo and a combo with control_after_generate (the frontend adds a filter text too)
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (["a.png", "b.png"], {"image_upload": True}),
                             "mode": ("COMBO", {"options": ["x", "y"], "control_after_generate": True}),
                             "count": ("INT", {"default": 1})}}

    def run(self, image, mode, count):
        return (f"{image}{mode}{count}",)


class Strength:  # VALIDATE_INPUTS takes the FLOAT (so ComfyUI skips its range check) and the required text
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": ""}),
                             "strength": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 5.0})}}

    @classmethod
    def VALIDATE_INPUTS(cls, name, strength):
        if strength is not None and not -5 <= strength <= 5:
            return f"strength {strength} is outside -5..5"
        return True

    def run(self, name, strength):
        return (strength,)


REGISTRY = {c.__name__: c for c in (Number, Add, Sampler, Latent, Blend, Show, Sized, Boom, Steps, Spread, Save,
                                    Pick, Strength)}


def reset_calls() -> None:
    """Forget the calls the fake nodes recorded (each test module runs this before every test)."""
    CALLS.clear()
    SEEN.clear()


def n(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def base_prompt() -> dict:
    """1 Number -> 3 Add <- 2 Number; 4 Show(3); 9 Number unused."""
    return {"1": n("Number", value=2), "2": n("Number", value=5), "3": n("Add", a=["1", 0], b=["2", 0]),
            "4": n("Show", value=["3", 0]), "9": n("Number", value=7)}


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]
