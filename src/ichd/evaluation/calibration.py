"""Calibration: reliability curves, the expected calibration error (ECE), and temperature scaling.

Probabilities are put in ``n_bins`` equal-width bins on [0, 1]; bin ``b`` holds ``edges[b] <= p < edges[b+1]``
(the last bin also holds ``p == 1``). For each non-empty bin the reliability curve gives the mean predicted
probability ("confidence") and the observed fraction of positives; the ECE is the count-weighted mean gap::

    ECE = sum_b (n_b / N) * |fraction_positive_b - mean_predicted_b|

ECE is computed per class on the binary problem of that class (not on the arg-max), which is what a per-subtype
probability means for a user.

Temperature scaling (:func:`fit_temperature`, :class:`Temperature`): one scalar ``T_c > 0`` per label divides
that label's logit, ``p' = sigmoid(logit(p) / T_c)``; ``T_c`` minimises the label's (optionally row-weighted)
binary log loss over the rows whose label is known (``NaN`` labels are masked). The labels do not interact, so
this also minimises the RSNA weighted log loss. It changes no ranking (AUCs stay), only the scale, which is what
pooling the out-of-fold predictions of differently calibrated fold models needs: fit ``T`` on each fold model's
own training-part predictions, apply it to that model's held-out fold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichd.constants import LABELS

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


# ------------------------------------------------------------------------------------------------------------
# temperature scaling
# ------------------------------------------------------------------------------------------------------------

#: Search range of a temperature (log-uniform); a fit at a bound is reported as such (``at_bound``).
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
#: Probabilities are clipped to [eps, 1 - eps] before taking logits.
_LOGIT_EPS = 1e-12


def _logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


@dataclass(frozen=True)
class Temperature:
    """Fitted temperatures, one per label (``labels`` order); :meth:`apply` rescales probabilities or logits.

    ``fitted[c]`` is False where label ``c`` had no positive or no negative known row (``T = 1``, unchanged);
    ``at_bound[c]`` is True where the optimum lies at an end of :data:`TEMPERATURE_BOUNDS`.
    """

    t: np.ndarray
    labels: tuple[str, ...] = LABELS
    fitted: tuple[bool, ...] = ()
    at_bound: tuple[bool, ...] = ()
    n: tuple[int, ...] = ()

    def apply(self, probs: Any, *, from_logits: bool = False) -> np.ndarray:
        """Calibrated probabilities of ``probs`` (``(n, C)``, or logits with ``from_logits``)."""
        x = np.asarray(probs, dtype=np.float64)
        if x.shape[-1] != len(self.t):
            raise ValueError(f"{x.shape[-1]} columns for {len(self.t)} temperatures")
        z = x if from_logits else _logits(x)
        return _sigmoid(z / self.t)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"method": "temperature", "temperature": {label: T}, ...}``."""
        return {"method": "temperature", "temperature": dict(zip(self.labels, map(float, self.t))),
                "fitted": dict(zip(self.labels, self.fitted)), "at_bound": dict(zip(self.labels, self.at_bound)),
                "n": dict(zip(self.labels, self.n))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Temperature:
        temps = d["temperature"]
        labels = tuple(temps)
        return cls(np.asarray([float(temps[lab]) for lab in labels]), labels,
                   tuple(bool((d.get("fitted") or {}).get(lab, True)) for lab in labels),
                   tuple(bool((d.get("at_bound") or {}).get(lab, False)) for lab in labels),
                   tuple(int((d.get("n") or {}).get(lab, 0)) for lab in labels))


def _fit_one(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, bool]:
    from scipy.optimize import minimize_scalar

    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    wsum = w.sum()

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        # binary cross-entropy on logits: log(1 + e^s) - y s, computed stably
        return float(np.dot(w, np.logaddexp(0.0, s) - y * s) / wsum)

    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    log_t = float(res.x)
    at_bound = bool(min(log_t - lo, hi - log_t) < 1e-3)
    return float(np.exp(log_t)), at_bound


def fit_temperature(y_true: Any, probs: Any, *, from_logits: bool = False, sample_weight: Any = None,
                    labels: Sequence[str] = LABELS) -> Temperature:
    """Fit one temperature per label (see the module docstring) on ``probs`` (``(n, C)`` probabilities, or logits
    with ``from_logits``) against ``y_true`` (``(n, C)`` 0/1, ``NaN`` = missing, masked).

    ``sample_weight`` (``(n,)``) weights rows in the log loss. A label without both a known positive and a known
    negative row keeps ``T = 1`` (``fitted`` False). Raises ``ValueError`` on shape mismatches.
    """
    y = np.asarray(y_true, dtype=np.float64)
    x = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != x.shape or y.shape[1] != len(labels):
        raise ValueError(f"expected labels and probabilities of shape (n, {len(labels)}), got {y.shape} and "
                         f"{x.shape}")
    w_all = np.ones(y.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w_all.shape != (y.shape[0],) or np.any(w_all < 0) or not np.all(np.isfinite(w_all)):
        raise ValueError("sample_weight must be (n,) finite and >= 0")
    z_all = x if from_logits else _logits(x)
    temps, fitted, at_bound, counts = [], [], [], []
    for c in range(y.shape[1]):
        known = ~np.isnan(y[:, c]) & (w_all > 0)
        yc = y[known, c]
        counts.append(int(known.sum()))
        if not (np.any(yc > 0.5) and np.any(yc < 0.5)):
            temps.append(1.0)
            fitted.append(False)
            at_bound.append(False)
            continue
        t, bound = _fit_one(z_all[known, c], (yc > 0.5).astype(np.float64), w_all[known])
        temps.append(t)
        fitted.append(True)
        at_bound.append(bound)
    return Temperature(np.asarray(temps), tuple(labels), tuple(fitted), tuple(at_bound), tuple(counts))
