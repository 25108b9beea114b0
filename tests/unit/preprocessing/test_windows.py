"""Window maths: values at the edges, channel stacking, bad windows."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.constants import SEED_WINDOWS
from ichd.errors import ConfigError
from ichd.preprocessing.windows import apply_window, window_channels, window_list


def test_apply_window_edges_and_clipping() -> None:
    hu = np.array([-1000.0, 0.0, 20.0, 40.0, 60.0, 80.0, 3000.0])
    out = apply_window(hu, 40, 80)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    assert out.dtype == np.float32


def test_apply_window_rejects_non_positive_width() -> None:
    with pytest.raises(ConfigError):
        apply_window(np.zeros(3), 40, 0)


def test_window_channels_shape_and_order() -> None:
    hu = np.full((2, 5, 4), 80.0, dtype=np.float32)
    out = window_channels(hu)
    assert out.shape == (2, 3, 5, 4)
    # 80 HU: brain (40/80) -> 1.0, subdural (80/200) -> 0.5, soft tissue (40/380) -> (80+150)/380
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 0.5, 230 / 380], atol=1e-6)


def test_window_channels_2d_and_custom_windows() -> None:
    out = window_channels(np.zeros((3, 3)), [(0, 100), (50, 100)])
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[:, 0, 0], [0.5, 0.0])


def test_window_list() -> None:
    assert window_list(None) == list(SEED_WINDOWS.values())
    with pytest.raises(ConfigError):
        window_list([(1, 2, 3)])
    with pytest.raises(ConfigError):
        window_list([])
    with pytest.raises(ValueError):
        window_channels(np.zeros(3))


def test_simulate_display_window_is_what_a_png_export_keeps():
    from ichd.io.images import window_to_hu
    from ichd.preprocessing.windows import apply_window, simulate_display_window

    hu = np.array([[-1000.0, -5.0, 0.0, 17.3, 40.0, 79.9, 80.0, 300.0, 1500.0]], dtype=np.float32)
    out = simulate_display_window(hu, 40, 80)
    assert out.dtype == np.float32
    assert out[0, 0] == out[0, 1] == out[0, 2] == 0.0  # below the window: black = L - W/2
    assert out[0, -1] == out[0, -2] == out[0, -3] == 80.0  # above: white = L + W/2
    assert np.all(np.abs(out[0, 3:6] - hu[0, 3:6]) <= 80 / 255 / 2 + 1e-4)  # inside: within half a gray step
    # the same as an 8-bit image written and read back
    gray = np.rint(apply_window(hu, 40, 80) * 255).astype(np.uint8)
    np.testing.assert_allclose(out, window_to_hu(gray, 40, 80))
