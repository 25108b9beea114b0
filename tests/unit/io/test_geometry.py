"""Unit tests for ichd.io.geometry: ordering along the normal, duplicates, gaps, uneven spacing, tilt."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ichd.io.geometry import (
    SliceGeometry,
    is_axial,
    oblique_angle_deg,
    order_slices,
    slice_normal,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def tilted(deg: float) -> tuple[float, ...]:
    t = math.radians(deg)
    return (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))


def geo(name: str, z: float, orientation: tuple[float, ...] = AXIAL, inst: int | None = None,
        preference: int = 0) -> SliceGeometry:
    return SliceGeometry(name, (0.0, 0.0, z), orientation, inst, preference)


def test_normal_points_superior_and_angles() -> None:
    np.testing.assert_allclose(slice_normal(AXIAL), [0, 0, 1])
    np.testing.assert_allclose(slice_normal((-1, 0, 0, 0, 1, 0)), [0, 0, 1])  # flipped row -> still +z
    assert oblique_angle_deg(tilted(8.5)) == pytest.approx(8.5, abs=1e-6)
    assert oblique_angle_deg(AXIAL) == 0.0
    assert is_axial(tilted(26.0))
    assert not is_axial((1, 0, 0, 0, 0, -1))  # coronal
    assert not is_axial((0, 1, 0, 0, 0, -1))  # sagittal
    with pytest.raises(ValueError, match="parallel"):
        slice_normal((1, 0, 0, 1, 0, 0))


def test_orders_by_position_not_name_or_instance() -> None:
    slices = [geo("c", 5.0, inst=1), geo("a", -5.0, inst=3), geo("b", 0.0, inst=2)]
    o = order_slices(slices)
    assert o.order == [1, 2, 0]
    np.testing.assert_allclose(o.positions_mm, [-5, 0, 5])
    assert o.method == "position" and o.spacing_mm == pytest.approx(5.0)
    assert not o.gaps and not o.duplicates and not o.warnings


def test_tilted_series_ordered_along_normal_with_true_spacing() -> None:
    t = math.radians(20.0)
    slices = [SliceGeometry(f"s{k}", (0.0, 10.0, k * 3.0 / math.cos(t)), tilted(20.0), k) for k in (3, 0, 2, 1)]
    o = order_slices(slices)
    assert [slices[i].name for i in o.order] == ["s0", "s1", "s2", "s3"]
    assert o.spacing_mm == pytest.approx(3.0)
    assert not o.gaps


def test_duplicate_positions_keep_preferred_then_lower_instance() -> None:
    slices = [geo("a", 0.0, inst=1), geo("b", 2.0, inst=2), geo("b-copy", 2.0, inst=9), geo("c", 4.0, inst=3)]
    o = order_slices(slices)
    assert o.order == [0, 1, 3] and o.duplicates == {2: 1}
    assert [w.code for w in o.warnings] == ["duplicate_position"]
    assert o.warnings[0].files == ("b-copy",)
    lossy_first = [geo("lossy", 0.0, inst=1, preference=1), geo("lossless", 0.0, inst=2)]
    assert order_slices(lossy_first).order == [1]


def test_gap_reported_with_index_and_step() -> None:
    slices = [geo(f"s{k}", z) for k, z in enumerate([0.0, 1.0, 2.0, 4.0, 5.0, 6.0])]
    o = order_slices(slices)
    assert o.gaps == [(2, 2.0)]
    assert o.spacing_mm == pytest.approx(1.0)
    assert [w.code for w in o.warnings] == ["gap"] and o.warnings[0].files == ("s3",)
    assert not o.uneven


def test_step_of_exactly_one_and_a_half_is_not_a_gap() -> None:
    o = order_slices([geo(f"s{k}", z) for k, z in enumerate([0.0, 1.0, 2.0, 3.0, 4.5])])
    assert not o.gaps


def test_spacing_change_is_uneven_and_gap() -> None:
    # like the GE edge case: 4 mm, then a 1.08 mm step, then 7 mm
    zs = np.cumsum([0.0, 4.0, 4.0, 4.0, 1.08, 7.0, 7.0, 7.0])
    o = order_slices([geo(f"s{k}", float(z)) for k, z in enumerate(zs)])
    assert o.uneven
    assert [k for k, _ in o.gaps] == [4, 5, 6]
    codes = [w.code for w in o.warnings]
    assert "uneven_spacing" in codes and "gap" in codes


def test_instance_number_fallback_and_file_order() -> None:
    slices = [SliceGeometry("b", None, None, 2), SliceGeometry("a", None, None, 1), SliceGeometry("c", None, None, 3)]
    o = order_slices(slices)
    assert o.order == [1, 0, 2] and o.method == "instance_number"
    assert np.isnan(o.positions_mm).all()
    assert [w.code for w in o.warnings] == ["instance_number_order"]

    slices = [SliceGeometry("b", None, None, None), SliceGeometry("a", None, None, 1)]
    o = order_slices(slices)
    assert o.order == [1, 0] and o.method == "file_name"
    assert [w.code for w in o.warnings] == ["file_order"]


def test_single_slice_without_position_has_no_warning() -> None:
    o = order_slices([SliceGeometry("only", None, None, None)])
    assert o.order == [0] and not o.warnings and np.isnan(o.spacing_mm)


def test_mixed_orientation_warns() -> None:
    o = order_slices([geo("a", 0.0), geo("b", 1.0), geo("c", 2.0, tilted(5.0))])
    assert "mixed_orientation" in [w.code for w in o.warnings]
