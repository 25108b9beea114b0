"""Shared pytest fixtures.

``data_root`` is the shared data folder (``$ICHD_DATA``, default ``../shared/data``). Integration tests
that need it are skipped when it is missing, except in CI (``CI=true``), where a missing folder fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def data_root() -> Path:
    from ichd.paths import data_dir

    path = data_dir(must_exist=False)
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"ICHD_DATA folder {path} is missing in CI")
        pytest.skip(f"shared data folder {path} not found (set ICHD_DATA)")
    return path


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN-only bundle of an untrained EfficientNet-Lite0 at 64 px (see tests/model_factories.py), for tests
    that run ``ichd predict`` end to end without the real model."""
    from model_factories import make_bundle, make_cnn_checkpoint

    root = tmp_path_factory.mktemp("test-model")
    return make_bundle(root / "bundle", make_cnn_checkpoint(root / "cnn.pt"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
