"""``ichd evaluate``: every metric of one set of predictions, with bootstrap intervals, plots and a report.

:func:`evaluate` computes an :class:`Evaluation` (a JSON-ready ``metrics`` dict plus matplotlib figures);
:func:`write_report` writes ``metrics.json``, ``thresholds.json``, ``report.md``, a self-contained
``report.html`` (PNG images base64-embedded) and ``plots/*.png`` into an output folder.

What is reported (slice level always; scan level when scan membership is known):

* the RSNA 2019 weighted log loss, overall and per class (:func:`ichd.evaluation.metrics.weighted_log_loss`);
* per label: AUC, average precision, log loss, ECE, prevalence and counts; at each operating point
  (``0.5``, ``youden``, ``sensitivity`` >= target) accuracy, sensitivity, specificity, precision, NPV, F1 and
  the confusion counts;
* 95 % percentile intervals from a seeded bootstrap that resamples **patients** (:mod:`ichd.evaluation.bootstrap`);
* optional human readers (:mod:`ichd.evaluation.readers`) on the model's scan-level ROC, with kappas;
* the ``policy`` operating point ("any" at the fixed sensitivity, subtypes at ``subtype_specificity``), the calls
  at every point gated by "any" (:mod:`ichd.calls`) and the extra subtype rate;
* for choosing a model: per-fold AUCs and their spread (``fold`` column), per-source AUCs with patient-bootstrap
  intervals (a ``source`` per slice), the scan AUC of every scan rule, and repeated cross-validation
  (``repeats``).

Scan level: scan label = 1 when any slice is positive; scan score = the model's scan output when the
predictions carry one (predict JSON), else the maximum slice probability. Thresholds chosen on the evaluated
data itself are optimistic; :class:`Thresholds` chosen on validation data can be passed in instead.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichd import __version__
from ichd.calls import CALL_RULE
from ichd.calls import calls as make_calls
from ichd.constants import LABEL_ABBREVIATIONS, LABEL_WEIGHTS, LABELS
from ichd.errors import InputError
from ichd.evaluation import bootstrap as bs
from ichd.evaluation.calibration import DEFAULT_BINS, expected_calibration_error, reliability_curve
from ichd.evaluation.io import EvalData
from ichd.evaluation.metrics import (
    EPS,
    THRESHOLD_METRICS,
    binary_log_loss,
    call_metrics,
    choose_thresholds,
    class_summary,
    extra_subtype_rate,
    metrics_from_counts,
    roc_auc,
    weighted_log_loss,
)
from ichd.evaluation.readers import (
    ReaderStudy,
    cohen_kappa,
    fleiss_kappa_binary,
    majority_vote,
    operating_point,
    pairwise_kappa,
)
from ichd.utils.files import atomic_write_bytes, atomic_write_text
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: Operating points, in report order: fixed 0.5, Youden-optimal, fixed sensitivity, and the shipped ``policy``
#: ("any" at the fixed sensitivity, each subtype at the stated specificity, or at its Youden point when none is
#: stated). At every one the subtype calls are gated by "any" (:mod:`ichd.calls`).
OPERATING_POINTS: tuple[str, ...] = ("0.5", "youden", "sensitivity", "policy")
#: Specificity of the subtype thresholds of the ``policy`` operating point (``--subtype-specificity``).
DEFAULT_SUBTYPE_SPECIFICITY = 0.9
#: Operating point used for the model's calls in the reader comparison.
READER_OPERATING_POINT = "youden"
THRESHOLDS_KIND = "ichd-thresholds"


# ------------------------------------------------------------------------------------------------------------
# thresholds
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Thresholds:
    """Decision thresholds per operating point and label, at slice and (optionally) scan level.

    ``slice[op][label]`` and ``scan[op][label]`` for ``op`` in :data:`OPERATING_POINTS`; ``chosen_on`` says on
    which data they were picked (shown in the report); ``same_data`` is True when that is the evaluated data.
    """

    slice: dict[str, dict[str, float]]
    scan: dict[str, dict[str, float]] | None
    sensitivity_target: float
    chosen_on: str
    same_data: bool = False
    #: specificity of the ``policy`` subtype thresholds; ``None``: they are the Youden points
    subtype_specificity: float | None = DEFAULT_SUBTYPE_SPECIFICITY

    def policy(self) -> dict[str, Any]:
        """How the ``policy`` thresholds were chosen (recorded in thresholds.json and bundle manifests)."""
        subtypes = ("youden" if self.subtype_specificity is None
                    else f"specificity >= {self.subtype_specificity:g}")
        return {"any": f"sensitivity >= {self.sensitivity_target:g}", "subtypes": subtypes,
                "sensitivity_target": self.sensitivity_target, "subtype_specificity": self.subtype_specificity,
                "levels": "slice thresholds on slice-level predictions, scan thresholds on scan-level ones",
                "call_rule": CALL_RULE}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": THRESHOLDS_KIND, "version": 1, "sensitivity_target": self.sensitivity_target,
                "subtype_specificity": self.subtype_specificity, "policy": self.policy(),
                "chosen_on": self.chosen_on, "slice": _jsonable(self.slice), "scan": _jsonable(self.scan)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str) -> Thresholds:
        """Read a ``thresholds.json`` written by :func:`write_report` (errors name the file and key)."""
        if d.get("kind") != THRESHOLDS_KIND:
            raise InputError(f"{source}: not an ichd thresholds file (no \"kind\": \"{THRESHOLDS_KIND}\")")

        def level(block: Any, name: str) -> dict[str, dict[str, float]]:
            if not isinstance(block, dict):
                raise InputError(f"{source}: '{name}' must be an object of operating points")
            out = {}
            if "policy" not in block and isinstance(block.get("sensitivity"), dict) \
                    and isinstance(block.get("youden"), dict):  # written before the policy point existed
                block = {**block, "policy": _policy_point(block["sensitivity"], block["youden"])}
            for op in OPERATING_POINTS:
                vals = block.get(op)
                if not isinstance(vals, dict) or any(lab not in vals for lab in LABELS):
                    raise InputError(f"{source}: '{name}.{op}' needs a threshold for every label "
                                     f"({', '.join(LABELS)})")
                out[op] = {lab: math.nan if vals[lab] is None else float(vals[lab]) for lab in LABELS}
            return out

        scan = d.get("scan")
        spec = d.get("subtype_specificity")  # absent in files written before the policy point: Youden subtypes
        return cls(slice=level(d.get("slice"), "slice"), scan=None if scan is None else level(scan, "scan"),
                   sensitivity_target=float(d.get("sensitivity_target", math.nan)),
                   chosen_on=str(d.get("chosen_on", source)),
                   subtype_specificity=None if spec is None else float(spec))


def _policy_point(any_point: Mapping[str, float], subtype_point: Mapping[str, float]) -> dict[str, float]:
    return {lab: any_point[lab] if lab == "any" else subtype_point[lab] for lab in LABELS}


def _level_thresholds(y: np.ndarray, p: np.ndarray, sensitivity: float,
                      subtype_specificity: float | None) -> dict[str, dict[str, float]]:
    out = {
        "0.5": {lab: 0.5 for lab in LABELS},
        "youden": choose_thresholds(y, p, method="youden"),
        "sensitivity": choose_thresholds(y, p, method="sensitivity", target=sensitivity),
    }
    subtype = (out["youden"] if subtype_specificity is None
               else choose_thresholds(y, p, method="specificity", target=subtype_specificity))
    out["policy"] = _policy_point(out["sensitivity"], subtype)
    return out


def check_subtype_specificity(value: float | None) -> float | None:
    """``--subtype-specificity``: a target in (0, 1), or ``None``/0 for "subtypes at their Youden point"."""
    if value is None or value == 0:
        return None
    if not 0.0 < value < 1.0:
        raise InputError(f"--subtype-specificity must be in (0, 1) (0 turns it off), got {value}")
    return float(value)


def choose_operating_thresholds(data: EvalData, *, sensitivity: float = 0.95,
                                subtype_specificity: float | None = DEFAULT_SUBTYPE_SPECIFICITY,
                                chosen_on: str = "", same_data: bool = False) -> Thresholds:
    """Pick every operating point of :data:`OPERATING_POINTS` for every label on ``data``, at slice level (on the
    slice predictions) and scan level (on the scan scores): the slice-level ``policy`` points are what single-slice
    input (``ichd predict --independent``) uses, the scan-level ones what whole scans use."""
    subtype_specificity = check_subtype_specificity(subtype_specificity)
    scan = (_level_thresholds(data.y_scan, data.p_scan, sensitivity, subtype_specificity)
            if data.has_scans else None)
    return Thresholds(_level_thresholds(data.y, data.p, sensitivity, subtype_specificity), scan, sensitivity,
                      chosen_on, same_data, subtype_specificity)


def read_thresholds(path: str | Path) -> Thresholds:
    """Load a ``thresholds.json`` file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read thresholds file {path}: {e}") from e
    if not isinstance(d, dict):
        raise InputError(f"{path}: not an ichd thresholds file")
    return Thresholds.from_dict(d, str(path))


