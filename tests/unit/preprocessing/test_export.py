"""Windowed PNG export: the round trip through ichd's image reader, slice order, size, no overwriting."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.errors import InputError
from ichd.io.images import read_image_folder
from ichd.preprocessing.export import write_window_pngs
from ichd.types import CTSeries


def _series(n: int = 3, h: int = 40, w: int = 48) -> CTSeries:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-100, 200, size=(n, h, w)).astype(np.float32)
    hu[:, 0, 0] = np.arange(n) * 10.0  # slice order marker inside the window
    return CTSeries(hu=hu, spacing_mm=(5.0, 0.5, 0.5), positions_mm=np.arange(n) * 5.0,
                    sop_instance_uids=[f"1.2.{i}" for i in range(n)], study_instance_uid="1.2",
                    series_instance_uid="1.2.3")


def test_round_trip_keeps_order_and_the_window_range(tmp_path):
    series = _series()
    paths = write_window_pngs(series, tmp_path / "png", (40, 80))
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png"]
    back = read_image_folder(tmp_path / "png", (40, 80))[0]
    assert back.hu.shape == (3, 48, 48)  # padded to a square
    inner = series.hu[:, :, :]
    got = back.hu[:, 4:44, :]  # centre-padded rows
    inside = (inner > 0) & (inner < 80)
    assert np.abs(got[inside] - inner[inside]).max() <= 80 / 255 / 2 + 1e-3  # exact to half a gray level
    assert got[inner >= 80].min() >= 79.9 and got[inner <= 0].max() <= 0.1  # saturated outside the window
    assert np.allclose(back.hu[:, 4, 0], [0.0, 10.0, 20.0], atol=0.2)


def test_resize_and_refuses_to_overwrite(tmp_path):
    write_window_pngs(_series(), tmp_path / "png", "40,100", size=32)
    assert read_image_folder(tmp_path / "png", "40,100")[0].hu.shape == (3, 32, 32)
    with pytest.raises(InputError, match="already holds images"):
        write_window_pngs(_series(), tmp_path / "png", "40,100")
