"""Classification metrics: the RSNA 2019 weighted log loss, per-class binary metrics, thresholds, cumulative metrics.

Conventions used by every function here:

* ``y`` holds 0/1 labels and ``p`` probabilities in [0, 1]; 2-D inputs are ``(n_rows, n_classes)`` in
  :data:`ichd.constants.LABELS` order.
* A case is called positive when ``p >= threshold`` (never ``>``), for every operating point.
* Undefined values (AUC with a single class present, sensitivity without positives, ...) are ``nan``, never an
  exception, so that bootstrap replicates and small validation sets keep working; callers decide what to report.

The RSNA 2019 metric
--------------------
For labels ``y[i, c]`` and probabilities ``p[i, c]`` (clipped to ``[EPS, 1 - EPS]`` with ``EPS = 1e-15``)::

    logloss[i, c] = -(y[i, c] * ln p[i, c] + (1 - y[i, c]) * ln(1 - p[i, c]))
    L_c           = mean_i logloss[i, c]                       (per-class log loss)
    WLL           = sum_c w_c * L_c / sum_c w_c                 with w = LABEL_WEIGHTS = (2, 1, 1, 1, 1, 1)

This equals the challenge's definition (a row-wise weighted mean of the six binary log losses, averaged over
rows), because every row carries the same weights. The training loss
(:class:`ichd.training.losses.WeightedBCEWithLogits`) must equal :func:`weighted_log_loss` on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ichd.constants import LABEL_WEIGHTS, LABELS

#: Probability clipping used by every log loss here (the RSNA/Kaggle value).
EPS: float = 1e-15

#: Names of the per-threshold metrics returned by :func:`threshold_metrics` (besides the counts).
THRESHOLD_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1")


def _as_float_array(x: Any) -> np.ndarray:
    """Convert numpy arrays, lists or torch tensors to a float64 numpy array (torch via ``detach().cpu()``)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_pair(y: np.ndarray, p: np.ndarray) -> None:
    if y.shape != p.shape:
        raise ValueError(f"labels have shape {y.shape} but probabilities have shape {p.shape}")