# ------------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    """Replace nan/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def _level_metrics(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, Mapping[str, float]],
                   n_bins: int) -> dict[str, Any]:
    """Per-label metrics at one level; the calls at each operating point follow :mod:`ichd.calls` (a subtype
    only when "any" is called), and ``extra_subtype`` gives, per operating point, how many cases get a subtype
    called that their labels lack."""
    wll, per = weighted_log_loss(y, p, per_class=True)
    called = {op: make_calls(p, thresholds[op]) for op in OPERATING_POINTS}
    classes: dict[str, Any] = {}
    for c, lab in enumerate(LABELS):
        entry: dict[str, Any] = class_summary(y[:, c], p[:, c])
        entry["ece"] = expected_calibration_error(y[:, c], p[:, c], n_bins)
        entry["reliability"] = reliability_curve(y[:, c], p[:, c], n_bins).to_dict()
        entry["operating_points"] = {op: call_metrics(y[:, c], called[op][:, c], thresholds[op][lab])
                                     for op in OPERATING_POINTS}
        classes[lab] = entry
    return {"n": int(y.shape[0]), "weighted_log_loss": wll,
            "log_loss_per_class": dict(zip(LABELS, per.tolist())), "classes": classes,
            "extra_subtype": {op: extra_subtype_rate(y, called[op]) for op in OPERATING_POINTS}}


