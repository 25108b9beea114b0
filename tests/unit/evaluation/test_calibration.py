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


def test_fit_temperature_recovers_scale_masks_nan_and_keeps_ranking() -> None:
    from ichd.evaluation.calibration import Temperature, fit_temperature
    from ichd.evaluation.metrics import roc_auc, weighted_log_loss

    rng = np.random.default_rng(1)
    z = rng.normal(size=(3000, 6)) * 2
    y = (rng.random((3000, 6)) < 1 / (1 + np.exp(-z))).astype(float)
    p = 1 / (1 + np.exp(-2.5 * z))  # over-confident by a factor 2.5
    y[:500, 3] = np.nan  # missing labels are masked
    y[:, 5] = 0.0  # no positive: not fitted, T = 1
    temp = fit_temperature(y, p)
    np.testing.assert_allclose(temp.t[:5], 2.5, rtol=0.12)
    assert temp.t[5] == 1.0 and temp.fitted == (True,) * 5 + (False,) and not any(temp.at_bound)
    assert temp.n[3] == 2500
    q = temp.apply(p)
    known = ~np.isnan(y[:, :5]).any(axis=1)
    assert weighted_log_loss(y[known, :5], q[known, :5], weights=[2, 1, 1, 1, 1]) < \
        weighted_log_loss(y[known, :5], p[known, :5], weights=[2, 1, 1, 1, 1])
    assert roc_auc(y[:, 0], q[:, 0]) == pytest.approx(roc_auc(y[:, 0], p[:, 0]))
    inner = ((p > 1e-9) & (p < 1 - 1e-9)).all(axis=1)  # probabilities are clipped before taking logits
    np.testing.assert_allclose(temp.apply(np.log(p / (1 - p)), from_logits=True)[inner], q[inner], atol=1e-6)
    again = Temperature.from_dict(temp.to_dict())
    np.testing.assert_allclose(again.apply(p), q)
    # row weights: rows of weight 0 do not count
    w = np.r_[np.zeros(1500), np.ones(1500)]
    np.testing.assert_allclose(fit_temperature(y, p, sample_weight=w).t, fit_temperature(y[1500:], p[1500:]).t)
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(y[:, :5], p[:, :5])
