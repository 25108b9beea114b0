"""Scan rules: max, consecutive (RADnet), topk_mean, smoothed_max; unknown names get a did-you-mean error."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.errors import ConfigError
from ichd.models.scan_rules import SCAN_RULES, scan_probabilities


def test_topk_mean_and_smoothed_max() -> None:
    p = np.array([[0.1, 0.0], [0.9, 0.0], [0.2, 0.3], [0.7, 0.3], [0.8, 0.3]])
    np.testing.assert_allclose(scan_probabilities(p, "topk_mean"), [(0.9 + 0.8 + 0.7) / 3, 0.3])
    np.testing.assert_allclose(scan_probabilities(p, "topk_mean", top_k=1), p.max(axis=0))
    # moving averages: [0.5, 0.4, 0.6, 0.5667, 0.75] (edges: mean of the two slices present)
    np.testing.assert_allclose(scan_probabilities(p, "smoothed_max"), [0.75, 0.3])
    # order matters for smoothed_max, not for topk_mean
    shuffled = p[[1, 0, 4, 2, 3]]
    assert scan_probabilities(shuffled, "topk_mean") == pytest.approx(scan_probabilities(p, "topk_mean"))
    assert scan_probabilities(shuffled, "smoothed_max")[0] != pytest.approx(0.75)


def test_short_scans() -> None:
    one = np.array([[0.4, 0.2]])
    for rule in SCAN_RULES:
        np.testing.assert_allclose(scan_probabilities(one, rule), one[0])
    two = np.array([[0.2, 0.1], [0.6, 0.1]])
    np.testing.assert_allclose(scan_probabilities(two, "topk_mean"), [0.4, 0.1])  # fewer than k: all slices
    np.testing.assert_allclose(scan_probabilities(two, "smoothed_max"), [0.4, 0.1])


def test_unknown_rule_and_bad_k() -> None:
    with pytest.raises(ConfigError, match="smoothed_max"):
        scan_probabilities(np.ones((3, 2)), "smoothed-max")
    with pytest.raises(ConfigError, match="top_k"):
        scan_probabilities(np.ones((3, 2)), "topk_mean", top_k=0)
