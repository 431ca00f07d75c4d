"""Shared fixtures: the golden reference folder (``--golden-dir``) and tolerance helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_GOLDEN = SHARED / "reference" / "golden_tiny"
REFERENCE = SHARED / "reference"
#: Node input overrides that run the example workflows on a tiny model at a size and step count that keeps the
#: suite fast (tests/test_example_workflows.py, tests/test_comfyui_server.py).
SMALL_RUN = {
    "SVDLab_ImageToVideoConditioning": {"width": 64, "height": 48, "frames": 3},
    "SVDLab_Sampler": {"steps": 2},
    "SVDLab_LoadVideo": {"frame_cap": 3, "width": 64, "height": 48},
    "SVDLab_Decode": {"chunk_size": 2, "overlap": 1},
    "SVDLab_OrbitCameras": {"frames": 3},
    "SVDLab_PrepareObjectImage": {"size": 64},
    "SVDLab_OrbitConditioning": {"size": 64},
    "SVDLab_ExtendVideo": {"frames": 3, "steps": 2},
    "SVDLab_KeyframeInterpolate": {"width": 64, "height": 48, "frames": 3, "steps": 2, "chunk_size": 2, "overlap": 1},
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--golden-dir",
        default=str(DEFAULT_GOLDEN),
        help="folder in the golden_tiny format (checkpoint.safetensors, vectors.safetensors, config.json)",
    )


@pytest.fixture(scope="session")
def golden_dir(request: pytest.FixtureRequest) -> Path:
    path = Path(request.config.getoption("--golden-dir"))
    if not (path / "checkpoint.safetensors").is_file() or not (path / "vectors.safetensors").is_file():
        pytest.skip(f"golden reference folder not found at {path} (it lives in ../shared/reference/golden_tiny)")
    return path


@pytest.fixture(scope="session")
def golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(golden_dir / "vectors.safetensors"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference key lists not found at {REFERENCE} (they live in ../shared/reference)")
    return REFERENCE


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max absolute error, max absolute error relative to max|expected|)."""
    diff = (actual.detach().double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    return diff, diff / max(scale, 1e-30)


GOLDEN_ERRORS: dict[str, tuple[float, float]] = {}


def assert_golden(actual: torch.Tensor, expected: torch.Tensor, name: str, rel: float = 1e-4) -> None:
    """|a - b| <= rel * max|expected| + 1e-5 elementwise (the golden README's suggested bound)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff, rel_err = max_error(actual, expected)
    GOLDEN_ERRORS[name] = max(GOLDEN_ERRORS.get(name, (0.0, 0.0)), (diff, rel_err))
    bound = rel * expected.double().abs().max().item() + 1e-5
    assert diff <= bound, f"{name}: max abs error {diff:.3g} (relative {rel_err:.3g}) exceeds {bound:.3g}"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """List the measured golden errors (max abs, relative to max|ref|) after a run that checked any."""
    if GOLDEN_ERRORS:
        terminalreporter.write_sep("-", "golden max errors (abs, relative to max|ref|)")
        worst = max(rel for _, rel in GOLDEN_ERRORS.values())
        for name, (diff, rel) in sorted(GOLDEN_ERRORS.items()):
            terminalreporter.write_line(f"{name:36s} {diff:10.3g} {rel:10.3g}")
        terminalreporter.write_line(f"worst relative error: {worst:.3g} over {len(GOLDEN_ERRORS)} tensors")


@pytest.fixture
def folders(models, tmp_path):
    """Headless folders for one node test: the module's `models` fixture as the model folder; output, temp and
    an empty input folder under tmp_path (yielded)."""
    from comfyui_svd_lab.nodes import bridge

    bridge.configure(models_dirs=[models], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp",
                     input_dir=tmp_path / "in")
    (tmp_path / "in").mkdir()
    yield tmp_path
    bridge.reset()
