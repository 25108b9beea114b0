"""ichd.calls: the one call rule (p >= threshold; a subtype only when "any" is positive) and its users."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ichd.calls import call_dict, calls, gated_subtypes, threshold_vector
from ichd.constants import LABELS
from ichd.types import Prediction

T = dict.fromkeys(LABELS, 0.5)


def test_subtypes_are_gated_by_any_and_probabilities_kept() -> None:
    p = np.array([[0.4, 0.9, 0.1, 0.1, 0.1, 0.6],    # any negative: no subtype called although two are over 0.5
                  [0.5, 0.9, 0.1, 0.1, 0.1, 0.6],    # any at its threshold (>=): subtypes called
                  [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]])
    before = p.copy()
    c = calls(p, T)
    np.testing.assert_array_equal(c[0], [False] * 6)
    np.testing.assert_array_equal(c[1], [True, True, False, False, False, True])
    np.testing.assert_array_equal(c[2], [True] + [False] * 5)
    np.testing.assert_array_equal(p, before)
    assert gated_subtypes(p[0], T) == ["epidural", "subdural"] and gated_subtypes(p[1], T) == []


def test_nan_threshold_never_calls_and_ungated_without_any() -> None:
    t = {**T, "epidural": math.nan}
    assert call_dict([0.9, 0.9, 0.1, 0.1, 0.1, 0.1], t)["epidural"] is False
    np.testing.assert_array_equal(calls([[0.1, 0.9]], [0.5, 0.5], labels=("a", "b")), [[False, True]])
    assert threshold_vector({**T, "any": None})[0] != threshold_vector(T)[0]
    with pytest.raises(ValueError, match="columns"):
        calls(np.zeros((2, 5)), T)


def test_prediction_scan_positive_uses_the_rule() -> None:
    pred = Prediction(slice_probs=np.zeros((2, 6)), scan_probs=np.array([0.2, 0.1, 0.9, 0.1, 0.1, 0.1]),
                      thresholds={**T, "any": 0.3}, model={}, study_instance_uid="1", series_instance_uid="2",
                      sop_instance_uids=["a", "b"], positions_mm=np.zeros(2))
    assert pred.scan_positive == dict.fromkeys(LABELS, False)  # IPH 0.9 > 0.5, but "any" 0.2 < 0.3
    pred.scan_probs[0] = 0.35
    assert pred.scan_positive["intraparenchymal"] is True and pred.scan_positive["any"] is True
