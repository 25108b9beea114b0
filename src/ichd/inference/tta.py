"""Test-time augmentation (TTA): run the CNN on a few transformed copies of each slice and average.

Danilov, Kotik et al. used flips and shifts at test time; these views match the training augmentation of the
slice CNN (horizontal flip and small shifts, Burduja et al. 2020 section 3.1), so each view is an image the model
has learnt to read. Views act on preprocessed windowed slices ``(n, C, S, S)`` (uint8 0..255 or float in [0, 1])
and fill uncovered pixels with 0, the value of air after windowing. Averaging happens on probabilities and on
embeddings (the sequence stage reads the averaged embedding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Shift of the shifted views as a fraction of the image side (8 px at 256 px).
SHIFT_FRACTION = 1.0 / 32.0


def shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift the last two axes of ``x`` by ``(dy, dx)`` pixels, filling with 0 (no wrap-around)."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    ys_dst = slice(max(dy, 0), h + min(dy, 0))
    ys_src = slice(max(-dy, 0), h - max(dy, 0))
    xs_dst = slice(max(dx, 0), w + min(dx, 0))
    xs_src = slice(max(-dx, 0), w - max(dx, 0))
    out[..., ys_dst, xs_dst] = x[..., ys_src, xs_src]
    return out


def hflip(x: np.ndarray) -> np.ndarray:
    """Mirror left-right (the last axis)."""
    return np.ascontiguousarray(x[..., ::-1])


@dataclass(frozen=True)
class TtaView:
    """One named view: a function from a batch of slices to the transformed batch."""

    name: str
    apply: Callable[[np.ndarray], np.ndarray]


def tta_views(image_size: int, *, enabled: bool = True) -> list[TtaView]:
    """The views for images of side ``image_size``: just the identity when disabled, else identity, horizontal
    flip, and two diagonal shifts of ``image_size * SHIFT_FRACTION`` pixels (at least 1)."""
    identity = TtaView("identity", lambda x: x)
    if not enabled:
        return [identity]
    d = max(1, round(image_size * SHIFT_FRACTION))
    return [
        identity,
        TtaView("hflip", hflip),
        TtaView(f"shift(+{d},+{d})", lambda x: shift(x, d, d)),
        TtaView(f"shift(-{d},-{d})", lambda x: shift(x, -d, -d)),
    ]
