"""Metrics against scikit-learn on fixed vectors, and the RSNA weighted log loss against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from ichd.constants import LABEL_WEIGHTS, LABELS
from ichd.evaluation.metrics import (
    EPS,
    CumulativeMetrics,
    average_precision,
    choose_threshold,
    choose_thresholds,
    class_summary,
    roc_auc,
    scan_aggregate,
    threshold_metrics,
    weighted_log_loss,
)

# fixed vectors with ties in the scores
Y = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0])
P = np.array([0.9, 0.1, 0.8, 0.4, 0.4, 0.2, 0.7, 0.55, 0.3, 0.05, 0.4, 0.6, 0.1, 0.2, 0.95, 0.55])


def test_weighted_log_loss_hand_example() -> None:
    y = np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
    p = np.array([[0.8, 0.1, 0.1, 0.1, 0.1, 0.1], [0.3, 0.1, 0.1, 0.1, 0.1, 0.0]])
    # per class mean of -(y ln p + (1-y) ln(1-p)), by hand:
    any_ = (-math.log(0.8) - math.log(0.7)) / 2
    sub = -math.log(0.9)
    sdh = (-math.log(0.9) - math.log(EPS)) / 2  # p = 0 for a positive is clipped to 1e-15
    expected = (2 * any_ + 4 * sub + sdh) / 7
    total, per = weighted_log_loss(y, p, per_class=True)
    assert total == pytest.approx(expected, rel=1e-12)
    assert per == pytest.approx([any_, sub, sub, sub, sub, sdh], rel=1e-12)
    assert weighted_log_loss(y, p) == pytest.approx(expected, rel=1e-12)
    # the same sum with the logs evaluated by hand (6-7 digits), dominated by the clipped term ln(1e15)/2
    assert total == pytest.approx((2 * 0.2899092 + 4 * 0.1053605 + 17.3220685) / 7, abs=1e-6)


def test_weighted_log_loss_matches_kaggle_rowwise_and_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random((50, 6)) < 0.15).astype(float)
    p = rng.random((50, 6))
    w = np.asarray(LABEL_WEIGHTS)
    # Kaggle: flatten all (row, class) pairs with their class weight
    kaggle = skm.log_loss(y.ravel(), p.ravel(), sample_weight=np.tile(w, 50), labels=[0, 1])
    assert weighted_log_loss(y, p) == pytest.approx(kaggle, rel=1e-10)
    _, per = weighted_log_loss(y, p, per_class=True)
    for c in range(6):
        assert per[c] == pytest.approx(skm.log_loss(y[:, c], p[:, c], labels=[0, 1]), rel=1e-10)


def test_weighted_log_loss_validates_shapes() -> None:
    with pytest.raises(ValueError):
        weighted_log_loss(np.zeros(6), np.zeros(6))
    with pytest.raises(ValueError):
        weighted_log_loss(np.zeros((2, 6)), np.zeros((2, 6)), weights=(1, 1))
    assert math.isnan(weighted_log_loss(np.zeros((0, 6)), np.zeros((0, 6))))


def test_auc_and_average_precision_match_sklearn() -> None:
    assert roc_auc(Y, P) == pytest.approx(skm.roc_auc_score(Y, P), rel=1e-12)
    assert average_precision(Y, P) == pytest.approx(skm.average_precision_score(Y, P), rel=1e-12)
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.1
    s = np.round(rng.random(500) + y * 0.3, 2)  # many ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), rel=1e-12)
    assert math.isnan(roc_auc(np.zeros(5), np.arange(5)))
    assert math.isnan(average_precision(np.zeros(5), np.arange(5)))


@pytest.mark.parametrize("t", [0.05, 0.4, 0.5, 0.55, 0.96])
def test_threshold_metrics_match_sklearn(t: float) -> None:
    m = threshold_metrics(Y, P, t)
    pred = (P >= t).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(Y, pred, labels=[0, 1]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(Y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - Y, 1 - pred))
    assert m["npv"] == pytest.approx(skm.precision_score(1 - Y, 1 - pred, zero_division=np.nan), nan_ok=True)
    if pred.sum():
        assert m["precision"] == pytest.approx(skm.precision_score(Y, pred))
    else:
        assert math.isnan(m["precision"])
    assert m["f1"] == pytest.approx(skm.f1_score(Y, pred))


def test_class_summary_matches_sklearn() -> None:
    s = class_summary(Y, P)
    assert s["log_loss"] == pytest.approx(skm.log_loss(Y, P))
    assert s["auc"] == pytest.approx(skm.roc_auc_score(Y, P))
    assert (s["n"], s["n_positive"], s["n_negative"]) == (16, 6, 10)
    assert s["prevalence"] == pytest.approx(6 / 16)


def test_youden_threshold_maximises_j_like_sklearn_roc_curve() -> None:
    fpr, tpr, thr = skm.roc_curve(Y, P)
    j = tpr - fpr
    best = thr[np.argmax(j)]
    t = choose_threshold(Y, P, "youden")
    assert t == pytest.approx(best)
    m = threshold_metrics(Y, P, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(j.max())


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_sensitivity_threshold_is_highest_meeting_target(target: float) -> None:
    t = choose_threshold(Y, P, "sensitivity", target)
    assert threshold_metrics(Y, P, t)["sensitivity"] >= target
    higher = np.unique(P[P > t])
    if higher.size:  # the next higher distinct score no longer reaches the target
        assert threshold_metrics(Y, P, higher.min())["sensitivity"] < target


def test_choose_thresholds_per_label_and_undefined_cases() -> None:
    y = np.zeros((8, 6))
    y[:4, 0] = 1
    p = np.linspace(0.1, 0.8, 48).reshape(8, 6)
    th = choose_thresholds(y, p, "youden")
    assert list(th) == list(LABELS)
    assert math.isfinite(th["any"]) and math.isnan(th["epidural"])
    assert math.isnan(choose_threshold(np.zeros(4), np.ones(4), "sensitivity"))
    assert choose_threshold(Y, P, "fixed", 0.5) == 0.5
    with pytest.raises(ValueError):
        choose_threshold(Y, P, "magic")
    nan_metrics = threshold_metrics(Y, P, math.nan)
    assert math.isnan(nan_metrics["sensitivity"]) and math.isnan(nan_metrics["tp"])


def test_scan_aggregate_takes_max() -> None:
    y = np.array([[0, 0], [1, 0], [0, 0], [0, 1]])
    p = np.array([[0.1, 0.2], [0.7, 0.1], [0.3, 0.3], [0.2, 0.9]])
    ids, ys, ps = scan_aggregate(y, p, ["b", "b", "a", "a"])
    assert ids == ["b", "a"]
    np.testing.assert_array_equal(ys, [[1, 0], [0, 1]])
    np.testing.assert_allclose(ps, [[0.7, 0.2], [0.3, 0.9]])


def test_cumulative_metrics_equals_one_shot() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((40, 6)) < 0.15).astype(float)
    p = rng.random((40, 6))
    scans = np.repeat(np.arange(8), 5)
    cm = CumulativeMetrics()
    for i in range(0, 40, 7):
        cm.update(p[i:i + 7], y[i:i + 7], scans[i:i + 7])
    out = cm.compute()
    assert out["weighted_log_loss"] == pytest.approx(weighted_log_loss(y, p))
    for c, lab in enumerate(LABELS):
        assert out[f"auc/{lab}"] == pytest.approx(skm.roc_auc_score(y[:, c], p[:, c]))
    _, ys, ps = scan_aggregate(y, p, scans)
    assert 0 < ys[:, 0].sum() < 8
    for c, lab in enumerate(LABELS):
        assert out[f"scan/auc/{lab}"] == pytest.approx(roc_auc(ys[:, c], ps[:, c]), nan_ok=True)
    assert out["n"] == 40 and out["scan/n"] == 8
    cm.reset()
    assert cm.n == 0 and math.isnan(cm.compute()["weighted_log_loss"])


def test_cumulative_metrics_torch_and_logits() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    y = (rng.random((10, 6)) < 0.5).astype(np.float32)
    logits = rng.normal(size=(10, 6)).astype(np.float32)
    cm = CumulativeMetrics(from_logits=True)
    cm.update(torch.from_numpy(logits), torch.from_numpy(y))
    out = cm.compute()
    assert out["weighted_log_loss"] == pytest.approx(weighted_log_loss(y, 1 / (1 + np.exp(-logits))), rel=1e-6)
    assert "scan/auc/any" not in out
    with pytest.raises(ValueError):
        cm.update(np.zeros((2, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError):
        CumulativeMetrics().update(np.full((1, 6), np.nan), np.zeros((1, 6)))


def test_missing_labels_are_masked_in_metrics() -> None:
    from ichd.evaluation.metrics import CumulativeMetrics, roc_auc, weighted_log_loss

    rng = np.random.default_rng(0)
    y = (rng.random((50, 6)) < 0.15).astype(float)
    p = rng.random((50, 6))
    y_nan = y.copy()
    y_nan[4] = np.nan
    keep = np.arange(50) != 4
    assert roc_auc(y_nan[:, 0], p[:, 0]) == pytest.approx(roc_auc(y[keep, 0], p[keep, 0]))
    assert weighted_log_loss(y_nan, p) == pytest.approx(weighted_log_loss(y[keep], p[keep]))
    acc = CumulativeMetrics()
    acc.update(p, y_nan, [f"scan{i // 2}" for i in range(50)])
    m = acc.compute()
    ref = CumulativeMetrics()
    ref.update(p[keep], y[keep], [f"scan{i // 2}" for i in range(50) if i != 4])
    r = ref.compute()
    for key in ("weighted_log_loss", "auc/any", "scan/auc/any", "mean_auc"):
        assert np.isfinite(r[key]) and m[key] == pytest.approx(r[key]), key


def test_specificity_threshold() -> None:
    from ichd.evaluation.metrics import choose_threshold

    y = np.array([0] * 10 + [1] * 3)
    p = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.6, 0.9, 0.5, 0.7, 0.95])
    t = choose_threshold(y, p, "specificity", 0.9)  # one false positive allowed: above the 2nd-highest negative
    assert t == pytest.approx(0.7)
    m = threshold_metrics(y, p, t)
    assert m["specificity"] >= 0.9 and m["fp"] == 1
    # the lowest such threshold: one step lower would break the target
    assert threshold_metrics(y, p, 0.6)["specificity"] < 0.9
    assert choose_threshold(y, p, "specificity", 1.0) == pytest.approx(0.95)  # above every negative
    assert choose_threshold(np.zeros(4), [0.1, 0.2, 0.3, 0.4], "specificity", 1.0) > 0.4  # nothing called
    assert math.isnan(choose_threshold(np.ones(3), [0.1, 0.2, 0.3], "specificity", 0.9))
    with pytest.raises(ValueError, match="specificity"):
        choose_threshold(y, p, "specificity", 0.0)


def test_call_metrics_and_extra_subtype_rate() -> None:
    from ichd.evaluation.metrics import call_metrics, extra_subtype_rate

    y = np.array([1, 0, 1, 0])
    m = call_metrics(y, [True, True, False, False], 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1) and m["threshold"] == 0.5
    assert math.isnan(call_metrics(y, [True] * 4, float("nan"))["sensitivity"])
    labels = np.array([[1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=float)
    called = np.array([[1, 0, 1, 0, 0, 1],     # SDH extra
                       [1, 1, 0, 0, 0, 0],     # exact
                       [1, 0, 0, 0, 0, 0]], dtype=bool)  # "any" false positive, no subtype: not extra
    r = extra_subtype_rate(labels, called)
    assert r == {"rate": pytest.approx(1 / 3), "n_with_extra": 1, "n": 3, "n_called_subtypes": 3,
                 "n_extra_subtypes": 1}
    labels[0, 5] = np.nan  # a missing label never counts as extra
    assert extra_subtype_rate(labels, called)["n_with_extra"] == 0