class _WeightedLevel:
    """The bootstrapped statistics of one level (slice or scan), computed from case weights.

    A patient-bootstrap replicate is the original rows with integer weights (how often each row's patient was
    drawn), so every metric is a weighted sum over rows that were sorted and thresholded **once** here; a
    replicate then costs a few O(n) passes instead of sorting a resampled copy (RSNA-sized sets stay tractable).
    The results equal those of :mod:`ichd.evaluation.metrics` on the resampled rows (tested).
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, Mapping[str, float]] | None,
                 n_bins: int, prefix: str) -> None:
        self.prefix = prefix
        self.n_bins = n_bins
        self.y = np.ascontiguousarray(y.T > 0.5)  # (C, n)
        self.losses = np.ascontiguousarray(binary_log_loss(y, p).T)
        self.p = np.ascontiguousarray(p.T)
        self.order = [np.argsort(-pc, kind="mergesort") for pc in self.p]
        self.y_sorted = [yc[o].astype(np.float64) for yc, o in zip(self.y, self.order)]
        self.starts = []
        for pc, o in zip(self.p, self.order):
            ps = pc[o]
            self.starts.append(np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]]))
        self.bins = [np.clip(np.floor(pc * n_bins).astype(np.int64), 0, n_bins - 1) for pc in self.p]
        # per operating point and class: row indices of true positives, false positives and false negatives
        # (calls gated as in ichd.calls); per operating point: rows that get a subtype their labels lack
        self.cells: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]] = {}
        self.extra: dict[str, np.ndarray] = {}
        for op in OPERATING_POINTS if thresholds is not None else ():
            self.cells[op] = []
            called_all = make_calls(p, thresholds[op]).T
            sub = [i for i, lab in enumerate(LABELS) if lab != "any"]
            self.extra[op] = (called_all[sub] & ~self.y[sub]).any(axis=0).astype(np.float64)
            for called, yc, lab in zip(called_all, self.y, LABELS):
                t = thresholds[op][lab]
                self.cells[op].append((np.flatnonzero(called & yc), np.flatnonzero(called & ~yc),
                                       np.flatnonzero(~called & yc)) if math.isfinite(t) else None)

    def _ranking(self, c: int, w: np.ndarray) -> tuple[float, float]:
        """(AUC, average precision) of class ``c`` under weights ``w``; nan when undefined."""
        ws = w[self.order[c]]
        pos = np.add.reduceat(ws * self.y_sorted[c], self.starts[c])
        neg = np.add.reduceat(ws, self.starts[c]) - pos
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos <= 0:
            return math.nan, math.nan
        tp = np.cumsum(pos)
        fp = np.cumsum(neg)
        denom = tp + fp
        precision = np.divide(tp, denom, out=np.zeros_like(tp), where=denom > 0)
        ap = float(np.sum(pos / n_pos * precision))
        auc = float(np.sum(neg * (tp - pos + 0.5 * pos)) / (n_pos * n_neg)) if n_neg > 0 else math.nan
        return auc, ap

    def statistic(self, w: np.ndarray) -> dict[str, float]:
        """Flat ``<prefix>/<label>/<metric>`` values for one replicate with row weights ``w``."""
        out: dict[str, float] = {}
        total = w.sum()
        losses = self.losses @ w / total if total > 0 else np.full(len(LABELS), np.nan)
        wts = np.asarray(LABEL_WEIGHTS)
        out[f"{self.prefix}/weighted_log_loss"] = float(np.dot(wts, losses) / wts.sum())
        for c, lab in enumerate(LABELS):
            key = f"{self.prefix}/{lab}"
            yc = self.y[c]
            out[f"{key}/log_loss"] = float(losses[c])
            out[f"{key}/auc"], out[f"{key}/average_precision"] = self._ranking(c, w)
            count = np.bincount(self.bins[c], weights=w, minlength=self.n_bins)
            gap = np.abs(np.bincount(self.bins[c], weights=w * yc, minlength=self.n_bins)
                         - np.bincount(self.bins[c], weights=w * self.p[c], minlength=self.n_bins))
            out[f"{key}/ece"] = float(gap.sum() / count.sum()) if count.sum() > 0 else math.nan
            for op in self.cells:
                cells = self.cells[op][c]
                if cells is None:
                    m = {name: math.nan for name in THRESHOLD_METRICS}
                else:
                    tp, fp, fn = (float(w[idx].sum()) for idx in cells)
                    m = metrics_from_counts(tp, fp, float(total - tp - fp - fn), fn)
                for name in THRESHOLD_METRICS:
                    out[f"{key}/{op}/{name}"] = m[name]
        for op, rows in self.extra.items():
            out[f"{self.prefix}/{op}/extra_subtype_rate"] = float(rows @ w / total) if total > 0 else math.nan
        return out


def _attach_intervals(level: dict[str, Any], intervals: Mapping[str, bs.Interval], prefix: str) -> None:
    def ci(key: str) -> bs.Interval | None:
        return intervals.get(f"{prefix}/{key}")

    iv = ci("weighted_log_loss")
    if iv is not None:
        level["weighted_log_loss_ci95"] = iv.to_list()
    for op, e in level.get("extra_subtype", {}).items():
        iv = ci(f"{op}/extra_subtype_rate")
        if iv is not None:
            e["rate_ci95"] = iv.to_list()
    for lab, entry in level["classes"].items():
        entry["ci95"], entry["bootstrap_valid"] = {}, {}
        for name in ("auc", "average_precision", "log_loss", "ece"):
            iv = ci(f"{lab}/{name}")
            if iv is not None:
                entry["ci95"][name] = iv.to_list()
                entry["bootstrap_valid"][name] = iv.n_valid
        for op, m in entry["operating_points"].items():
            m["ci95"], m["bootstrap_valid"] = {}, {}
            for name in THRESHOLD_METRICS:
                iv = ci(f"{lab}/{op}/{name}")
                if iv is not None:
                    m["ci95"][name] = iv.to_list()
                    m["bootstrap_valid"][name] = iv.n_valid


@dataclass
class Evaluation:
    """Result of :func:`evaluate`: JSON-ready ``metrics`` and the figures (name -> (Figure, caption))."""

    metrics: dict[str, Any]
    thresholds: Thresholds
    figures: dict[str, tuple[Any, str]] = field(default_factory=dict)


def evaluate(
    data: EvalData,
    *,
    thresholds: Thresholds | None = None,
    sensitivity: float = 0.95,
    n_boot: int = bs.DEFAULT_N_BOOT,
    seed: int = bs.DEFAULT_SEED,
    n_bins: int = DEFAULT_BINS,
    readers: ReaderStudy | None = None,
    inputs: Mapping[str, Any] | None = None,
    plots: bool = True,
    subtype_specificity: float | None = DEFAULT_SUBTYPE_SPECIFICITY,
    repeats: Sequence[tuple[str, EvalData]] = (),
) -> Evaluation:
    """Compute every metric of ``data`` (see the module docstring).

    Args:
        data: aligned predictions and labels (:func:`ichd.evaluation.io.align`).
        thresholds: operating thresholds chosen elsewhere (validation data); by default they are chosen on
            ``data`` itself and the report says that this is optimistic.
        sensitivity: target sensitivity of the ``sensitivity`` operating point (when choosing thresholds here).
        n_boot: bootstrap replicates (0 turns the intervals off); ``seed``: their seed.
        n_bins: calibration bins.
        readers: a reader study to compare with at scan level (needs scan membership).
        inputs: facts about the inputs recorded in ``metrics.json`` (paths, formats).
        plots: also draw the figures.
        subtype_specificity: specificity of the subtype thresholds of the ``policy`` operating point (when choosing
            thresholds here); ``None``: the subtypes' Youden points.
        repeats: further cross-validation repeats of the same model (``(name, data)`` on the same slices, other
            fold seeds); the main metrics stay those of ``data`` (the first repeat), ``metrics["repeats"]`` adds
            per-repeat pooled AUCs, their spread across repeats and the per-fold spread over all repeats x folds.
    """
    if not 0.0 < sensitivity <= 1.0:
        raise InputError(f"--sensitivity must be in (0, 1], got {sensitivity}")
    notes = list(data.notes)
    if thresholds is None:
        thresholds = choose_operating_thresholds(data, sensitivity=sensitivity, chosen_on="the evaluated data",
                                                 same_data=True, subtype_specificity=subtype_specificity)
    if thresholds.same_data:
        notes.append("The Youden and fixed-sensitivity thresholds were chosen on the evaluated data itself, so "
                     "their sensitivity/specificity are optimistic; choose them on validation data with "
                     "--thresholds-from to get honest numbers.")
    if data.has_scans and thresholds.scan is None:
        raise InputError(f"the thresholds from {thresholds.chosen_on} have no scan level, but these predictions "
                         "have scans", hint="choose thresholds on validation data that carries scan ids")
    for level_name, level_t in (("slice", thresholds.slice), ("scan", thresholds.scan)):
        if level_t is None:
            continue
        for op in OPERATING_POINTS:
            undefined = [lab for lab in LABELS if not math.isfinite(level_t[op][lab])]
            if undefined:
                notes.append(f"No {op} threshold at {level_name} level for {', '.join(undefined)} "
                             f"(the data it was chosen on lacks positive or negative cases); those metrics are "
                             "n/a.")

    metrics: dict[str, Any] = {
        "ichd_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "labels": list(LABELS),
        "label_weights": list(LABEL_WEIGHTS),
        "log_loss_epsilon": EPS,
        "inputs": dict(inputs or {}),
        "counts": {"slices": int(data.y.shape[0]),
                   "scans": len(data.scans) if data.has_scans else None,
                   "patients": len(set(data.patient_ids)) if data.group_kind == "patient" else None},
        "scan_score": data.scan_score_source,
        "scan_label": "any slice positive" if data.has_scans else None,
        "calibration_bins": n_bins,
        "thresholds": thresholds.to_dict(),
        "slice": _level_metrics(data.y, data.p, thresholds.slice, n_bins),
        "scan": _level_metrics(data.y_scan, data.p_scan, thresholds.scan, n_bins) if data.has_scans else None,
    }
    wll, per = weighted_log_loss(data.y, data.p, per_class=True)
    metrics["rsna_weighted_log_loss"] = {"overall": wll, "per_class": dict(zip(LABELS, per.tolist()))}
    fold_aucs = _fold_aucs(data)
    metrics["per_fold"] = _per_fold(data, fold_aucs)
    metrics["fold_spread"] = _fold_spread(fold_aucs)
    metrics["calibrated"] = data.calibrated
    if data.calibrated is not None:
        notes.append(f"The predictions file says its probabilities were calibrated ({data.calibrated}), e.g. each "
                     "fold model by a temperature fitted on its own training part, so the pooled OOF metrics do "
                     "not mix differently scaled fold models.")
    elif data.folds is not None and len(set(map(str, data.folds))) > 1:
        notes.append("The pooled OOF AUC mixes how well each fold model ranks with how far apart their scales "
                     "are (the predictions are not marked as calibrated); read it beside the per-fold AUCs.")
    metrics["scan_rules"] = _scan_rule_table(data)
    metrics["repeats"] = (_repeat_summary(data, repeats, str((inputs or {}).get("predictions", "PREDICTIONS")))
                          if repeats else None)

    if n_boot > 0:
        metrics["bootstrap"] = _run_bootstrap(data, thresholds, n_boot, seed, n_bins, metrics)
        wl_ci = metrics["slice"].get("weighted_log_loss_ci95")
        metrics["rsna_weighted_log_loss"]["overall_ci95"] = wl_ci
    else:
        metrics["bootstrap"] = None
        notes.append("Bootstrap turned off (--bootstrap 0): no confidence intervals.")
    metrics["per_source"] = _per_source(data, n_boot, seed, n_bins)

    if readers is not None:
        if not data.has_scans:
            raise InputError("a reader comparison needs scan membership",
                             hint="give a --scans map (slice_id,scan_id[,patient_id])")
        metrics["readers"], reader_fig = _compare_readers(data, readers, thresholds, plots)
    else:
        reader_fig = None
    metrics["notes"] = notes
    evaluation = Evaluation(_jsonable(metrics), thresholds)
    if plots:
        evaluation.figures = _figures(data, thresholds, n_bins)
        if reader_fig is not None:
            evaluation.figures["readers_roc"] = reader_fig
    return evaluation


def _spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, SD (n - 1), min and max of the defined values; ``n`` counts them (``n_undefined`` the others)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    return {"mean": float(v.mean()) if n else math.nan, "sd": float(v.std(ddof=1)) if n > 1 else math.nan,
            "min": float(v.min()) if n else math.nan, "max": float(v.max()) if n else math.nan, "n": n,
            "n_undefined": len(values) - n}


def _fold_labels(values: np.ndarray) -> list[str]:
    return sorted({str(f) for f in values}, key=lambda v: (len(v), v))


def _scan_folds(data: EvalData) -> np.ndarray | None:
    """Each scan's fold (that of its first slice; folds split patients, so all its slices share it)."""
    if data.folds is None or not data.has_scans or data.scan_ids is None:
        return None
    first: dict[str, str] = {}
    for scan, fold in zip(data.scan_ids, data.folds):
        first.setdefault(str(scan), str(fold))
    return np.asarray([first[str(s)] for s in data.scans], dtype=object)  # type: ignore[union-attr]


def _fold_aucs(data: EvalData) -> dict[str, Any] | None:
    """Per fold (the predictions' ``fold`` column) and label: AUC and positives, at slice and scan level."""
    if data.folds is None:
        return None
    folds = np.asarray([str(f) for f in data.folds], dtype=object)
    names = _fold_labels(folds)
    scan_folds = _scan_folds(data)
    out: dict[str, Any] = {"folds": names}
    levels = [("slice", folds, data.y, data.p)]
    if scan_folds is not None:
        levels.append(("scan", scan_folds, data.y_scan, data.p_scan))
    for level, fl, y, p in levels:
        out[level] = {lab: {"auc": [roc_auc(y[fl == f, c], p[fl == f, c]) for f in names],
                            "n_positive": [int(np.sum(y[fl == f, c] > 0.5)) for f in names],
                            "n": [int(np.sum(fl == f)) for f in names]}
                      for c, lab in enumerate(LABELS)}
    out.setdefault("scan", None)
    return out


