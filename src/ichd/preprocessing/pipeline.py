"""One function from a HU :class:`~ichd.types.CTSeries` to cached model input: windows -> square -> resize."""

from __future__ import annotations

import numpy as np

from ichd.preprocessing.config import PreprocessConfig
from ichd.preprocessing.resize import resize_slices
from ichd.preprocessing.windows import window_channels
from ichd.types import CTSeries


def to_cache_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """[0, 1] float -> ``uint8`` 0..255 (rounded) or ``float16`` 0..1."""
    x = np.clip(x, 0.0, 1.0)
    if dtype == "uint8":
        return np.rint(x * 255.0).astype(np.uint8)
    return x.astype(np.float16)


def from_cache_dtype(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_cache_dtype`: cached array -> float32 in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return x.astype(np.float32)


def preprocess_hu(hu: np.ndarray, cfg: PreprocessConfig, *, chunk: int = 8) -> np.ndarray:
    """HU ``(z, H, W)`` -> ``(z, C, S, S)`` in ``cfg.cache_dtype`` (not normalised), ``chunk`` slices at a time."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, H, W) volume, got shape {hu.shape}")
    s = cfg.image_size
    dtype = np.uint8 if cfg.cache_dtype == "uint8" else np.float16
    out = np.empty((hu.shape[0], cfg.n_channels, s, s), dtype=dtype)
    for i in range(0, hu.shape[0], chunk):
        x = window_channels(hu[i:i + chunk], cfg.windows)
        x = resize_slices(x, s, mode=cfg.resize_mode)
        out[i:i + chunk] = to_cache_dtype(x, cfg.cache_dtype)
    return out


def preprocess_series(series: CTSeries, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """The series' slices as ``(z, C, S, S)`` windowed images: ``uint8`` 0..255 or ``float16`` 0..1.

    Windows are applied to the HU values (one channel per window in ``cfg.windows``), non-square slices are
    padded to a square with 0 (air), and each slice is resized to ``cfg.image_size`` with antialiasing. The result
    is **not** normalised (see :mod:`ichd.preprocessing.normalize`).
    """
    return preprocess_hu(series.hu, cfg or PreprocessConfig())
