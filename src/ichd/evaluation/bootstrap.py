"""Seeded cluster (patient-level) bootstrap with percentile confidence intervals.

Slices of one patient are strongly correlated, so resampling slices would give intervals that are far too
narrow. Instead, each replicate draws ``n_groups`` groups (patients) with replacement and keeps **all** rows of
every drawn group (a patient drawn twice counts twice). The statistic is recomputed on every replicate; the
interval is the percentile interval (2.5th and 97.5th percentiles for 95 %).

A replicate in which a metric is undefined (``nan``: e.g. AUC when the drawn patients contain only one class)
is skipped **for that metric**; :class:`Interval` records how many replicates were used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichd.utils.progress import progress

#: Defaults used by the CLI and the report.
DEFAULT_N_BOOT: int = 1000
DEFAULT_SEED: int = 0
DEFAULT_CONFIDENCE: float = 0.95


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval; ``low``/``high`` are ``nan`` when no replicate was usable."""

    low: float
    high: float
    n_valid: int
    n_boot: int

    def to_list(self) -> list[float | None]:
        """``[low, high]`` with ``None`` for undefined bounds (JSON-friendly)."""
        return [None if math.isnan(self.low) else self.low, None if math.isnan(self.high) else self.high]


class GroupIndex:
    """Rows grouped by a key (patient id); turns a draw of group numbers into row indices."""

    def __init__(self, keys: Sequence[Any]) -> None:
        arr = np.asarray([str(k) for k in keys], dtype=object)
        self.names, inverse = np.unique(arr.astype(str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.names))
        bounds = np.r_[0, np.cumsum(counts)]
        self._rows = [order[bounds[i]:bounds[i + 1]] for i in range(len(self.names))]
        self.n_rows = len(arr)
        #: group number of every row
        self.row_groups = inverse.astype(np.int64)

    @property
    def n_groups(self) -> int:
        return len(self.names)

    def position(self, name: str) -> int:
        """Index of group ``name`` (for mapping one grouping onto another)."""
        i = int(np.searchsorted(self.names, name))
        if i >= len(self.names) or self.names[i] != name:
            raise KeyError(name)
        return i

    def row_weights(self, draw: np.ndarray) -> np.ndarray:
        """How often each row occurs in the resample ``draw`` (float; equivalent to :meth:`rows` for any metric
        that accepts integer case weights, without copying the data)."""
        counts = np.bincount(draw, minlength=self.n_groups).astype(np.float64)
        return counts[self.row_groups]

    def rows(self, draw: np.ndarray) -> np.ndarray:
        """Row indices of the drawn groups, each repeated as often as it was drawn."""
        if len(draw) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self._rows[g] for g in draw])


def draws(n_groups: int, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The ``(n_boot, n_groups)`` group draws of a seeded bootstrap (same seed -> same draws)."""
    if n_groups < 1:
        raise ValueError("bootstrap needs at least one group")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_groups, size=(n_boot, n_groups))


def percentile_interval(values: Sequence[float], n_boot: int,
                        confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Percentile interval of the finite ``values`` (the usable replicates)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(math.nan, math.nan, 0, n_boot)
    a = (1.0 - confidence) / 2.0
    low, high = np.quantile(v, [a, 1.0 - a])
    return Interval(float(low), float(high), int(v.size), n_boot)


def bootstrap(
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n_groups: int,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    desc: str = "bootstrap",
) -> dict[str, Interval]:
    """Run ``statistic(draw)`` on ``n_boot`` seeded draws of ``n_groups`` groups with replacement.

    ``statistic`` receives the array of drawn group numbers (use :meth:`GroupIndex.rows` to get rows) and
    returns ``{metric name: value}``; ``nan`` values are skipped per metric. Returns one :class:`Interval` per
    metric name seen.
    """
    all_draws = draws(n_groups, n_boot, seed)
    collected: dict[str, list[float]] = {}
    for draw in progress(all_draws, desc=desc, total=n_boot, unit="rep"):
        for key, value in statistic(draw).items():
            collected.setdefault(key, []).append(float(value))
    return {k: percentile_interval(v, n_boot, confidence) for k, v in collected.items()}
