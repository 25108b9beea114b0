"""TTA views and the choice of flagged slices."""

from __future__ import annotations

import numpy as np

from ichd.constants import LABELS
from ichd.inference.evidence import select_flagged
from ichd.inference.tta import hflip, shift, tta_views
from ichd.types import Prediction


def test_shift_moves_content_and_fills_with_zero():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4) + 1
    y = shift(x, 1, 2)
    assert y[0, 0, 1, 2] == x[0, 0, 0, 0] and y[0, 0, 3, 3] == x[0, 0, 2, 1]
    assert (y[0, 0, 0] == 0).all() and (y[0, 0, :, :2] == 0).all()
    assert (shift(shift(x, -1, -1), 1, 1)[..., 1:, 1:] == x[..., 1:, 1:]).all()


def test_views():
    x = np.random.default_rng(0).integers(0, 255, size=(2, 3, 64, 64), dtype=np.uint8)
    assert [v.name for v in tta_views(64, enabled=False)] == ["identity"]
    views = tta_views(64)
    assert [v.name for v in views] == ["identity", "hflip", "shift(+2,+2)", "shift(-2,-2)"]
    assert (views[1].apply(x) == x[..., ::-1]).all() and (hflip(hflip(x)) == x).all()
    assert all(v.apply(x).shape == x.shape and v.apply(x).dtype == x.dtype for v in views)


def _pred(slice_probs, thresholds=0.5) -> Prediction:
    p = np.asarray(slice_probs, dtype=np.float32)
    n = p.shape[0]
    return Prediction(slice_probs=p, scan_probs=p.max(axis=0), thresholds=dict.fromkeys(LABELS, thresholds),
                      model={"name": "m", "version": "1", "sha256": "0" * 64}, study_instance_uid="1.2",
                      series_instance_uid="1.3", sop_instance_uids=[f"1.4.{i}" for i in range(n)],
                      positions_mm=np.arange(n, dtype=float))


def test_select_flagged_covers_positive_subtypes_then_any():
    p = np.zeros((6, 6))
    p[:, 0] = [0.1, 0.6, 0.9, 0.7, 0.2, 0.55]  # any
    p[3, 5] = 0.8  # subdural peaks on slice 3
    p[5, 1] = 0.6  # epidural peaks on slice 5
    flagged = select_flagged(_pred(p), max_slices=4)
    assert [i for i, _, _ in flagged] == [1, 2, 3, 5]
    labels = {i: lab for i, lab, _ in flagged}
    assert labels[3] == "subdural" and labels[5] == "epidural" and labels[2] == "any"
    assert [i for i, _, _ in select_flagged(_pred(p), max_slices=2)] == [3, 5]


def test_nothing_flagged_below_threshold_unless_one_is_required():
    p = np.full((4, 6), 0.1)
    p[2, 0] = 0.3
    assert select_flagged(_pred(p)) == []
    assert select_flagged(_pred(p), at_least_one=True) == [(2, "any", np.float32(0.3))]