def _per_fold(data: EvalData, aucs: Mapping[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """Per cross-validation fold: slices, scans, weighted log loss, and per level and label AUC and positives."""
    if data.folds is None or aucs is None:
        return None
    folds = np.asarray([str(f) for f in data.folds], dtype=object)
    out = {}
    for k, f in enumerate(aucs["folds"]):
        rows = folds == f
        entry: dict[str, Any] = {
            "n_slices": int(rows.sum()), "weighted_log_loss": weighted_log_loss(data.y[rows], data.p[rows]),
            "auc_any": roc_auc(data.y[rows, 0], data.p[rows, 0])}
        for level in ("slice", "scan"):
            if aucs[level] is None:
                continue
            if level == "scan":
                entry["n_scans"] = aucs["scan"]["any"]["n"][k]
            entry[level] = {lab: {"auc": aucs[level][lab]["auc"][k], "n_positive": aucs[level][lab]["n_positive"][k]}
                            for lab in LABELS}
        out[f] = entry
    return out


def _fold_spread(aucs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Mean, SD, min and max over folds of every label's AUC, per level."""
    if aucs is None:
        return None
    return {level: None if aucs[level] is None else {lab: _spread(aucs[level][lab]["auc"]) for lab in LABELS}
            for level in ("slice", "scan")}


def _subset(data: EvalData, rows: np.ndarray) -> EvalData:
    """The slices ``rows`` (boolean) of ``data`` and the scans they belong to (whole scans expected)."""
    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[rows]

    sub = EvalData(slice_ids=data.slice_ids[rows], y=data.y[rows], p=data.p[rows], scan_ids=take(data.scan_ids),
                   patient_ids=data.patient_ids[rows], group_kind=data.group_kind, folds=take(data.folds),
                   slice_index=take(data.slice_index), sources=take(data.sources), calibrated=data.calibrated,
                   scan_score_source=data.scan_score_source)
    if data.has_scans and data.scan_ids is not None:
        keep = np.isin(np.asarray(data.scans, dtype=str), np.asarray(data.scan_ids[rows], dtype=str))
        sub.scans = data.scans[keep]  # type: ignore[index]
        sub.y_scan, sub.p_scan = data.y_scan[keep], data.p_scan[keep]  # type: ignore[index]
        sub.scan_patients = data.scan_patients[keep]  # type: ignore[index]
    return sub


def _bootstrap_intervals(data: EvalData, thresholds: Thresholds | None, n_boot: int, seed: int,
                         n_bins: int) -> tuple[dict[str, bs.Interval], bs.GroupIndex]:
    """Patient-bootstrap intervals of every slice- and scan-level statistic (:class:`_WeightedLevel`); slice and
    scan levels use the same draws of patients. ``thresholds`` None: threshold-free statistics only."""
    slice_groups = bs.GroupIndex(data.patient_ids)
    scan_groups = bs.GroupIndex(data.scan_patients) if data.has_scans else None
    if scan_groups is not None and list(scan_groups.names) != list(slice_groups.names):
        raise AssertionError("scan and slice patient groups differ")  # align() guarantees this

    slice_level = _WeightedLevel(data.y, data.p, None if thresholds is None else thresholds.slice, n_bins, "slice")
    scan_level = None
    if scan_groups is not None and data.y_scan is not None and data.p_scan is not None:
        scan_level = _WeightedLevel(data.y_scan, data.p_scan, None if thresholds is None else thresholds.scan,
                                    n_bins, "scan")

    def statistic(draw: np.ndarray) -> dict[str, float]:
        out = slice_level.statistic(slice_groups.row_weights(draw))
        if scan_level is not None and scan_groups is not None:
            out.update(scan_level.statistic(scan_groups.row_weights(draw)))
        return out

    return bs.bootstrap(statistic, slice_groups.n_groups, n_boot=n_boot, seed=seed, desc="bootstrap"), slice_groups


def _run_bootstrap(data: EvalData, thresholds: Thresholds, n_boot: int, seed: int, n_bins: int,
                   metrics: dict[str, Any]) -> dict[str, Any]:
    log.info("bootstrap: %d replicates over %d %s groups", n_boot, len(set(data.patient_ids)), data.group_kind)
    intervals, slice_groups = _bootstrap_intervals(data, thresholds, n_boot, seed, n_bins)
    _attach_intervals(metrics["slice"], intervals, "slice")
    if metrics["scan"] is not None:
        _attach_intervals(metrics["scan"], intervals, "scan")
    auc_valid = {k: v.n_valid for k, v in intervals.items() if k.endswith("/auc")}
    return {"n_boot": n_boot, "seed": seed, "confidence": bs.DEFAULT_CONFIDENCE, "unit": data.group_kind,
            "n_groups": slice_groups.n_groups, "method": "percentile",
            "min_valid_auc_replicates": min(auc_valid.values()) if auc_valid else None}


def _per_source(data: EvalData, n_boot: int, seed: int, n_bins: int) -> dict[str, Any] | None:
    """Per data source (when the slices come from several): counts, weighted log loss, per level and label AUC
    with a patient-bootstrap interval within the source, and the spread of the AUCs over folds."""
    if data.sources is None or len(set(data.sources)) < 2:
        return None
    out: dict[str, Any] = {}
    for name in sorted({str(x) for x in data.sources}):
        sub = _subset(data, np.asarray([str(x) == name for x in data.sources]))
        intervals = (_bootstrap_intervals(sub, None, n_boot, seed, n_bins)[0]
                     if n_boot > 0 and len(set(sub.patient_ids)) > 1 else {})
        entry: dict[str, Any] = {
            "counts": {"slices": int(sub.y.shape[0]), "scans": len(sub.scans) if sub.has_scans else None,
                       "patients": len(set(sub.patient_ids)) if sub.group_kind == "patient" else None},
            "weighted_log_loss": weighted_log_loss(sub.y, sub.p)}
        for level, y, p in (("slice", sub.y, sub.p), ("scan", sub.y_scan, sub.p_scan)):
            if y is None or p is None:
                entry[level] = None
                continue
            entry[level] = {}
            for c, lab in enumerate(LABELS):
                iv = intervals.get(f"{level}/{lab}/auc")
                entry[level][lab] = {"auc": roc_auc(y[:, c], p[:, c]), "n_positive": int(np.sum(y[:, c] > 0.5)),
                                     "n": int(y.shape[0]), "auc_ci95": None if iv is None else iv.to_list()}
        entry["fold_spread"] = _fold_spread(_fold_aucs(sub))
        out[name] = entry
    return out


def _scans_in_order(data: EvalData) -> list[np.ndarray]:
    """Row indices of each scan of ``data.scans``, in slice order (``slice_index``, else as given)."""
    assert data.scan_ids is not None and data.scans is not None
    key = np.asarray(data.scan_ids, dtype=str)
    order = np.lexsort((data.slice_index if data.slice_index is not None else np.arange(len(key)), key))
    sorted_keys = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    groups = dict(zip(sorted_keys[starts], np.split(order, starts[1:])))
    return [groups[str(s)] for s in data.scans]


def _scan_rule_table(data: EvalData) -> dict[str, Any] | None:
    """Scan-level AUC per label of every rule of :data:`ichd.models.scan_rules.SCAN_RULES` over the slice
    predictions (and of the model's own scan output when the predictions carry one), with the spread of the
    ``any`` AUC over folds: the evidence for choosing a model's scan rule."""
    from ichd.models.scan_rules import ORDERED_RULES, SCAN_RULES, scan_probabilities

    if not data.has_scans or data.y_scan is None:
        return None
    groups = _scans_in_order(data)
    scan_folds = _scan_folds(data)
    rules: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    scores: dict[str, np.ndarray] = {}
    if data.scan_score_source == "model scan output" and data.p_scan is not None:
        scores["model scan output"] = data.p_scan
    for rule in SCAN_RULES:
        if rule in ORDERED_RULES and data.slice_index is None:
            skipped[rule] = "needs the slice order (a slice_index column in the predictions or labels)"
            continue
        scores[rule] = np.stack([scan_probabilities(data.p[rows], rule) for rows in groups])
    for name, ps in scores.items():
        entry: dict[str, Any] = {"auc": {lab: roc_auc(data.y_scan[:, c], ps[:, c]) for c, lab in enumerate(LABELS)}}
        if scan_folds is not None:
            entry["any_fold_spread"] = _spread([roc_auc(data.y_scan[scan_folds == f, 0], ps[scan_folds == f, 0])
                                                for f in _fold_labels(scan_folds)])
        rules[name] = entry
    return {"rules": rules, "skipped": skipped, "ordered_by": "slice_index" if data.slice_index is not None
            else None, "scan_score": data.scan_score_source}


def _repeat_summary(data: EvalData, repeats: Sequence[tuple[str, EvalData]], main_name: str) -> dict[str, Any]:
    """Repeated cross-validation: per repeat the pooled AUCs and the per-fold spread; across repeats the spread of
    the pooled AUCs; over all repeats x folds the spread of the per-fold AUCs."""
    runs = [(main_name, data), *repeats]
    per_repeat = []
    pooled: dict[str, dict[str, list[float]]] = {"slice": {lab: [] for lab in LABELS},
                                                 "scan": {lab: [] for lab in LABELS}}
    folds: dict[str, dict[str, list[float]]] = {"slice": {lab: [] for lab in LABELS},
                                                "scan": {lab: [] for lab in LABELS}}
    for name, d in runs:
        aucs = _fold_aucs(d)
        entry: dict[str, Any] = {"predictions": name, "n_folds": None if aucs is None else len(aucs["folds"])}
        for level, y, p in (("slice", d.y, d.p), ("scan", d.y_scan, d.p_scan)):
            if y is None or p is None:
                entry[level] = None
                continue
            entry[level] = {lab: roc_auc(y[:, c], p[:, c]) for c, lab in enumerate(LABELS)}
            for lab in LABELS:
                pooled[level][lab].append(entry[level][lab])
                if aucs is not None and aucs[level] is not None:
                    folds[level][lab] += aucs[level][lab]["auc"]
        entry["fold_spread"] = _fold_spread(aucs)
        per_repeat.append(entry)
    has_scan = data.has_scans
    return {"n_repeats": len(runs), "main": "the first predictions file (PREDICTIONS)",
            "per_repeat": per_repeat,
            "across_repeats": {lv: ({lab: _spread(pooled[lv][lab]) for lab in LABELS}
                                    if lv == "slice" or has_scan else None) for lv in ("slice", "scan")},
            "all_folds": {lv: ({lab: _spread(folds[lv][lab]) for lab in LABELS}
                               if any(folds[lv][lab] for lab in LABELS) else None) for lv in ("slice", "scan")}}


# ------------------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------------------


def _case_level(data: EvalData, readers: ReaderStudy) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """Match reader cases to scans (or, failing that, patients); returns (kind, cases, y, p) at that level."""
    assert data.scans is not None and data.y_scan is not None and data.p_scan is not None
    scans = [str(s) for s in data.scans]
    by_scan = [c for c in readers.cases if c in set(scans)]
    patients = [str(x) for x in data.scan_patients] if data.scan_patients is not None else []
    by_patient = [c for c in readers.cases if c in set(patients)]
    if not by_scan and not by_patient:
        raise InputError(f"none of the {len(readers.cases)} cases in {readers.source} is a scan or patient id of "
                         "the predictions",
                         hint="reader case names must equal scan_id or patient_id (give a --scans map with "
                              "patient_id set to the reader file's case names)")
    if len(by_scan) >= len(by_patient):
        idx = {s: i for i, s in enumerate(scans)}
        rows = [idx[c] for c in by_scan]
        return "scan", by_scan, data.y_scan[rows], data.p_scan[rows]
    y = np.stack([data.y_scan[[i for i, q in enumerate(patients) if q == c]].max(axis=0) for c in by_patient])
    p = np.stack([data.p_scan[[i for i, q in enumerate(patients) if q == c]].max(axis=0) for c in by_patient])
    return "patient", by_patient, y, p


def _compare_readers(data: EvalData, study: ReaderStudy, thresholds: Thresholds,
                     plots: bool) -> tuple[dict[str, Any], tuple[Any, str] | None]:
    kind, cases, y_all, p_all = _case_level(data, study)
    sub = study.subset(cases)
    label_idx = [LABELS.index(lab) for lab in sub.labels]
    y, p = y_all[:, label_idx], p_all[:, label_idx]
    assert thresholds.scan is not None
    per_label: dict[str, Any] = {}
    all_calls = make_calls(p_all, thresholds.scan[READER_OPERATING_POINT])  # subtypes gated by "any"
    for k, lab in enumerate(sub.labels):
        calls = sub.label_calls(lab)
        t = thresholds.scan[READER_OPERATING_POINT][lab]
        model_calls = (all_calls[:, label_idx[k]].astype(float) if math.isfinite(t)
                       else np.full(len(cases), np.nan))
        raters = np.column_stack([calls, model_calls])
        names = [*sub.readers, "model"]
        per_label[lab] = {
            "readers": {name: operating_point(calls[:, j], y[:, k]) for j, name in enumerate(sub.readers)},
            "model": {**operating_point(model_calls, y[:, k]), "threshold": t, "auc": roc_auc(y[:, k], p[:, k])},
            "cohen_kappa": pairwise_kappa(raters, names),
            "cohen_kappa_model_vs_reader_majority": cohen_kappa(model_calls, majority_vote(calls)),
            "fleiss_kappa_readers": fleiss_kappa_binary(calls),
            "fleiss_kappa_readers_and_model": fleiss_kappa_binary(raters),
        }
    result = {"source": study.source, "matched_on": kind, "n_cases_matched": len(cases),
              "n_cases_in_file": len(study.cases), "readers": sub.readers, "labels": sub.labels,
              "reference": "the evaluation labels (scan label = any slice positive)",
              "model_operating_point": READER_OPERATING_POINT, "per_label": per_label}
    fig = None
    if plots:
        from ichd.evaluation.plots import reader_roc_figure

        figure = reader_roc_figure(
            y, p, {lab: per_label[lab]["readers"] for lab in sub.labels}, labels=sub.labels,
            model_points={lab: per_label[lab]["model"] for lab in sub.labels},
            title=f"Scan-level ROC with human readers ({len(cases)} {kind}s)")
        fig = (figure, (f"Model ROC per label at {kind} level with each reader's operating point (hollow markers, "
                       f"legend: sensitivity/specificity) and the model's {READER_OPERATING_POINT} point (star)."))
    return result, fig


# ------------------------------------------------------------------------------------------------------------
# figures and report files
# ------------------------------------------------------------------------------------------------------------


def _figures(data: EvalData, thresholds: Thresholds, n_bins: int) -> dict[str, tuple[Any, str]]:
    from ichd.evaluation import plots

    figs: dict[str, tuple[Any, str]] = {}
    levels = [("slice", data.y, data.p, thresholds.slice)]
    if data.has_scans:
        levels.append(("scan", data.y_scan, data.p_scan, thresholds.scan))
    for level, y, p, t in levels:
        figs[f"{level}_roc_pr"] = (
            plots.roc_pr_figure(y, p, level=level, operating_points=t["youden"]),
            f"ROC and precision-recall curves at {level} level; dots mark the Youden operating point.")
        figs[f"{level}_confusion"] = (
            plots.confusion_figure(y, p, t["sensitivity"], level=level,
                                   op_name=f"sensitivity >= {thresholds.sensitivity_target:g}"),
            (f"Confusion matrices at {level} level at the fixed-sensitivity operating point (counts and row "
            "percentages)."))
        figs[f"{level}_confusion_youden"] = (
            plots.confusion_figure(y, p, t["youden"], level=level, op_name="Youden"),
            f"Confusion matrices at {level} level at the Youden operating point.")
        figs[f"{level}_reliability"] = (
            plots.reliability_figure(y, p, level=level, n_bins=n_bins),
            f"Reliability diagrams at {level} level; grey bars: cases per bin (log scale).")
    return figs


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def _ci(value: Any, ci: Sequence[Any] | None, digits: int = 3) -> str:
    s = _f(value, digits)
    if ci and ci[0] is not None and ci[1] is not None and s != "n/a":
        s += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return s


Block = tuple[str, Any]


def _level_blocks(level: str, m: dict[str, Any], thresholds: dict[str, Any], has_ci: bool) -> list[Block]:
    blocks: list[Block] = [("h2", f"{level.capitalize()} level ({m['n']} {level}s)")]
    ci_note = " Values in brackets: 95 % bootstrap interval." if has_ci else ""
    blocks.append(("p", "Threshold-free metrics per label." + ci_note))
    rows = []
    for lab in LABELS:
        e = m["classes"][lab]
        ci = e.get("ci95", {})
        rows.append([lab, str(e["n_positive"]), str(e["n_negative"]), _f(e["prevalence"]),
                     _ci(e["auc"], ci.get("auc")), _ci(e["average_precision"], ci.get("average_precision")),
                     _ci(e["log_loss"], ci.get("log_loss"), 4), _ci(e["ece"], ci.get("ece"))])
    blocks.append(("table", (["label", "positive", "negative", "prevalence", "AUC", "average precision",
                              "log loss", "ECE"], rows)))
    target = thresholds["sensitivity_target"]
    policy = thresholds.get("policy") or {}
    titles = {"0.5": "threshold 0.5", "youden": "Youden-optimal threshold",
              "sensitivity": f"threshold for sensitivity >= {_f(target, 2)}",
              "policy": (f"policy (the shipped rule): any at {policy.get('any', 'sensitivity')}, subtypes at "
                         f"{policy.get('subtypes', 'youden')}")}
    blocks.append(("p", ("Calls at every operating point: a label is positive when p >= its threshold, a subtype "
                        "only when \"any\" is positive too (subtype consistency).")))
    for op in OPERATING_POINTS:
        blocks.append(("h3", f"Operating point: {titles[op]}"))
        rows = []
        for lab in LABELS:
            o = m["classes"][lab]["operating_points"][op]
            ci = o.get("ci95", {})
            rows.append([lab, _f(o["threshold"], 4)] + [_ci(o[k], ci.get(k)) for k in THRESHOLD_METRICS]
                        + [" / ".join(_f(o[k]) if o[k] is None else str(int(o[k])) for k in
                                      ("tp", "fp", "tn", "fn"))])
        blocks.append(("table", (["label", "threshold", "accuracy", "sensitivity", "specificity",
                                  "precision", "NPV", "F1", "TP / FP / TN / FN"], rows)))
    if m.get("extra_subtype"):
        unit = f"{level}s"
        blocks.append(("h3", "Extra subtypes"))
        blocks.append(("p", f"Fraction of {unit} that get a subtype called that their labels do not have (calls "
                            "gated by \"any\")." + ci_note))
        rows = [[op, _ci(e["rate"], e.get("rate_ci95")), f"{e['n_with_extra']} / {e['n']}",
                 f"{e['n_extra_subtypes']} / {e['n_called_subtypes']}"]
                for op, e in m["extra_subtype"].items()]
        blocks.append(("table", (["operating point", "extra subtype rate", f"{unit} with an extra subtype",
                                  "extra / called subtypes"], rows)))
    return blocks


def _spread_text(e: Mapping[str, Any] | None) -> list[str]:
    """[mean ± SD, min, max] cells of a :func:`_spread` entry."""
    if not e or not e.get("n"):
        return ["n/a", "n/a", "n/a"]
    sd = "" if e.get("sd") is None else f" ± {e['sd']:.3f}"
    return [_f(e["mean"]) + sd, _f(e["min"]), _f(e["max"])]


def _cv_blocks(m: dict[str, Any]) -> list[Block]:
    """Per-fold AUC spread, per-source results, scan rules and repeated CV: what a model is chosen on."""
    blocks: list[Block] = []
    levels = [lv for lv in ("slice", "scan") if m[lv] is not None]
    spread = m.get("fold_spread")
    if spread and m.get("per_fold"):
        folds = list(m["per_fold"])
        blocks.append(("h2", "Per-fold AUC"))
        blocks.append(("p", (f"Pooled out-of-fold AUC beside the AUC of each of the {len(folds)} folds "
                             "(mean ± SD over the folds where it is defined, min, max) and the positives per fold "
                             f"(folds {', '.join(folds)}). With few positive series per fold, the per-fold spread "
                             "and the pooled value together say how well the model ranks.")))
        rows = []
        for lv in levels:
            if spread.get(lv) is None:
                continue
            for lab in LABELS:
                e = spread[lv][lab]
                pos = "/".join(str(m["per_fold"][f].get(lv, {}).get(lab, {}).get("n_positive", "?")) for f in folds)
                rows.append([lv, lab, _f(m[lv]["classes"][lab]["auc"]), *_spread_text(e),
                             f"{e['n']} of {e['n'] + e['n_undefined']}", pos])
        blocks.append(("table", (["level", "label", "pooled AUC", "fold AUC mean ± SD", "min", "max",
                                  "folds with an AUC", "positives per fold"], rows)))
    per_source = m.get("per_source")
    if per_source:
        blocks.append(("h2", "Per source"))
        blocks.append(("p", ("Each data source's slices and scans on their own: AUC with a 95 % patient-bootstrap "
                             "interval within the source, and the spread of the any-AUC over folds.")))
        rows = []
        for name, e in per_source.items():
            c = e["counts"]
            for lv in levels:
                if e.get(lv) is None:
                    continue
                a = e[lv]["any"]
                fs = (e.get("fold_spread") or {}).get(lv) or {}
                rows.append([name, lv, str(c.get(f"{lv}s") or "n/a"), str(c.get("patients") or "n/a"),
                             str(a["n_positive"]), _ci(a["auc"], a.get("auc_ci95")),
                             *_spread_text(fs.get("any")),
                             ", ".join(f"{LABEL_ABBREVIATIONS[lab]} {_f(e[lv][lab]['auc'])}"
                                       for lab in LABELS if lab != "any")])
        blocks.append(("table", (["source", "level", "n", "patients", "positive", "any AUC", "fold any-AUC mean ± SD",
                                  "min", "max", "subtype AUCs"], rows)))
    rules = m.get("scan_rules")
    if rules:
        blocks.append(("h2", "Scan rules"))
        blocks.append(("p", (f"Scan-level AUC of each scan rule over the slice predictions (slices ordered by "
                             f"{rules['ordered_by'] or 'their order in the file'}); the report's scan metrics use: "
                             f"{rules['scan_score']}. Choose a model's rule on out-of-fold predictions.")))
        rows = []
        for name, e in rules["rules"].items():
            rows.append([name, *[_f(e["auc"][lab]) for lab in LABELS],
                         *_spread_text(e.get("any_fold_spread"))[:1]])
        blocks.append(("table", (["rule", *[f"AUC {LABEL_ABBREVIATIONS[lab]}" for lab in LABELS],
                                  "fold any-AUC mean ± SD"], rows)))
        if rules["skipped"]:
            blocks.append(("ul", [f"`{k}` not computed: {v}" for k, v in rules["skipped"].items()]))
    rep = m.get("repeats")
    if rep:
        blocks.append(("h2", "Repeated cross-validation"))
        blocks.append(("p", (f"{rep['n_repeats']} repeats of the cross-validation (different fold seeds) of the same "
                             f"model. The other sections use {rep['main']}. Pooled any-AUC per repeat, their mean ± "
                             "SD across repeats, and the per-fold AUCs over all repeats x folds.")))
        rows = []
        for k, r in enumerate(rep["per_repeat"], start=1):
            row = [str(k), f"`{r['predictions']}`", str(r["n_folds"] or "n/a")]
            for lv in levels:
                row += [_f((r.get(lv) or {}).get("any")), _spread_text(((r.get("fold_spread") or {}).get(lv) or {})
                                                                       .get("any"))[0]]
            rows.append(row)
        header = ["repeat", "predictions", "folds"]
        for lv in levels:
            header += [f"{lv} pooled any-AUC", f"{lv} fold any-AUC mean ± SD"]
        blocks.append(("table", (header, rows)))
        rows = []
        for lv in levels:
            for lab in LABELS:
                across = (rep["across_repeats"].get(lv) or {}).get(lab)
                allf = (rep["all_folds"].get(lv) or {}).get(lab)
                rows.append([lv, lab, *_spread_text(across)[:1], *_spread_text(allf),
                             str(allf["n"]) if allf else "n/a"])
        blocks.append(("table", (["level", "label", "pooled AUC mean ± SD across repeats",
                                  "fold AUC mean ± SD (all repeats x folds)", "min", "max", "folds"], rows)))
    return blocks


def _summary_blocks(m: dict[str, Any], op: str = "0.5") -> list[Block]:
    """One compact table with the seed paper's Table 3 metrics: accuracy, AUC, sensitivity and specificity per
    label at slice and scan level, at threshold 0.5."""
    levels = [lv for lv in ("slice", "scan") if m[lv] is not None]
    header = ["label"] + [f"{lv} {name}" for lv in levels for name in ("accuracy", "AUC", "sensitivity",
                                                                         "specificity")]
    rows = []
    for lab in LABELS:
        row = [lab]
        for lv in levels:
            e = m[lv]["classes"][lab]
            o = e["operating_points"][op]
            row += [_f(o["accuracy"]), _f(e["auc"]), _f(o["sensitivity"]), _f(o["specificity"])]
        rows.append(row)
    return [("h2", "Summary"),
            ("p", ("Accuracy, AUC, sensitivity and specificity per label at slice and scan level, the metrics of "
                  "Table 3 of Burduja et al. 2020 (which does not state its threshold; 0.5 here). Intervals and "
                  "the other operating points follow below.")),
            ("table", (header, rows))]


def report_blocks(ev: Evaluation, image_names: Mapping[str, str]) -> list[Block]:
    """The report as a list of blocks (heading, paragraph, list, table, image) rendered to Markdown and HTML."""
    m = ev.metrics
    inp = m["inputs"]
    counts = m["counts"]
    blocks: list[Block] = [("h1", "ichd evaluation report")]
    facts = [f"predictions: `{inp.get('predictions', '?')}` ({inp.get('predictions_format', '?')})",
             f"labels: `{inp.get('labels', '?')}`",
             f"{counts['slices']} slices" + (f", {counts['scans']} scans" if counts["scans"] else "")
             + (f", {counts['patients']} patients" if counts["patients"] else ""),
             f"created {m['created']} by ichd {m['ichd_version']}",
             "plot abbreviations: " + ", ".join(f"{LABEL_ABBREVIATIONS[lab]} = {lab}" for lab in LABELS)]
    if m["scan"] is not None:
        facts.append(f"scan label: {m['scan_label']}; scan score: {m['scan_score']}")
    else:
        facts.append("**slice level only**: no scan membership in the inputs (give `--scans`)")
    t = m["thresholds"]
    facts.append(f"operating thresholds chosen on: {t['chosen_on']}")
    if t.get("policy"):
        facts.append(f"operating policy: any at {t['policy']['any']}, subtypes at {t['policy']['subtypes']} "
                     "(slice and scan level each on their own predictions); a subtype is called only when "
                     "\"any\" is")
    facts.append("calibrated: " + (f"yes ({m['calibrated']}, as the predictions file says)" if m.get("calibrated")
                                   else "no (the predictions file does not say so)"))
    b = m["bootstrap"]
    if b:
        facts.append(f"95 % intervals: percentile bootstrap, {b['n_boot']} replicates, seed {b['seed']}, "
                     f"resampling {b['n_groups']} {b['unit']}s with replacement (a replicate where a metric is "
                     f"undefined is skipped for that metric; fewest usable replicates for an AUC: "
                     f"{b['min_valid_auc_replicates']})")
    if not image_names:
        facts.append("figures were not drawn (--no-plots)")
    blocks.append(("ul", facts))
    if m["notes"]:
        blocks.append(("h2", "Notes"))
        blocks.append(("ul", m["notes"]))

    blocks.append(("h2", "RSNA 2019 weighted log loss (slice level)"))
    w = m["rsna_weighted_log_loss"]
    blocks.append(("p", ("Per-class binary log loss averaged over slices, then weighted over classes (any 2, each "
                        f"subtype 1); probabilities clipped to [{m['log_loss_epsilon']:g}, 1 - "
                        f"{m['log_loss_epsilon']:g}].")))
    rows = [[lab, _f(w["per_class"][lab], 4), _f(wt, 0)] for lab, wt in zip(LABELS, LABEL_WEIGHTS)]
    rows.append(["**weighted mean**", _ci(w["overall"], w.get("overall_ci95"), 4), _f(sum(LABEL_WEIGHTS), 0)])
    blocks.append(("table", (["class", "log loss", "weight"], rows)))
    if m.get("per_fold"):
        blocks.append(("p", "Per cross-validation fold (the predictions' `fold` column), slice level:"))
        rows = [[f, str(v["n_slices"]), _f(v["weighted_log_loss"], 4), _f(v["auc_any"])]
                for f, v in m["per_fold"].items()]
        blocks.append(("table", (["fold", "slices", "weighted log loss", "AUC (any)"], rows)))

    has_ci = bool(b)
    blocks += _summary_blocks(m)
    blocks += _cv_blocks(m)
    blocks += _level_blocks("slice", m["slice"], t, has_ci)
    for name in ("slice_roc_pr", "slice_confusion", "slice_confusion_youden", "slice_reliability"):
        if name in image_names:
            blocks.append(("img", (image_names[name], ev.figures[name][1])))
    if m["scan"] is not None:
        blocks += _level_blocks("scan", m["scan"], t, has_ci)
        for name in ("scan_roc_pr", "scan_confusion", "scan_confusion_youden", "scan_reliability"):
            if name in image_names:
                blocks.append(("img", (image_names[name], ev.figures[name][1])))
    if m.get("readers"):
        blocks += _reader_blocks(m["readers"])
        if "readers_roc" in image_names:
            blocks.append(("img", (image_names["readers_roc"], ev.figures["readers_roc"][1])))
    return blocks


def _reader_blocks(r: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [("h2", "Human readers")]
    blocks.append(("p", (f"{r['n_cases_matched']} of {r['n_cases_in_file']} cases of `{r['source']}` matched by "
                        f"{r['matched_on']} id. Reference: {r['reference']}. Model calls at its "
                        f"{r['model_operating_point']} threshold (scan level).")))
    rows = []
    for lab in r["labels"]:
        e = r["per_label"][lab]
        for name, o in [*e["readers"].items(), ("model", e["model"])]:
            rows.append([lab, name, _f(o["sensitivity"]), _f(o["specificity"]), _f(o["accuracy"]),
                         f"{o['tp']} / {o['fp']} / {o['tn']} / {o['fn']}"])
    blocks.append(("table", (["label", "rater", "sensitivity", "specificity", "accuracy", "TP / FP / TN / FN"],
                             rows)))
    rows = []
    for lab in r["labels"]:
        e = r["per_label"][lab]
        pairs = "; ".join(f"{k} {_f(v, 2)}" for k, v in e["cohen_kappa"].items())
        rows.append([lab, _f(e["fleiss_kappa_readers"]), _f(e["fleiss_kappa_readers_and_model"]),
                     _f(e["cohen_kappa_model_vs_reader_majority"]), pairs])
    blocks.append(("table", (["label", "Fleiss' kappa (readers)", "Fleiss' kappa (readers + model)",
                              "Cohen's kappa model vs reader majority", "Cohen's kappa per pair"], rows)))
    return blocks


def render_markdown(blocks: Sequence[Block]) -> str:
    """Render report blocks as GitHub-flavoured Markdown (images linked from ``plots/``)."""
    out: list[str] = []
    for kind, val in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + val + "\n")
        elif kind == "p":
            out.append(val + "\n")
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in val) + "\n")
        elif kind == "table":
            header, rows = val
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out.extend("| " + " | ".join(r) + " |" for r in rows)
            out.append("")
        elif kind == "img":
            path, caption = val
            out.append(f"![{caption}]({path})\n\n*{caption}*\n")
    return "\n".join(out)


def _inline_md(text: str) -> str:
    """Escape text for HTML, keeping `code` and **bold** from the Markdown."""
    import re

    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.88em;color:#555}code{background:#f5f5f5;padding:0 .2em}h2{border-bottom:1px solid #ddd}"""


def render_html(blocks: Sequence[Block], images: Mapping[str, bytes]) -> str:
    """Render report blocks as one self-contained HTML page (``images``: path -> PNG bytes, embedded)."""
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>ichd evaluation report</title>", f"<style>{_CSS}</style></head><body>"]
    for kind, val in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline_md(val)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_md(val)}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_md(x)}</li>" for x in val) + "</ul>")
        elif kind == "table":
            header, rows = val
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline_md(h)}</th>" for h in header)
                       + "</tr></thead><tbody>")
            out.extend("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append("</tbody></table>")
        elif kind == "img":
            path, caption = val
            data = base64.b64encode(images[path]).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{_inline_md(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def prepare_output_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Create ``out``; refuse (InputError) to reuse a non-empty folder unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} is not empty", hint="choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_report(ev: Evaluation, out: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write metrics.json, thresholds.json, plots/*.png, report.md and report.html into ``out``.

    Refuses a non-empty ``out`` unless ``overwrite``. Every file is written atomically. Returns the paths.
    """
    out = prepare_output_dir(out, overwrite=overwrite)
    paths: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    names: dict[str, str] = {}
    for name, (fig, _caption) in ev.figures.items():
        from ichd.evaluation.plots import png_bytes

        rel = f"plots/{name}.png"
        data = png_bytes(fig)
        images[rel] = data
        names[name] = rel
        paths[name] = atomic_write_bytes(out / rel, data)
    paths["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(ev.metrics, indent=2) + "\n")
    paths["thresholds"] = atomic_write_text(out / "thresholds.json",
                                            json.dumps(_jsonable(ev.thresholds.to_dict()), indent=2) + "\n")
    blocks = report_blocks(ev, names)
    paths["report_md"] = atomic_write_text(out / "report.md", render_markdown(blocks))
    paths["report_html"] = atomic_write_text(out / "report.html", render_html(blocks, images))
    return paths


def _is_thresholds_file(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == THRESHOLDS_KIND


def evaluate_files(
    predictions: str | Path,
    labels: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    source: str | None = None,
    partial_scans: bool = False,
    scans: str | Path | None = None,
    scan_predictions: str | Path | None = None,
    thresholds_from: str | Path | None = None,
    thresholds_labels: str | Path | None = None,
    sensitivity: float = 0.95,
    n_boot: int = bs.DEFAULT_N_BOOT,
    seed: int = bs.DEFAULT_SEED,
    n_bins: int = DEFAULT_BINS,
    readers: str | Path | None = None,
    overwrite: bool = False,
    plots: bool = True,
    subtype_specificity: float | None = DEFAULT_SUBTYPE_SPECIFICITY,
    repeats: Sequence[str | Path] = (),
) -> tuple[Evaluation, dict[str, Path]]:
    """Read the inputs, :func:`evaluate` them and :func:`write_report` into ``out`` (what ``ichd evaluate`` runs).

    ``thresholds_from`` is either a ``thresholds.json`` written by an earlier evaluation or a validation
    predictions file; the latter is matched with ``thresholds_labels`` (default: ``labels``) and the Youden and
    fixed-sensitivity thresholds are chosen on it, then applied unchanged here. ``scan_predictions`` is a CSV
    of the model's own scan output (``scan_id`` + labels) used as scan score (for the validation predictions
    too, so it must cover their scans). ``plots=False`` skips the
    figures (metrics and tables only). ``labels`` may be several files (one per data source); ``source`` then
    restricts the evaluation to one source's slices. Slices with missing labels, and predictions of slices of
    other sources, are left out (the report's notes say how many).

    ``repeats`` are OOF predictions of further cross-validation repeats of the same model (other fold seeds),
    on the same slices as ``predictions``; they add the "Repeated cross-validation" section, and every other
    metric stays that of ``predictions``. ``subtype_specificity``: see :func:`choose_operating_thresholds`.
    """
    from ichd.evaluation.io import (
        align,
        read_label_table,
        read_predictions,
        read_scan_map,
        read_scan_predictions,
    )
    from ichd.evaluation.readers import read_reader_study

    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:  # fail before the work, not after
        raise InputError(f"output folder {out} is not empty", hint="choose another --out or pass --overwrite")
    if n_boot < 0:
        raise InputError(f"--bootstrap must be >= 0, got {n_boot}")
    if not 0.0 < sensitivity <= 1.0:
        raise InputError(f"--sensitivity must be in (0, 1], got {sensitivity}")
    subtype_specificity = check_subtype_specificity(subtype_specificity)
    for path in repeats:
        if not Path(path).exists():
            raise InputError(f"--repeat {path} does not exist",
                             hint="give the OOF predictions file of another cross-validation repeat")
    if thresholds_from is not None and not Path(thresholds_from).exists():
        raise InputError(f"--thresholds-from {thresholds_from} does not exist",
                         hint="give validation predictions or a thresholds.json written by ichd evaluate")
    preds = read_predictions(predictions)
    scan_table = None
    if scan_predictions is not None:
        if preds.scans is not None:
            raise InputError(f"{predictions} already carries scan-level output; drop --scan-predictions")
        preds.scans = scan_table = read_scan_predictions(scan_predictions)
    label_paths = [labels] if isinstance(labels, (str, Path)) else list(labels)
    labels_text = ", ".join(str(p) for p in label_paths)
    label_table, label_notes, left_out = read_label_table(label_paths, source=source)
    unscored = preds.slices.index.isin(left_out)
    if unscored.any():  # predictions of slices left out above (missing labels, other sources)
        preds.slices = preds.slices[~unscored]
    scan_map = read_scan_map(scans) if scans is not None else None
    data = align(preds, label_table, labels_source=labels_text, scan_map=scan_map,
                 scan_map_source=str(scans) if scans is not None else "scan map", partial_scans=partial_scans)
    data.notes[:0] = label_notes
    thresholds = None
    if thresholds_from is not None:
        tpath = Path(thresholds_from)
        if _is_thresholds_file(tpath):
            thresholds = read_thresholds(tpath)
        else:
            val_preds = read_predictions(tpath)
            if val_preds.scans is None and scan_table is not None:
                val_preds.scans = scan_table  # the scan output table must then cover the validation scans too
            val_labels = label_table if thresholds_labels is None else read_label_table(thresholds_labels)[0]
            val = align(val_preds, val_labels, labels_source=str(thresholds_labels or labels_text),
                        scan_map=scan_map, partial_scans=partial_scans)
            if data.has_scans and not val.has_scans:
                raise InputError(f"{tpath}: the validation predictions have no scan membership, but the evaluated "
                                 "ones do", hint="give scan ids in both (or one --scans map covering both)")
            thresholds = choose_operating_thresholds(val, sensitivity=sensitivity, chosen_on=str(tpath),
                                                     subtype_specificity=subtype_specificity)
            shared = len(set(val.slice_ids) & set(data.slice_ids))
            if shared:
                data.notes.append(f"{shared} slice(s) of the threshold-selection data {tpath} are also in the "
                                  "evaluated data: the operating points are partly optimistic.")
    repeat_data = []
    for path in repeats:
        rep = read_predictions(path)
        if rep.scans is None and scan_table is not None:
            rep.scans = scan_table
        rep.slices = rep.slices[~rep.slices.index.isin(left_out)]
        rd = align(rep, label_table, labels_source=labels_text, scan_map=scan_map, partial_scans=partial_scans)
        if set(map(str, rd.slice_ids)) != set(map(str, data.slice_ids)):
            only = len(set(map(str, rd.slice_ids)) ^ set(map(str, data.slice_ids)))
            raise InputError(f"--repeat {path}: its slices differ from those of {predictions} ({only} slice(s) in "
                             "one file only)", hint="every repeat must predict the same slices (a CV repeat of "
                             "the same data with another fold seed)")
        repeat_data.append((str(path), rd))
    study = read_reader_study(readers) if readers is not None else None
    inputs = {"predictions": str(predictions), "predictions_format": preds.fmt, "labels": labels_text,
              "repeats": [str(p) for p in repeats],
              "source": source,
              "scans": None if scans is None else str(scans),
              "scan_predictions": None if scan_predictions is None else str(scan_predictions),
              "thresholds_from": None if thresholds_from is None else str(thresholds_from),
              "readers": None if readers is None else str(readers)}
    ev = evaluate(data, thresholds=thresholds, sensitivity=sensitivity, n_boot=n_boot, seed=seed, n_bins=n_bins,
                  readers=study, inputs=inputs, plots=plots, subtype_specificity=subtype_specificity,
                  repeats=repeat_data)
    return ev, write_report(ev, out, overwrite=overwrite)
