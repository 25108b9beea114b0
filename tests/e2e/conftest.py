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
