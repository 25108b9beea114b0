"""Head mask per slice (ichd.preprocessing.head_mask): air, table, scalp remnants, crop boxes."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.preprocessing.head_mask import (
    MIN_HEAD_AREA_MM2,
    CropBox,
    crop_to_box,
    has_head,
    head_crop_box,
    head_mask,
    min_head_pixels,
)
from ichd.testing.factories import phantom_hu


def _head_with_table(size: int = 256, spacing: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A phantom head (about 18 x 15 cm at 1 mm/px) above a 3 mm thick table; returns (hu, table pixels)."""
    hu = phantom_hu(size, size)
    table = np.zeros_like(hu, dtype=bool)
    row = int(size * 0.95)
    table[row:row + max(1, round(3 / spacing)), 10:size - 10] = True
    hu[table] = 200.0
    return hu, table


def test_head_found_table_and_air_left_out():
    hu, table = _head_with_table()
    m = head_mask(hu, (1.0, 1.0))
    assert m.dtype == bool and m.shape == hu.shape
    assert not (m & table).any()  # the table is not head
    assert m[hu == 30.0].all()  # all brain is head (holes filled, skull kept)
    assert not m[0, 0]  # air
    assert m.sum() * 1.0 >= MIN_HEAD_AREA_MM2


def test_a_table_touching_the_head_is_cut_off():
    hu = phantom_hu(256, 256)
    rows = np.flatnonzero((hu > -300).any(axis=1))
    table = np.zeros_like(hu, dtype=bool)
    table[rows[-1] - 1:rows[-1] + 3, 5:251] = True  # 4 mm thick, overlapping the head's lowest rows
    hu[table] = 200.0
    m = head_mask(hu, (1.0, 1.0))
    assert m.any()
    assert not m[:, :30].any() and not m[:, -30:].any()  # the table beyond the head (columns 36-219) is not head


def test_air_only_and_table_only_slices_have_no_head():
    air = np.full((128, 128), -1000.0, dtype=np.float32)
    assert not head_mask(air, (1.0, 1.0)).any()
    table = air.copy()
    table[100:103, 5:123] = 300.0  # a table top, 3 mm thick
    table[60:64, 5:8] = 300.0  # a cable end
    assert not head_mask(table, (1.0, 1.0)).any()
    vol = np.stack([air, table, phantom_hu(128, 128)])
    assert has_head(head_mask(vol, (2.0, 2.0))).tolist() == [False, False, True]


def test_small_scalp_remnant_above_the_vertex_is_not_a_head():
    hu = np.full((256, 256), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:256, :256]
    hu[np.hypot(yy - 128, xx - 128) < 12] = 40.0  # 12 mm radius: 4.5 cm² < 10 cm²
    assert not head_mask(hu, (1.0, 1.0)).any()
    hu[np.hypot(yy - 128, xx - 128) < 30] = 40.0  # 28 cm²
    assert head_mask(hu, (1.0, 1.0)).any()


def test_unknown_spacing_uses_a_fraction_of_the_image():
    assert min_head_pixels((100, 100)) == 200  # 2 % of the image
    assert min_head_pixels((512, 512), (0.5, 0.5)) == 4000  # 10 cm² at 0.25 mm²/px
    assert min_head_pixels((64, 64), (0.5, 0.5)) < 100  # a small field of view: the fraction caps it
    assert head_mask(phantom_hu(200, 200)).any()


def test_nan_pixels_are_air():
    hu = phantom_hu(128, 128)
    hu[:10] = np.nan
    assert not head_mask(hu, (1.0, 1.0))[:10].any()


def test_crop_box_is_a_square_around_every_head_slice():
    vol = np.stack([phantom_hu(120, 160), np.full((120, 160), -1000.0, dtype=np.float32)])
    masks = head_mask(vol, (1.0, 1.0))
    box = head_crop_box(masks)
    assert isinstance(box, CropBox)
    rows, cols = np.nonzero(masks[0])
    assert box.top <= rows.min() and box.top + box.side > rows.max()
    assert box.left <= cols.min() and box.left + box.side > cols.max()
    assert head_crop_box(masks[1:]) is None  # no head: no crop


