"""Fixtures for the end-to-end CLI tests of ``ichd predict`` (the small model bundle ``test_bundle`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Torch on one CPU thread for these tests (see tests/model_factories.single_thread_torch)."""
    from model_factories import single_thread_torch

    yield from single_thread_torch()
