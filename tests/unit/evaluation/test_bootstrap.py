"""Patient-level bootstrap: seeded, reproducible, resamples whole groups, counts usable replicates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ichd.evaluation.bootstrap import GroupIndex, bootstrap, draws, percentile_interval
from ichd.evaluation.metrics import roc_auc


def test_draws_are_seeded() -> None:
    a = draws(10, 50, seed=0)
    np.testing.assert_array_equal(a, draws(10, 50, seed=0))
    assert not np.array_equal(a, draws(10, 50, seed=1))
    assert a.shape == (50, 10) and a.min() >= 0 and a.max() < 10


def test_group_index_keeps_groups_whole() -> None:
    keys = ["p2", "p1", "p2", "p3", "p1", "p2"]
    g = GroupIndex(keys)
    assert list(g.names) == ["p1", "p2", "p3"]
    rows = g.rows(np.array([1, 1, 2]))  # p2 twice, p3 once
    assert sorted(rows.tolist()) == [0, 0, 2, 2, 3, 5, 5]


def test_bootstrap_reproducible_and_counts_undefined_replicates() -> None:
    # 6 patients; only patient 0 has positives, so AUC is undefined whenever patient 0 is not drawn
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    p = np.linspace(0.9, 0.1, 12)
    patients = np.repeat(np.arange(6), 2)
    g = GroupIndex(patients)

    def stat(draw: np.ndarray) -> dict[str, float]:
        rows = g.rows(draw)
        return {"auc": roc_auc(y[rows], p[rows]), "mean_p": float(p[rows].mean())}

    r1 = bootstrap(stat, g.n_groups, n_boot=200, seed=0)
    r2 = bootstrap(stat, g.n_groups, n_boot=200, seed=0)
    assert r1 == r2
    expected_valid = sum(0 in d for d in draws(6, 200, seed=0))
    assert r1["auc"].n_valid == expected_valid < 200
    assert r1["mean_p"].n_valid == 200
    assert r1["mean_p"].low < p.mean() < r1["mean_p"].high


def test_percentile_interval() -> None:
    iv = percentile_interval(list(range(101)) + [math.nan], n_boot=102)
    assert (iv.low, iv.high, iv.n_valid) == (pytest.approx(2.5), pytest.approx(97.5), 101)
    empty = percentile_interval([math.nan], n_boot=1)
    assert empty.n_valid == 0 and empty.to_list() == [None, None]
