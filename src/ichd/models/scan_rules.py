"""Scan-level probabilities from slice-level ones.

Four rules, selectable by name (:data:`SCAN_RULES`); ``ichd evaluate`` reports the scan any-AUC of each on OOF
slice predictions, so that a model's rule is chosen on them:

``max``
    per class, the maximum slice probability (a scan is as positive as its most positive slice).
``consecutive``
    the RADnet rule (Grewal et al. 2018): a scan is positive when at least ``min_run`` (default 3) *consecutive*
    slices are positive. As a continuous score we use, per class, the maximum over every window of ``min_run``
    consecutive slices of the minimum probability in the window. Thresholding this score at ``t`` gives exactly
    the RADnet decision "at least ``min_run`` consecutive slices with probability >= ``t``", so the score can be
    used for ROC curves and thresholds alike. Scans with fewer than ``min_run`` slices fall back to the minimum
    over all their slices (every slice must then be positive).
``topk_mean``
    per class, the mean of the ``top_k`` (default 3) highest slice probabilities (all slices when the scan has
    fewer); less driven by one noisy slice than ``max``.
``smoothed_max``
    per class, the maximum of a 3-slice moving average along the scan (slice ``i``: the mean of slices ``i-1``,
    ``i``, ``i+1``; at the scan's first and last slice the mean of the two present); a one-slice scan gives that
    slice.

Slices must be in scan order (inferior -> superior); the ``consecutive`` rule depends on it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ichd.errors import ConfigError, InputError, did_you_mean

ScanRule = Literal["max", "consecutive", "topk_mean", "smoothed_max"]
SCAN_RULES: tuple[str, ...] = ("max", "consecutive", "topk_mean", "smoothed_max")
#: Rules whose result depends on the slice order (the others only on the set of slice probabilities).
ORDERED_RULES: tuple[str, ...] = ("consecutive", "smoothed_max")
#: RADnet's minimum run of positive slices.
RADNET_MIN_RUN = 3
#: Slices averaged by ``topk_mean``.
DEFAULT_TOP_K = 3


def consecutive_score(slice_probs: np.ndarray, min_run: int = RADNET_MIN_RUN) -> np.ndarray:
    """Per-class max over windows of ``min_run`` consecutive slices of the window minimum.

    ``slice_probs``: (n_slices, n_classes) in scan order. Returns (n_classes,).
    """
    p = np.asarray(slice_probs, dtype=np.float64)
    if min_run < 1:
        raise ConfigError(f"min_run must be >= 1, got {min_run}")
    n = p.shape[0]
    if n <= min_run:
        return p.min(axis=0)
    windows = np.lib.stride_tricks.sliding_window_view(p, min_run, axis=0)  # (n - r + 1, classes, r)
    return windows.min(axis=-1).max(axis=0)


def topk_mean_score(slice_probs: np.ndarray, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Per-class mean of the ``top_k`` highest slice probabilities (all of them when fewer). Returns (n_classes,)."""
    p = np.asarray(slice_probs, dtype=np.float64)
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    k = min(top_k, p.shape[0])
    return np.sort(p, axis=0)[-k:].mean(axis=0)


def smoothed_max_score(slice_probs: np.ndarray) -> np.ndarray:
    """Per-class maximum of the 3-slice moving average along the scan (edges: mean of the two slices present).

    ``slice_probs``: (n_slices, n_classes) in scan order. Returns (n_classes,).
    """
    p = np.asarray(slice_probs, dtype=np.float64)
    n = p.shape[0]
    if n == 1:
        return p[0].copy()
    padded = np.concatenate([np.zeros_like(p[:1]), p, np.zeros_like(p[:1])])
    sums = padded[:-2] + padded[1:-1] + padded[2:]
    counts = np.full(n, 3.0)
    counts[0] = counts[-1] = 2.0
    return (sums / counts[:, None]).max(axis=0)


def scan_probabilities(slice_probs: np.ndarray, rule: str = "max", *, min_run: int = RADNET_MIN_RUN,
                       top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Scan-level probabilities (n_classes,) from slice probabilities (n_slices, n_classes) with ``rule``."""
    p = np.asarray(slice_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise InputError(f"slice probabilities must be a non-empty (n_slices, n_classes) array, got {p.shape}")
    if rule == "max":
        return p.max(axis=0)
    if rule == "consecutive":
        return consecutive_score(p, min_run)
    if rule == "topk_mean":
        return topk_mean_score(p, top_k)
    if rule == "smoothed_max":
        return smoothed_max_score(p)
    raise ConfigError(f"scan rule {rule!r} is unknown; {did_you_mean(rule, SCAN_RULES)}")


def radnet_positive(slice_positive: np.ndarray, min_run: int = RADNET_MIN_RUN) -> np.ndarray:
    """RADnet decision per class from boolean slice decisions (n_slices, n_classes): a run of >= ``min_run``."""
    b = np.asarray(slice_positive, dtype=bool)
    if b.ndim != 2:
        raise InputError(f"slice decisions must be (n_slices, n_classes), got shape {b.shape}")
    return consecutive_score(b.astype(np.float64), min_run) >= 1.0
