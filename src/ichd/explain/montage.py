"""Scan montages: a grid of the flagged slices of one scan, each with its heat map and probabilities.

One tile per flagged slice, in slice order (inferior -> superior), labelled with the slice index and the
flagged classes with their probabilities; the map drawn on a tile is named in its label. A shared colour bar
explains the heat scale. Tiles beyond ``max_tiles`` are left out and the title says how many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ichd.errors import InputError
from ichd.explain.overlay import (
    BRAIN_WINDOW,
    DEFAULT_ALPHA,
    DEFAULT_CMAP,
    DEFAULT_MIN_VALUE,
    add_colorbar,
    draw_overlay,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Most tiles drawn in one montage (a 40-slice scan with every slice flagged still fits).
MAX_TILES = 48


@dataclass
class MontageTile:
    """One tile: a 2-D slice (HU, or a display image with ``window=None``), its map (or None) and a label."""

    image: np.ndarray
    cam: np.ndarray | None
    label: str
    pixel_spacing: tuple[float, float] | None = None  # mm, for the head mask of the overlay


def montage_figure(tiles: list[MontageTile], *, title: str, ncols: int | None = None,
                   window: tuple[float, float] | None = BRAIN_WINDOW, cmap: str = DEFAULT_CMAP,
                   alpha: float = DEFAULT_ALPHA, min_value: float = DEFAULT_MIN_VALUE,
                   tile_inches: float = 2.4, max_tiles: int = MAX_TILES, dpi: int = 100,
                   map_name: str = "Grad-CAM") -> Figure:
    """A grid of ``tiles`` with a shared colour bar; ``ncols`` defaults to a near-square layout (at most 6)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not tiles:
        raise InputError("a montage needs at least one tile")
    dropped = max(0, len(tiles) - max_tiles)
    tiles = tiles[:max_tiles]
    n = len(tiles)
    ncols = ncols or min(6, max(1, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(tile_inches * ncols + 1.0, tile_inches * nrows + 0.7), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, tile in zip(axes, tiles, strict=False):
        draw_overlay(ax, tile.image, tile.cam, window=window, cmap=cmap, alpha=alpha, min_value=min_value,
                     pixel_spacing=tile.pixel_spacing)
        ax.set_title(tile.label, fontsize=7)
    for ax in axes[n:]:
        ax.set_axis_off()
    add_colorbar(fig, list(axes), cmap=cmap, min_value=min_value, map_name=map_name)
    if dropped:
        title += f" (first {max_tiles} of {max_tiles + dropped} flagged slices shown)"
    fig.suptitle(title, fontsize=10)
    return fig
