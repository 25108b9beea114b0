"""Per-label logistic calibration of a model's logits (Platt scaling), fitted on out-of-sample predictions.

:func:`fit_platt` fits, for each label, ``p = sigmoid(a * logit + b)`` by minimising the binary log loss on the
rows whose label is known (missing labels, ``NaN``, are masked); a label whose known rows are all one class keeps
``a = 1`` and gets ``b`` from its prevalence. ``a`` is kept positive (a calibration never reverses the ranking).
With ``bias=False`` only the scale (a temperature ``1 / a``) is fitted. :func:`fold_platt_into_linear` writes the
calibration into a final linear layer, so the calibrated model needs no extra step at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichd.errors import InputError


@dataclass(frozen=True)
class Platt:
    """Per-label scale ``a`` and bias ``b``: calibrated logit = a * logit + b."""

    a: np.ndarray
    b: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {"a": [float(v) for v in self.a], "b": [float(v) for v in self.b]}


def fit_platt(logits: np.ndarray, y: np.ndarray, *, bias: bool = True, max_iter: int = 200) -> Platt:
    """Fit one :class:`Platt` pair per column of ``logits`` (N, C) against labels ``y`` (N, C) (NaN = unknown)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    if z.shape != t.shape or z.ndim != 2:
        raise InputError(f"logits {z.shape} and labels {t.shape} must both be (N, C)")
    a = np.ones(z.shape[1])
    b = np.zeros(z.shape[1])
    for c in range(z.shape[1]):
        known = ~np.isnan(t[:, c]) & np.isfinite(z[:, c])
        zc, tc = z[known, c], t[known, c]
        if len(tc) == 0:
            continue
        prev = float(np.clip(tc.mean(), 1e-4, 1 - 1e-4))
        if tc.min() == tc.max():
            b[c] = np.log(prev / (1 - prev)) - float(np.mean(zc))
            continue

        def nll(params: np.ndarray, zc: np.ndarray = zc, tc: np.ndarray = tc) -> tuple[float, np.ndarray]:
            la, bb = params[0], (params[1] if bias else 0.0)
            s = np.exp(la) * zc + bb
            # log(1 + e^s) - t * s, stable
            loss = np.logaddexp(0.0, s) - tc * s
            g = expit(s) - tc
            grad = [float(np.mean(g * zc) * np.exp(la))] + ([float(np.mean(g))] if bias else [])
            return float(np.mean(loss)), np.asarray(grad)

        x0 = np.zeros(2 if bias else 1)
        res = minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=[(-6.0, 6.0)] + ([(-30.0, 30.0)] if bias else []),
                       options={"maxiter": max_iter})
        a[c] = float(np.exp(res.x[0]))
        b[c] = float(res.x[1]) if bias else 0.0
    return Platt(a, b)


def apply_platt(logits: np.ndarray, calib: Platt | None) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(a * logits + b)`` (plain sigmoid when ``calib`` is None)."""
    from scipy.special import expit

    z = np.asarray(logits, dtype=np.float64)
    if calib is not None:
        z = z * calib.a[None, :] + calib.b[None, :]
    return expit(z)


def fold_platt_into_linear(layer: object, calib: Platt) -> None:
    """Rewrite the final ``torch.nn.Linear`` ``layer`` (out_features = C) so that it outputs calibrated logits."""
    import torch

    with torch.no_grad():
        a = torch.as_tensor(calib.a, dtype=layer.weight.dtype)  # type: ignore[attr-defined]
        b = torch.as_tensor(calib.b, dtype=layer.weight.dtype)  # type: ignore[attr-defined]
        layer.weight.mul_(a[:, None])  # type: ignore[attr-defined]
        layer.bias.mul_(a).add_(b)  # type: ignore[attr-defined]
