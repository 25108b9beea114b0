"""Reliability curve against scikit-learn's calibration_curve; ECE by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from ichd.evaluation.calibration import expected_calibration_error, reliability_curve


def test_reliability_curve_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(400)
    p = p[np.abs(p * 10 - np.round(p * 10)) > 1e-9]  # keep away from bin edges (edge conventions differ)
    y = (rng.random(p.size) < p).astype(int)
    curve = reliability_curve(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve.fraction_positive, frac)
    np.testing.assert_allclose(curve.mean_predicted, mean)
    assert curve.count.sum() == p.size


def test_ece_hand_example() -> None:
    # bin [0.0, 0.1): p 0.05, 0.05 with labels 0, 1 -> gap |0.5 - 0.05| = 0.45, weight 2/5
    # bin [0.9, 1.0]: p 0.95, 0.95, 1.0 with labels 1, 1, 1 -> gap |1 - 0.9667| = 0.0333, weight 3/5
    y = [0, 1, 1, 1, 1]
    p = [0.05, 0.05, 0.95, 0.95, 1.0]
    expected = 2 / 5 * 0.45 + 3 / 5 * (1 - (0.95 + 0.95 + 1.0) / 3)
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected)
    curve = reliability_curve(y, p, n_bins=10)
    np.testing.assert_allclose(curve.bin_low, [0.0, 0.9])
    np.testing.assert_allclose(curve.count, [2, 3])


def test_ece_perfect_and_empty() -> None:
    assert expected_calibration_error([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError):
        reliability_curve([0, 1], [0.5], n_bins=10)
