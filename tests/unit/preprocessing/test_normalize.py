"""Normalisation presets on numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichd.constants import SEED_MEAN, SEED_STD
from ichd.errors import ConfigError
from ichd.preprocessing.normalize import normalize, normalize_preset, preset


def test_presets() -> None:
    assert preset("seed") == (tuple(SEED_MEAN), tuple(SEED_STD))
    x = np.ones((2, 3, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(normalize_preset(x, "half"), 1.0)
    np.testing.assert_allclose(normalize_preset(np.zeros((3, 2, 2), np.float32), "half"), -1.0)
    assert normalize_preset(x, "none") is x
    seed = normalize_preset(x, "seed")
    np.testing.assert_allclose(seed[0, :, 0, 0], (1 - np.array(SEED_MEAN)) / np.array(SEED_STD), rtol=1e-5)


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="seed"):
        preset("sed")


def test_normalize_torch_matches_numpy() -> None:
    x = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    a = normalize(x, SEED_MEAN, SEED_STD)
    b = normalize(torch.from_numpy(x), SEED_MEAN, SEED_STD)
    assert isinstance(b, torch.Tensor)
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-6)
    u8 = normalize(torch.zeros((3, 2, 2), dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3)
    assert u8.dtype == torch.float32


def test_normalize_errors() -> None:
    x = np.zeros((3, 2, 2), np.float32)
    with pytest.raises(ConfigError, match="channels"):
        normalize(x, (0, 0), (1, 1))
    with pytest.raises(ConfigError, match="positive"):
        normalize(x, (0, 0, 0), (1, 0, 1))
    with pytest.raises(ConfigError):
        normalize(x, (0, 0, 0), (1, 1))