def _known_pairs(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flattened ``(y > 0.5, score)`` over the rows whose label is known (``NaN`` labels are missing, dropped)."""
    y = _as_float_array(y_true).ravel()
    s = _as_float_array(y_score).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels have shape {y.shape} but scores have shape {s.shape}")
    known = ~np.isnan(y)
    if not known.all():
        y, s = y[known], s[known]
    return y > 0.5, s


def binary_log_loss(y_true: Any, y_prob: Any, *, eps: float = EPS) -> np.ndarray:
    """Element-wise binary cross-entropy ``-(y ln p + (1-y) ln(1-p))`` with ``p`` clipped to ``[eps, 1-eps]``."""
    y = _as_float_array(y_true)
    p = np.clip(_as_float_array(y_prob), eps, 1.0 - eps)
    _check_pair(y, p)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def weighted_log_loss(
    y_true: Any,
    y_prob: Any,
    weights: Sequence[float] = LABEL_WEIGHTS,
    per_class: bool = False,
    *,
    eps: float = EPS,
) -> float | tuple[float, np.ndarray]:
    """The RSNA 2019 weighted multi-label log loss (see the module docstring for the formula).

    Args:
        y_true: 0/1 labels, shape ``(n, C)``; ``NaN`` = missing label, masked (the class mean is over its
            known rows, and a class without known rows drops out of the weighted sum).
        y_prob: probabilities, shape ``(n, C)``; clipped to ``[eps, 1 - eps]``.
        weights: one weight per class (default :data:`LABEL_WEIGHTS`: ``any`` 2, subtypes 1).
        per_class: also return the per-class mean log losses ``L_c``.
        eps: clipping epsilon (default ``1e-15``).

    Returns:
        ``WLL`` as a float, or ``(WLL, L)`` with ``L`` of shape ``(C,)`` when ``per_class``. ``nan`` for no rows.
    """
    y = _as_float_array(y_true)
    p = _as_float_array(y_prob)
    if y.ndim != 2:
        raise ValueError(f"weighted_log_loss expects 2-D (n, C) arrays, got shape {y.shape}")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (y.shape[1],):
        raise ValueError(f"{len(w)} weights given for {y.shape[1]} classes")
    if y.shape[0] == 0:
        per = np.full(y.shape[1], np.nan)
        return (math.nan, per) if per_class else math.nan
    known = ~np.isnan(y)
    if known.all():
        per = binary_log_loss(y, p, eps=eps).mean(axis=0)
        total = float(np.dot(w, per) / w.sum())
        return (total, per) if per_class else total
    # Missing labels (NaN) are masked: per-class means over known rows; classes with none drop out.
    elem = np.where(known, binary_log_loss(np.where(known, y, 0.0), p, eps=eps), 0.0)
    count = known.sum(axis=0)
    per = np.divide(elem.sum(axis=0), count, out=np.full(y.shape[1], np.nan), where=count > 0)
    ok = count > 0
    total = float(np.dot(w[ok], per[ok]) / w[ok].sum()) if ok.any() and w[ok].sum() > 0 else math.nan
    return (total, per) if per_class else total


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); ``nan`` unless both classes occur.

    Equals :func:`sklearn.metrics.roc_auc_score` for binary labels, without its per-call overhead (the
    bootstrap calls this thousands of times).
    """
    y, s = _known_pairs(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # mid-ranks (1-based) of the sorted scores: tied scores share the mean of their positions
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ends = np.r_[starts[1:], s_sorted.size]
    mid_ranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    rank_sum = float(mid_ranks[y[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(y_true: Any, y_score: Any) -> float:
    """Average precision (area under the step precision-recall curve, as scikit-learn defines it).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order; ``nan`` without
    positives.
    """
    y, s = _known_pairs(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tps = np.cumsum(y_sorted)
    fps = np.cumsum(~y_sorted)
    # keep the last index of each run of equal scores (a threshold includes all tied cases)
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tp, fp = tps[last], fps[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def confusion_counts(y_true: Any, y_prob: Any, threshold: float) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` when a case is called positive at ``p >= threshold``."""
    y, p = _known_pairs(y_true, y_prob)
    pred = p >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    return tp, fp, tn, fn


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def metrics_from_counts(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Accuracy, sensitivity (recall), specificity, precision (PPV), NPV and F1 from confusion counts (integer
    counts, or weighted counts in the bootstrap)."""
    sens = _ratio(tp, tp + fn)
    prec = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "precision": prec,
        "npv": _ratio(tn, tn + fn),
        "f1": f1,
    }


def threshold_metrics(y_true: Any, y_prob: Any, threshold: float) -> dict[str, float]:
    """The metrics of :data:`THRESHOLD_METRICS` plus ``tp, fp, tn, fn`` and ``threshold`` at one threshold.

    A ``nan`` threshold gives ``nan`` metrics (and zero counts are not reported as if they were measured).
    """
    if not np.isfinite(threshold):
        return call_metrics(y_true, np.zeros(np.shape(y_true), dtype=bool), threshold)
    y, p = _known_pairs(y_true, y_prob)
    return call_metrics(y, p >= threshold, threshold)


def call_metrics(y_true: Any, called: Any, threshold: float) -> dict[str, float]:
    """Like :func:`threshold_metrics` but from the calls themselves (boolean, one per row), e.g. the subtype calls
    gated by ``any`` (:func:`ichd.calls.calls`); ``threshold`` is only recorded. A ``nan`` threshold gives ``nan``
    metrics. Rows with a ``NaN`` label are dropped."""
    if not np.isfinite(threshold):
        return {**{k: math.nan for k in THRESHOLD_METRICS}, "tp": math.nan, "fp": math.nan, "tn": math.nan,
                "fn": math.nan, "threshold": math.nan}
    y, c = _known_pairs(y_true, np.asarray(called, dtype=np.float64))
    c = c > 0.5
    tp, fp = int(np.sum(c & y)), int(np.sum(c & ~y))
    fn, tn = int(np.sum(~c & y)), int(np.sum(~c & ~y))
    return {**metrics_from_counts(tp, fp, tn, fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "threshold": float(threshold)}


def extra_subtype_rate(y_true: Any, called: Any, labels: Sequence[str] = LABELS) -> dict[str, float]:
    """How often a case (scan or slice) gets a subtype called that its labels do not have.

    ``y_true`` (n, C) labels and ``called`` (n, C) boolean calls, columns in ``labels`` order; every column but
    ``any`` is a subtype. A subtype whose label is missing (``NaN``) never counts as extra. Returns
    ``{"rate", "n_with_extra", "n", "n_called_subtypes", "n_extra_subtypes"}`` (``rate`` ``nan`` for no rows).
    """
    y = _as_float_array(y_true)
    c = np.asarray(called, dtype=bool)
    _check_pair(y, c.astype(np.float64))
    sub = [i for i, lab in enumerate(labels) if lab != "any"]
    extra = c[:, sub] & (y[:, sub] == 0)  # NaN == 0 is False
    rows = extra.any(axis=1)
    n = int(y.shape[0])
    return {"rate": float(rows.mean()) if n else math.nan, "n_with_extra": int(rows.sum()), "n": n,
            "n_called_subtypes": int(c[:, sub].sum()), "n_extra_subtypes": int(extra.sum())}


def class_summary(y_true: Any, y_prob: Any, *, eps: float = EPS) -> dict[str, float]:
    """Threshold-free metrics of one class: AUC, average precision, log loss, prevalence and counts (over the
    rows with a known label)."""
    yb, p = _known_pairs(y_true, y_prob)
    y = yb.astype(np.float64)
    n = int(y.size)
    n_pos = int(np.sum(y > 0.5))
    return {
        "auc": roc_auc(y, p),
        "average_precision": average_precision(y, p),
        "log_loss": float(binary_log_loss(y, p, eps=eps).mean()) if n else math.nan,
        "prevalence": n_pos / n if n else math.nan,
        "n": n,
        "n_positive": n_pos,
        "n_negative": n - n_pos,
    }


# ----------------------------------------------------------------------------------------------------------
# operating points
# ----------------------------------------------------------------------------------------------------------

#: Threshold selection methods understood by :func:`choose_threshold`.
THRESHOLD_METHODS: tuple[str, ...] = ("fixed", "youden", "sensitivity", "specificity")


def choose_threshold(y_true: Any, y_prob: Any, method: str = "sensitivity", target: float = 0.95) -> float:
    """Pick one class's decision threshold on (validation) data; a case is positive when ``p >= threshold``.

    Methods:
        * ``"fixed"``: ``target`` itself (e.g. 0.5).
        * ``"youden"``: the threshold maximising Youden's J = sensitivity + specificity - 1 over the distinct
          scores; ties go to the highest such threshold. ``nan`` unless both classes occur.
        * ``"sensitivity"``: the highest threshold whose sensitivity is at least ``target`` (i.e. the
          ``ceil(target * n_pos)``-th highest positive score). ``nan`` without positives.
        * ``"specificity"``: the lowest threshold whose specificity is at least ``target``: the lowest score of
          the data above the ``(m+1)``-th highest negative score, ``m = floor((1 - target) * n_neg)`` false
          positives allowed (just above that negative score when no case scores higher). ``nan`` without
          negatives.

    Apply the result unchanged to other data (test set) to get an honest operating point.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    if method == "fixed":
        return float(target)
    y, p = _known_pairs(y_true, y_prob)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if method == "sensitivity":
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
        if n_pos == 0:
            return math.nan
        k = max(1, math.ceil(target * n_pos - 1e-9))
        return float(np.sort(p[y])[::-1][k - 1])
    if method == "specificity":
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target specificity must be in (0, 1], got {target}")
        if n_neg == 0:
            return math.nan
        m = math.floor((1.0 - target) * n_neg + 1e-9)
        if m >= n_neg:
            return float(p.min())
        bound = float(np.sort(p[~y])[::-1][m])  # the highest negative score that must not be called
        above = p[p > bound]
        return float(above.min()) if above.size else float(np.nextafter(bound, np.inf))
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p_sorted)), p_sorted.size - 1]
    tpr = np.cumsum(y_sorted)[last] / n_pos
    fpr = np.cumsum(~y_sorted)[last] / n_neg
    best = int(np.argmax(tpr - fpr))
    return float(p_sorted[last[best]])


def choose_thresholds(
    y_true: Any,
    y_prob: Any,
    method: str = "sensitivity",
    target: float = 0.95,
    labels: Sequence[str] = LABELS,
) -> dict[str, float]:
    """:func:`choose_threshold` for every column of ``(n, C)`` arrays; returns ``{label: threshold}``."""
    y = _as_float_array(y_true)
    p = _as_float_array(y_prob)
    _check_pair(y, p)
    if y.ndim != 2 or y.shape[1] != len(labels):
        raise ValueError(f"expected (n, {len(labels)}) arrays, got shape {y.shape}")
    return {lab: choose_threshold(y[:, c], p[:, c], method, target) for c, lab in enumerate(labels)}


# ----------------------------------------------------------------------------------------------------------
# scan level and cumulative metrics for training loops
# ----------------------------------------------------------------------------------------------------------


def scan_aggregate(
    y_true: np.ndarray, y_prob: np.ndarray, scan_ids: Sequence[Any]
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Slice rows -> scan rows: label = max over the scan's slices (any slice positive), score = max probability.

    Returns ``(scan_ids_in_first_seen_order, y_scan, p_scan)``. Use the model's own scan output instead of the
    max when it has one (the report does).
    """
    y = _as_float_array(y_true)
    p = _as_float_array(y_prob)
    ids = np.asarray(list(scan_ids), dtype=object)
    if ids.shape[0] != y.shape[0]:
        raise ValueError(f"{ids.shape[0]} scan ids for {y.shape[0]} rows")
    uniq, first, inverse = np.unique(ids.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first)
    ncls = y.shape[1] if y.ndim == 2 else 1
    y2 = y.reshape(len(ids), ncls)
    p2 = p.reshape(len(ids), ncls)
    ys = np.full((len(uniq), ncls), -np.inf)
    ps = np.full((len(uniq), ncls), -np.inf)
    np.fmax.at(ys, inverse, y2)  # fmax: a missing (NaN) slice label does not hide its scan's known ones
    np.maximum.at(ps, inverse, p2)
    ys[np.isneginf(ys)] = np.nan  # a scan whose labels are all missing
    ys, ps = ys[order], ps[order]
    if y.ndim == 1:
        ys, ps = ys[:, 0], ps[:, 0]
    return [ids[first[i]] for i in order], ys, ps


class CumulativeMetrics:
    """Collects batches of predictions during a validation pass and computes the summary metrics at the end.

    Usage in a training loop::

        cm = CumulativeMetrics()
        for x, y, scan_ids in val_loader:
            cm.update(torch.sigmoid(model(x)), y, scan_ids)
        metrics = cm.compute()   # {"weighted_log_loss": ..., "auc/any": ..., "scan/auc/any": ..., ...}
        cm.reset()

    Args:
        labels: class names, in column order (default :data:`LABELS`).
        weights: weights of the weighted log loss (default :data:`LABEL_WEIGHTS`).
        from_logits: ``update`` receives logits; a sigmoid is applied.

    :meth:`compute` returns a flat ``dict[str, float]`` (handy for loggers): ``weighted_log_loss``,
    ``log_loss/<label>``, ``auc/<label>``, ``mean_auc`` (over classes with a defined AUC), ``n``, and, when
    scan ids were given for every batch, ``scan/auc/<label>`` and ``scan/mean_auc`` with scan label = any
    slice positive and scan score = max slice probability.
    """

    def __init__(
        self,
        labels: Sequence[str] = LABELS,
        weights: Sequence[float] = LABEL_WEIGHTS,
        *,
        from_logits: bool = False,
    ) -> None:
        if len(weights) != len(labels):
            raise ValueError(f"{len(weights)} weights for {len(labels)} labels")
        self.labels = tuple(labels)
        self.weights = tuple(float(w) for w in weights)
        self.from_logits = from_logits
        self.reset()

    def reset(self) -> None:
        """Forget everything collected so far."""
        self._probs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._scan_ids: list[Any] = []
        self._scans_complete = True

    def update(self, probs: Any, targets: Any, scan_ids: Sequence[Any] | None = None) -> None:
        """Add one batch: ``probs`` and ``targets`` of shape ``(B, C)`` (numpy or torch), optional scan ids."""
        p = _as_float_array(probs)
        t = _as_float_array(targets)
        if p.ndim == 1:
            p, t = p[None, :], t[None, :]
        if p.shape != t.shape or p.shape[1] != len(self.labels):
            raise ValueError(
                f"expected probs and targets of shape (B, {len(self.labels)}), got {p.shape} and {t.shape}")
        if self.from_logits:
            p = 1.0 / (1.0 + np.exp(-p))
        if not np.all(np.isfinite(p)):
            raise ValueError("probabilities contain NaN or infinite values")
        self._probs.append(p)
        self._targets.append(t)
        if scan_ids is None:
            self._scans_complete = False
        else:
            ids = list(scan_ids.tolist() if hasattr(scan_ids, "tolist") else scan_ids)
            if len(ids) != p.shape[0]:
                raise ValueError(f"{len(ids)} scan ids for a batch of {p.shape[0]}")
            self._scan_ids.extend(ids)

    @property
    def n(self) -> int:
        """Number of rows collected."""
        return int(sum(x.shape[0] for x in self._probs))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows collected so far as ``(targets, probs)``."""
        if not self._probs:
            empty = np.zeros((0, len(self.labels)))
            return empty, empty.copy()
        return np.concatenate(self._targets), np.concatenate(self._probs)

    def compute(self) -> dict[str, float]:
        """The metrics over every row collected since the last :meth:`reset` (see the class docstring)."""
        y, p = self.arrays()
        wll, per = weighted_log_loss(y, p, self.weights, per_class=True)
        out: dict[str, float] = {"weighted_log_loss": float(wll), "n": float(y.shape[0])}
        aucs = []
        for c, lab in enumerate(self.labels):
            out[f"log_loss/{lab}"] = float(per[c])
            auc = roc_auc(y[:, c], p[:, c])
            out[f"auc/{lab}"] = auc
            aucs.append(auc)
        out["mean_auc"] = _nanmean(aucs)
        if self._scans_complete and self._scan_ids and y.shape[0]:
            _, ys, ps = scan_aggregate(y, p, self._scan_ids)
            saucs = []
            for c, lab in enumerate(self.labels):
                auc = roc_auc(ys[:, c], ps[:, c])
                out[f"scan/auc/{lab}"] = auc
                saucs.append(auc)
            out["scan/mean_auc"] = _nanmean(saucs)
            out["scan/n"] = float(len(ys))
        return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
