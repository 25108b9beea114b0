"""Resize stacks of multi-channel slices to a square size (antialiased, so downsizing does not alias).

Non-square slices are first zero-padded to a square (centred): after windowing 0 is "below the window", the
value of air, so padding adds background rather than distorting the anatomy's aspect ratio.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ichd.errors import ConfigError

ResizeMode = Literal["bilinear", "area"]


def pad_to_square(x: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Centre-pad the last two axes of ``x`` to a square with ``value`` (returns ``x`` itself when square)."""
    h, w = x.shape[-2:]
    if h == w:
        return x
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    pad = [(0, 0)] * (x.ndim - 2) + [(top, s - h - top), (left, s - w - left)]
    return np.pad(x, pad, mode="constant", constant_values=value)


def resize_slices(x: np.ndarray, size: int, *, mode: ResizeMode = "bilinear", pad_value: float = 0.0,
                  chunk: int = 16) -> np.ndarray:
    """Resize ``x`` of shape ``(..., H, W)`` (e.g. ``(z, C, H, W)``) to ``(..., size, size)``, float32.

    ``mode="bilinear"`` uses antialiased bilinear interpolation (``torch.nn.functional.interpolate`` with
    ``antialias=True``: a triangle filter widened by the scale factor, so downsizing averages instead of
    aliasing); ``"area"`` averages source pixels (best for integer downsizing factors). Slices are processed
    ``chunk`` at a time to bound memory.
    """
    import torch
    import torch.nn.functional as F

    if size < 8:
        raise ConfigError(f"image size must be at least 8 pixels, got {size}")
    if mode not in ("bilinear", "area"):
        raise ConfigError(f"unknown resize mode {mode!r}; choose 'bilinear' or 'area'")
    x = pad_to_square(np.asarray(x, dtype=np.float32), pad_value)
    lead = x.shape[:-2]
    if x.shape[-1] == size:
        return np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(-1, 1, *x.shape[-2:])
    out = np.empty((flat.shape[0], 1, size, size), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, flat.shape[0], chunk):
            t = torch.from_numpy(np.ascontiguousarray(flat[i:i + chunk]))
            if mode == "bilinear":
                r = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            else:
                r = F.interpolate(t, size=(size, size), mode="area")
            out[i:i + chunk] = r.numpy()
    return out.reshape(*lead, size, size)
