"""Resizing (z, C, H, W) stacks to S x S."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.errors import ConfigError
from ichd.preprocessing.resize import pad_to_square, resize_slices


@pytest.mark.parametrize("mode", ["bilinear", "area"])
def test_resize_shapes_and_constant_preserved(mode: str) -> None:
    x = np.full((3, 2, 64, 64), 0.25, dtype=np.float32)
    out = resize_slices(x, 32, mode=mode)
    assert out.shape == (3, 2, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_resize_upsamples_and_keeps_identity_size() -> None:
    x = np.random.default_rng(0).random((1, 3, 16, 16)).astype(np.float32)
    assert resize_slices(x, 40).shape == (1, 3, 40, 40)
    np.testing.assert_array_equal(resize_slices(x, 16), x)


def test_resize_antialias_averages_checkerboard() -> None:
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)[None, None]
    out = resize_slices(board, 16)
    # an aliasing resize would return pure 0s or 1s; antialiasing averages to ~0.5
    assert abs(float(out.mean()) - 0.5) < 0.02 and float(out.std()) < 0.05


def test_pad_to_square_centres() -> None:
    x = np.ones((2, 4, 8), dtype=np.float32)
    p = pad_to_square(x)
    assert p.shape == (2, 8, 8)
    assert p[:, :2].sum() == 0 and p[:, 2:6].min() == 1 and p[:, 6:].sum() == 0
    assert pad_to_square(np.ones((3, 3))) is not None


def test_resize_non_square_keeps_aspect() -> None:
    x = np.ones((1, 1, 32, 64), dtype=np.float32)
    out = resize_slices(x, 16)
    assert out.shape == (1, 1, 16, 16)
    assert out[0, 0, 0].max() < 0.01 and out[0, 0, 8].min() > 0.99  # padded rows at the top, image in the middle


def test_resize_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        resize_slices(np.zeros((1, 16, 16)), 4)
    with pytest.raises(ConfigError):
        resize_slices(np.zeros((1, 16, 16)), 8, mode="cubic")  # type: ignore[arg-type]