def test_crop_to_box_fills_outside_with_air():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = crop_to_box(x, CropBox(top=-1, left=2, side=3), -1024.0)
    assert out.shape == (3, 3)
    assert (out[0] == -1024.0).all()  # above the slice
    np.testing.assert_array_equal(out[1:, :2], x[:2, 2:])
    assert (out[:, 2] == -1024.0).all()  # right of the slice


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((1, 2, 3, 4))])
def test_wrong_dimensions_are_refused(bad):
    with pytest.raises(ValueError):
        head_mask(bad)


def test_fill_holes_equals_scipy():
    from scipy.ndimage import binary_fill_holes

    from ichd.preprocessing.head_mask import fill_holes

    rng = np.random.default_rng(3)
    for density in (0.2, 0.5, 0.8):
        m = rng.random((40, 57)) < density
        np.testing.assert_array_equal(fill_holes(m), binary_fill_holes(m))
    assert not fill_holes(np.zeros((5, 5), bool)).any() and fill_holes(np.ones((5, 5), bool)).all()


def test_opening_on_the_bounding_box_equals_the_whole_slice():
    from scipy.ndimage import distance_transform_edt

    from ichd.preprocessing.head_mask import OPENING_RADIUS_MM, _opening

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:120, :120]
    m = (np.hypot(yy - 50, xx - 70) < 30) | (rng.random((120, 120)) < 0.05)
    m[100:102, 5:115] = True  # a thin table
    for mm in ((0.5, 0.5), (0.7, 0.45)):
        eroded = distance_transform_edt(m, sampling=mm) > OPENING_RADIUS_MM
        whole = distance_transform_edt(~eroded, sampling=mm) <= OPENING_RADIUS_MM
        np.testing.assert_array_equal(_opening(m, mm), whole)


@pytest.mark.parametrize("mm", [(0.488, 0.488), (0.7, 0.7), (1.0, 1.0), (0.7, 0.45)])
def test_distance_mm_equals_scipy(mm):
    """OpenCV's transform (square pixels) and SciPy's (any pixels) give the same distances, and the thresholds the
    guards apply agree pixel for pixel, also for masks that touch the image border."""
    from scipy.ndimage import distance_transform_edt

    from ichd.preprocessing.head_mask import distance_mm

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:300, :260]
    head = (yy - 150) ** 2 / 120**2 + (xx - 120) ** 2 / 100**2 < 1
    masks = [head, head & (rng.random(head.shape) > 0.02), head | (xx < 12), ~head, rng.random((64, 80)) < 0.7,
             np.zeros((9, 9), bool), np.ones((9, 9), bool)]
    for m in masks:
        ref = distance_transform_edt(m, sampling=mm)
        got = distance_mm(m, mm)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
        for radius in (1.0, 2.5, 3.0, 5.0, 10.0):
            np.testing.assert_array_equal(got > radius, ref > radius)


def test_components_partition_equals_scipy_label():
    """Same components as ``scipy.ndimage.label`` (4- and 8-connected); only the numbering may differ."""
    from scipy.ndimage import label

    from ichd.preprocessing.head_mask import components

    rng = np.random.default_rng(6)
    for density in (0.3, 0.5, 0.7):
        m = rng.random((200, 170)) < density
        for connectivity, structure in ((4, None), (8, np.ones((3, 3), bool))):
            ref, n_ref = label(m, structure=structure)
            got, n = components(m, connectivity)
            assert n == n_ref
            assert ((got == 0) == ~m).all()
            # a bijection between the two numberings: every (ref, got) pair occurs for exactly one ref label
            pairs = np.unique(ref.astype(np.int64) * (n + 1) + got)
            assert len(pairs) == n + 1
    with pytest.raises(ValueError, match="connectivity"):
        components(np.ones((3, 3), bool), connectivity=6)
