"""Fixtures for the end-to-end CLI tests of ``ichd predict``: a small untrained model bundle."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN-only bundle of an untrained EfficientNet-Lite0 at 64 px (see tests/model_factories.py)."""
    from model_factories import make_bundle, make_cnn_checkpoint

    root = tmp_path_factory.mktemp("e2e-model")
    return make_bundle(root / "bundle", make_cnn_checkpoint(root / "cnn.pt"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Torch on one CPU thread for these tests (see tests/model_factories.single_thread_torch)."""
    from model_factories import single_thread_torch

    yield from single_thread_torch()
