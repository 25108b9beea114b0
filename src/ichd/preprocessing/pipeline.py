"""One function from a HU :class:`~ichd.types.CTSeries` to cached model input: [crop to the head ->] [reduce to a
display window ->] windows -> square -> resize."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ichd.constants import AIR_HU
from ichd.preprocessing.config import PreprocessConfig
from ichd.preprocessing.head_mask import CropBox
from ichd.preprocessing.resize import resize_slices
from ichd.preprocessing.windows import simulate_display_window, window_channels
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


def input_crop_box(hu: np.ndarray, cfg: PreprocessConfig,
                   pixel_spacing: Sequence[float] | None = None) -> CropBox | None:
    """The crop of the model input for the volume ``hu`` ``(z, H, W)``: None unless ``cfg.crop == "head"``, then
    the square around the head on all its slices (None as well when no slice has a head: the whole slice)."""
    if cfg.crop != "head":
        return None
    from ichd.preprocessing.head_mask import head_crop_box, head_mask

    return head_crop_box(head_mask(np.asarray(hu), pixel_spacing))


def preprocess_hu(hu: np.ndarray, cfg: PreprocessConfig, *, chunk: int = 8,
                  pixel_spacing: Sequence[float] | None = None, crop_box: CropBox | None = None) -> np.ndarray:
    """HU ``(z, H, W)`` -> ``(z, C, S, S)`` in ``cfg.cache_dtype`` (not normalised), ``chunk`` slices at a time.

    With ``cfg.crop == "head"`` the slices are first cut to ``crop_box`` (computed from ``hu`` itself by
    :func:`input_crop_box` when not given; callers that preprocess a series in chunks pass the box of the whole
    series, as the cache does, so chunks and cache agree). With ``cfg.simulate_window`` the HU is then reduced to
    that 8-bit display window (:func:`~ichd.preprocessing.windows.simulate_display_window`) before the windows.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, H, W) volume, got shape {hu.shape}")
    if cfg.crop == "head" and crop_box is None:
        crop_box = input_crop_box(hu, cfg, pixel_spacing)
    s = cfg.image_size
    dtype = np.uint8 if cfg.cache_dtype == "uint8" else np.float16
    out = np.empty((hu.shape[0], cfg.n_channels, s, s), dtype=dtype)
    for i in range(0, hu.shape[0], chunk):
        part = hu[i:i + chunk]
        if cfg.crop == "head" and crop_box is not None:
            from ichd.preprocessing.head_mask import crop_to_box

            part = crop_to_box(np.asarray(part, dtype=np.float32), crop_box, AIR_HU)
        if cfg.simulate_window is not None:
            part = simulate_display_window(part, *cfg.simulate_window)
        x = window_channels(part, cfg.windows)
        x = resize_slices(x, s, mode=cfg.resize_mode)
        out[i:i + chunk] = to_cache_dtype(x, cfg.cache_dtype)
    return out


def preprocess_series(series: CTSeries, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """The series' slices as ``(z, C, S, S)`` windowed images: ``uint8`` 0..255 or ``float16`` 0..1.

    With ``cfg.crop == "head"`` every slice is first cut to the square around the head of the whole series.
    Windows are applied to the HU values (one channel per window in ``cfg.windows``), non-square slices are
    padded to a square with 0 (air), and each slice is resized to ``cfg.image_size`` with antialiasing. The result
    is **not** normalised (see :mod:`ichd.preprocessing.normalize`).
    """
    return preprocess_hu(series.hu, cfg or PreprocessConfig(), pixel_spacing=series.spacing_mm[1:])
