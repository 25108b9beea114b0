"""Export CT series as windowed 8-bit images: the form in which many public head-CT sets ship.

Used to measure what a single-window PNG/JPG input costs a model (benchmarks/windowed_png.py): the export
keeps only the window's HU range, and :func:`ichd.io.images.read_image_folder` reads it back saturated outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichd.constants import AIR_HU
from ichd.errors import InputError
from ichd.io.images import IMAGE_SUFFIXES, parse_window
from ichd.preprocessing.resize import pad_to_square
from ichd.preprocessing.windows import apply_window
from ichd.types import CTSeries


def write_window_pngs(series: CTSeries, folder: str | Path, window: Sequence[float] | str, *,
                      size: int | None = None) -> list[Path]:
    """Export ``series`` as 8-bit windowed PNG slices, the way many public sets ship head CT.

    Each slice is windowed at ``window`` (``(level, width)`` or ``"L,W"``; gray ``g = 255 (HU - L + W/2) / W``,
    clipped: the inverse of :func:`ichd.io.images.window_to_hu`), padded to a square with air and, with
    ``size``, resized to ``size`` x ``size`` (Pillow bilinear, antialiased). Files are ``folder/<index:04d>.png``
    in slice order (inferior -> superior), so :func:`ichd.io.images.read_image_folder` (``ichd predict
    --window``) reads them back in the same order. Refuses to write into a folder that already holds images
    (never overwrites).
    """
    from PIL import Image

    level, width = parse_window(window)
    folder = Path(folder)
    if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        raise InputError(f"{str(folder)!r} already holds images", hint="export into a new or empty folder")
    if size is not None and size < 16:
        raise InputError(f"PNG size must be at least 16 px, got {size}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(series.n_slices):
        hu = pad_to_square(np.asarray(series.hu[i], dtype=np.float32), AIR_HU)
        img = Image.fromarray(np.round(apply_window(hu, level, width) * 255.0).astype(np.uint8))
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        path = folder / f"{i:04d}.png"
        img.save(path)
        paths.append(path)
    return paths
