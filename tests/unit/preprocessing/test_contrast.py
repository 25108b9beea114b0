"""Contrast detection from the image (ichd.preprocessing.contrast) on synthetic head volumes."""

from __future__ import annotations

import numpy as np

from ichd.preprocessing.contrast import (
    ENHANCED_SLICE_FRACTION_THRESHOLD,
    WARNING_CODE,
    brain_region,
    measure_contrast,
)
from ichd.preprocessing.head_mask import head_mask


def head_volume(n: int = 8, size: int = 192, *, spots: float | None = None, core: float | None = None,
                seed: int = 0) -> np.ndarray:
    """(n, size, size) HU at 1 mm/px: air, a 6 mm skull (1000 HU), brain 35 +- 4 HU; with ``spots`` a few 3 mm
    vessel-like spots of that HU inside the brain on every slice (a dense ``core`` in their centre)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    r = np.hypot((yy - c) / 0.8, (xx - c) / 0.68) / c
    vol = np.full((n, size, size), -1000.0, dtype=np.float32)
    for z in range(n):
        s = vol[z]
        s[r < 1.0] = 1000.0
        brain = r < 0.92
        s[brain] = 35.0 + rng.normal(0, 4, size=int(brain.sum()))
        if spots is not None:
            for dy, dx in ((-30, -20), (-10, 25), (20, -5), (35, 15)):
                d = np.hypot(yy - c - dy, xx - c - dx)
                s[d < 3] = spots
                if core is not None:
                    s[d < 1] = core
    return vol


def test_plain_head_is_not_flagged():
    vol = head_volume()
    m = measure_contrast(vol, (1.0, 1.0))
    assert not m.flagged and m.enhanced_slice_fraction == 0.0
    assert m.n_slices_measured == len(vol)
    assert m.to_dict()["threshold"] == ENHANCED_SLICE_FRACTION_THRESHOLD


def test_iodine_bright_vessels_on_every_slice_are_flagged():
    m = measure_contrast(head_volume(spots=160.0), (1.0, 1.0))
    assert m.flagged and m.enhanced_slice_fraction == 1.0 and m.median_enhanced_mm2 >= 2.0
    assert "not assessable" in m.message() and WARNING_CODE == "contrast_enhanced"


def test_calcifications_with_a_dense_core_and_blood_are_not_contrast():
    assert not measure_contrast(head_volume(spots=160.0, core=600.0), (1.0, 1.0)).flagged  # calcified spots
    assert not measure_contrast(head_volume(spots=80.0), (1.0, 1.0)).flagged  # fresh blood is below the range


def test_brain_region_leaves_skull_and_scalp_out():
    vol = head_volume(1)
    region = brain_region(vol[0], head_mask(vol[0], (1.0, 1.0)), (1.0, 1.0))
    assert region.any()
    assert not region[vol[0] >= 700].any()  # no bone
    assert vol[0][region].max() < 100  # brain only


def test_no_head_measures_nothing():
    m = measure_contrast(np.full((3, 64, 64), -1000.0, dtype=np.float32), (1.0, 1.0))
    assert not m.flagged and m.n_slices_measured == 0
    assert m.to_dict()["p995_hu"] is None
