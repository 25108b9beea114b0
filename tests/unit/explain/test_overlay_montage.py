"""Overlays (RGB array and labelled figure), map resizing, montages, atomic PNG writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ichd.errors import InputError
from ichd.explain.montage import MontageTile, montage_figure
from ichd.explain.overlay import (
    class_title,
    display_image,
    figure_png_bytes,
    overlay,
    overlay_figure,
    resize_map,
    save_figure,
)
from ichd.explain.pipeline import map_to_image


def _slice_and_map(h: int = 40, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    hu = np.full((h, w), 40.0, np.float32)  # brain-window grey 0.5
    cam = np.zeros((h, w), np.float32)
    cam[5:15, 5:15] = 1.0
    cam[20:25, 20:25] = 0.1  # below the default min_value: not drawn
    return hu, cam


def test_overlay_colours_only_significant_pixels() -> None:
    hu, cam = _slice_and_map()
    rgb = overlay(hu, cam)
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    grey = np.array([128, 128, 128])
    np.testing.assert_allclose(rgb[30, 30], grey, atol=1)  # no map: plain brain window
    np.testing.assert_allclose(rgb[22, 22], grey, atol=1)  # weak map: not drawn
    assert np.abs(rgb[10, 10].astype(int) - grey).max() > 40  # strong map: coloured
    assert rgb[10, 10, 0] > rgb[10, 10, 2]  # the plasma map's top end is yellow-ish


def test_overlay_resizes_the_map_to_the_image_and_accepts_display_images() -> None:
    hu, cam = _slice_and_map()
    small = cam[::4, ::4]
    assert overlay(hu, small).shape == (40, 40, 3)
    display = np.full((40, 40), 200, np.uint8)
    assert overlay(display, cam, window=None)[30, 30, 0] == 200
    assert display_image(np.array([[0.0, 40.0, 80.0]])).tolist() == [[0.0, 0.5, 1.0]]
    with pytest.raises(InputError):
        overlay(np.zeros((2, 4, 4)), cam)
    with pytest.raises(InputError):
        overlay(hu, cam, alpha=1.5)


def test_resize_map_keeps_range_and_map_to_image_undoes_square_padding() -> None:
    cam = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    out = resize_map(cam, (33, 17))
    assert out.shape == (33, 17) and out.min() >= cam.min() and out.max() <= cam.max()
    # a 20 x 40 slice was padded to 40 x 40 (10 rows above and below) before resizing to S
    square = np.zeros((16, 16), np.float32)
    square[4:12, :] = 1.0  # the part of the input that was the slice
    back = map_to_image(square, (20, 40))
    assert back.shape == (20, 40)
    assert back[2:-2].min() > 0.9


def test_overlay_figure_and_atomic_png(tmp_path) -> None:
    hu, cam = _slice_and_map(64, 64)
    fig = overlay_figure(hu, cam, class_name="subdural", probability=0.873, slice_index=12, threshold=0.4)
    title = fig._suptitle.get_text()
    assert "Subdural (SDH) p=0.87" in title and "slice 12" in title and "threshold 0.40" in title
    out = tmp_path / "a" / "overlay.png"
    save_figure(fig, out)
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > img.size[1]  # two panels side by side
    assert [p.name for p in out.parent.iterdir()] == ["overlay.png"]  # no temporary left behind
    png = figure_png_bytes(overlay_figure(hu, cam, class_name="any", probability=None, side_by_side=False))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_title() -> None:
    assert class_title("any", 0.5) == "Any hemorrhage (ANY) p=0.50"
    assert class_title("intraventricular", None) == "Intraventricular (IVH)"


def test_montage_grid_and_limits(tmp_path) -> None:
    hu, cam = _slice_and_map()
    tiles = [MontageTile(hu, cam if i % 2 else None, f"slice {i}") for i in range(5)]
    fig = montage_figure(tiles, title="scan", max_tiles=4)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["slice 0", "slice 1", "slice 2", "slice 3"]
    assert "first 4 of 5" in fig._suptitle.get_text()
    save_figure(fig, tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").format == "PNG"
    with pytest.raises(InputError):
        montage_figure([], title="empty")
