"""Thin-slice series as ~5 mm slabs (ichd.preprocessing.slabs)."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.preprocessing.slabs import MAX_THIN_SPACING_MM, make_slabs, slab_groups


@pytest.mark.parametrize(("n", "dz", "sizes"), [
    (20, 0.625, [10, 10]),  # k = 8: round(20 / 8) = 2 runs of 10
    (24, 1.25, [4] * 6),
    (7, 1.25, [4, 3]),  # round(7 / 4) = 2 runs: sizes differ by at most one slice
    (3, 2.0, [2, 1]),  # k = round(2.5) = 2 (round half to even), round(3 / 2) = 2 runs
])
def test_groups_are_consecutive_runs(n, dz, sizes):
    groups = slab_groups(n, dz)
    assert [len(g) for g in groups] == sizes
    np.testing.assert_array_equal(np.concatenate(groups), np.arange(n))


@pytest.mark.parametrize(("n", "dz"), [(30, MAX_THIN_SPACING_MM), (30, 5.0), (30, float("nan")), (1, 0.625),
                                       (30, 0.0)])
def test_not_thin_or_unknown_is_left_alone(n, dz):
    assert slab_groups(n, dz) is None
    assert make_slabs(np.zeros((n, 4, 4), np.float32), dz) is None


def test_slabs_are_the_mean_hu_and_map_back():
    rng = np.random.default_rng(0)
    hu = rng.normal(30, 20, (10, 6, 6)).astype(np.int16)  # int16 volumes are averaged in float32
    s = make_slabs(hu, 1.25)
    assert s.n_slabs == 2 and s.thickness_mm == pytest.approx(6.25)
    np.testing.assert_allclose(s.hu[0], hu[:5].astype(np.float32).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(s.hu[1], hu[5:].astype(np.float32).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(s.slab_of, [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(s.representative(), [2, 7])
    js = s.to_json(np.arange(10) * 1.25)
    assert js[1] == {"index": 1, "source_slices": [5, 6, 7, 8, 9], "z_mm": 8.75}
    assert s.to_json()[0]["z_mm"] is None
