"""Calibration: reliability curves and the expected calibration error (ECE).

Probabilities are put in ``n_bins`` equal-width bins on [0, 1]; bin ``b`` holds ``edges[b] <= p < edges[b+1]``
(the last bin also holds ``p == 1``). For each non-empty bin the reliability curve gives the mean predicted
probability ("confidence") and the observed fraction of positives; the ECE is the count-weighted mean gap::

    ECE = sum_b (n_b / N) * |fraction_positive_b - mean_predicted_b|

ECE is computed per class on the binary problem of that class (not on the arg-max), which is what a per-subtype
probability means for a user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Default number of equal-width bins.
DEFAULT_BINS: int = 10


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin calibration statistics; arrays have one entry per **non-empty** bin, in increasing order."""

    mean_predicted: np.ndarray
    fraction_positive: np.ndarray
    count: np.ndarray
    bin_low: np.ndarray
    bin_high: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "mean_predicted": self.mean_predicted.tolist(),
            "fraction_positive": self.fraction_positive.tolist(),
            "count": self.count.astype(int).tolist(),
            "bin_low": self.bin_low.tolist(),
            "bin_high": self.bin_high.tolist(),
        }


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability_curve(y_true: Any, y_prob: Any, n_bins: int = DEFAULT_BINS) -> ReliabilityCurve:
    """Reliability (calibration) curve of one class with ``n_bins`` equal-width bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return ReliabilityCurve(
        mean_predicted=sum_p[keep] / count[keep],
        fraction_positive=sum_y[keep] / count[keep],
        count=count[keep],
        bin_low=edges[:-1][keep],
        bin_high=edges[1:][keep],
    )


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = DEFAULT_BINS) -> float:
    """ECE of one class (see the module docstring); ``nan`` for no rows."""
    curve = reliability_curve(y_true, y_prob, n_bins)
    n = curve.count.sum()
    if n == 0:
        return math.nan
    return float(np.sum(curve.count / n * np.abs(curve.fraction_positive - curve.mean_predicted)))
