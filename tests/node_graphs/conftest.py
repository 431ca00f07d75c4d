"""Fixtures shared by the node tests."""

from __future__ import annotations

import pytest

from comfyui_svd_lab.nodes import bridge


@pytest.fixture
def folders(models, tmp_path):
    """Headless folders for one test: the module's `models` fixture as the model folder; output, temp and an empty
    input folder under tmp_path (yielded)."""
    bridge.configure(models_dirs=[models], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp",
                     input_dir=tmp_path / "in")
    (tmp_path / "in").mkdir()
    yield tmp_path
    bridge.reset()
