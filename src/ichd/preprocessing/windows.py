"""CT display windows: Hounsfield units -> [0, 1] intensities, one channel per window.

A window (level ``L``, width ``W``) maps ``L - W/2`` HU to 0 and ``L + W/2`` HU to 1, linearly, clipping outside.
The seed model stacks three windows (brain 40/80, subdural 80/200, soft tissue 40/380) as the three input
channels (:data:`ichd.constants.SEED_WINDOWS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ichd.constants import SEED_WINDOWS
from ichd.errors import ConfigError

WindowSpec = Mapping[str, Sequence[float]] | Sequence[Sequence[float]]


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Window ``hu`` at ``level``/``width``: float32 in [0, 1] (0 at ``L - W/2`` and below, 1 at ``L + W/2``+)."""
    if not width > 0:
        raise ConfigError(f"window width must be positive, got {width}")
    lo = np.float32(level - width / 2.0)
    x = (np.asarray(hu, dtype=np.float32) - lo) * np.float32(1.0 / width)
    return np.clip(x, 0.0, 1.0, out=x)


def window_list(windows: WindowSpec | None = None) -> list[tuple[float, float]]:
    """The windows as a list of ``(level, width)`` pairs in channel order (a dict keeps its insertion order)."""
    if windows is None:
        windows = SEED_WINDOWS
    pairs = list(windows.values()) if isinstance(windows, Mapping) else list(windows)
    out: list[tuple[float, float]] = []
    for p in pairs:
        if len(p) != 2:
            raise ConfigError(f"a window is (level, width), got {p!r}")
        level, width = float(p[0]), float(p[1])
        if not width > 0:
            raise ConfigError(f"window width must be positive, got {p!r}")
        out.append((level, width))
    if not out:
        raise ConfigError("at least one window is needed")
    return out


def window_channels(hu: np.ndarray, windows: WindowSpec | None = None) -> np.ndarray:
    """Stack one windowed image per window as channels: HU ``(..., H, W)`` -> float32 ``(..., C, H, W)``.

    ``C`` is the number of windows (3 for :data:`~ichd.constants.SEED_WINDOWS`, the default).
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim < 2:
        raise ValueError(f"window_channels needs at least a 2-D image, got shape {hu.shape}")
    return np.stack([apply_window(hu, lv, wd) for lv, wd in window_list(windows)], axis=-3)


def simulate_display_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """The HU an 8-bit display-window export keeps: ``hu`` windowed at ``level``/``width``, rounded to 256 gray
    levels and read back (:func:`ichd.io.images.window_to_hu`), i.e. clipped to ``[L - W/2, L + W/2]`` in steps of
    ``W / 255`` HU. What :func:`ichd.preprocessing.export.write_window_pngs` writes and ``ichd predict --window``
    reads back (without the export's resize), as float32."""
    from ichd.io.images import window_to_hu

    gray = np.rint(apply_window(hu, level, width) * np.float32(255.0))
    return window_to_hu(gray, level, width)
