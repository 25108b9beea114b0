"""Unit tests for ichd.io.hu: rescale, RSNA corrupted intercept, MONOCHROME1, padding and out-of-FOV air."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.constants import AIR_HU
from ichd.io.hu import PixelEncoding, has_corrupted_intercept, implausible_intercept, signed_padding, to_hu


def test_rescale_slope_intercept() -> None:
    stored = np.array([[0, 1024, 1064]], dtype=np.int16)
    hu, fixes = to_hu(stored, PixelEncoding(slope=1.0, intercept=-1024.0))
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, [[-1024.0, 0.0, 40.0]])
    assert not fixes.corrupted_intercept and not fixes.inverted_monochrome1

    hu, _ = to_hu(np.array([[100, 600]], dtype=np.uint16), PixelEncoding(slope=2.0, intercept=-1000.0,
                                                                          pixel_representation=0))
    np.testing.assert_array_equal(hu, [[-800.0, 200.0]])


@pytest.mark.parametrize(("bits", "rep", "intercept", "expected"), [
    (12, 0, 1.0, True), (12, 0, 0.0, True), (12, 0, -99.0, True),
    (12, 0, -100.0, False), (12, 0, -1024.0, False), (12, 1, 1.0, False), (16, 0, 1.0, False),
])
def test_corrupted_intercept_condition(bits: int, rep: int, intercept: float, expected: bool) -> None:
    enc = PixelEncoding(intercept=intercept, bits_stored=bits, pixel_representation=rep)
    assert has_corrupted_intercept(enc) is expected


def test_corrupted_intercept_fix_is_exactly_the_documented_rule() -> None:
    # stored values hold HU modulo 4096: air -1000 -> 3096, water 0 -> 0, blood 60 -> 60, bone 2000 -> 2000
    stored = np.array([[3096, 3100, 4095, 0, 60, 2000, 3095]], dtype=np.uint16)
    hu, fixes = to_hu(stored, PixelEncoding(intercept=1.0, bits_stored=12, pixel_representation=0))
    assert fixes.corrupted_intercept
    # p = stored + 1000; p[p >= 4096] -= 4096; HU = p * slope - 1000
    np.testing.assert_array_equal(hu, [[-1000.0, -996.0, -1.0, 0.0, 60.0, 2000.0, 3095.0]])


def test_corrupted_intercept_keeps_slope() -> None:
    stored = np.array([[3096, 10]], dtype=np.uint16)
    hu, _ = to_hu(stored, PixelEncoding(slope=2.0, intercept=0.0, bits_stored=12, pixel_representation=0))
    np.testing.assert_array_equal(hu, [[-1000.0, 2 * 1010 - 1000.0]])


def test_implausible_intercept_is_reported_not_fixed() -> None:
    enc = PixelEncoding(intercept=0.0, bits_stored=16, pixel_representation=0)
    assert implausible_intercept(enc) and not has_corrupted_intercept(enc)
    hu, fixes = to_hu(np.array([[5]], dtype=np.uint16), enc)
    assert hu[0, 0] == 5.0 and not fixes.corrupted_intercept


def test_monochrome1_unsigned_and_signed() -> None:
    hu, fixes = to_hu(np.array([[4095 - 1024, 4095 - 1064]], dtype=np.uint16),
                      PixelEncoding(intercept=-1024.0, bits_stored=12, pixel_representation=0,
                                    photometric="MONOCHROME1"))
    assert fixes.inverted_monochrome1
    np.testing.assert_array_equal(hu, [[0.0, 40.0]])
    hu, _ = to_hu(np.array([[-1 - 1024, -1 - 1064]], dtype=np.int16),
                  PixelEncoding(intercept=-1024.0, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(hu, [[0.0, 40.0]])


def test_padding_value_and_range_become_air() -> None:
    stored = np.array([[-2000, -1999, 0, 1064]], dtype=np.int16)
    hu, fixes = to_hu(stored, PixelEncoding(intercept=-1024.0, padding_value=-2000))
    np.testing.assert_array_equal(hu, [[AIR_HU, AIR_HU, -1024.0, 40.0]])  # -1999 -> -3023 HU: out of FOV
    assert fixes.n_padding == 1 and fixes.n_out_of_fov == 1

    # GE-style padding -1500 with intercept 0 sits right at the out-of-FOV threshold: caught by the tag
    hu, fixes = to_hu(np.array([[-1500, -1000]], dtype=np.int16), PixelEncoding(padding_value=-1500))
    np.testing.assert_array_equal(hu, [[AIR_HU, -1000.0]])
    assert fixes.n_padding == 1

    hu, fixes = to_hu(np.array([[0, 5, 10, 11]], dtype=np.uint16),
                      PixelEncoding(intercept=-1000.0, pixel_representation=0, padding_value=10, padding_limit=0))
    np.testing.assert_array_equal(hu, [[AIR_HU, AIR_HU, AIR_HU, -989.0]])
    assert fixes.n_padding == 3


def test_values_just_above_out_of_fov_threshold_are_kept() -> None:
    hu, _ = to_hu(np.array([[-1499, -1024]], dtype=np.int16), PixelEncoding())
    np.testing.assert_array_equal(hu, [[-1499.0, -1024.0]])


def test_signed_padding_from_unsigned_tag_value() -> None:
    assert signed_padding(63536, 16, 1) == -2000
    assert signed_padding(63536, 16, 0) == 63536
    assert signed_padding(-2000, 16, 1) == -2000
    assert signed_padding(None, 16, 1) is None
