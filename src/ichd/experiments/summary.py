"""The numbers of one evaluated stage (slice CNN, sequence model or baseline), read from the files the training
and :func:`ichd.evaluation.report.evaluate_files` wrote: the row of the method comparison.

Operating points (``ichd evaluate``'s): ``0.5`` (a fixed threshold) and ``sensitivity`` (the threshold reaching the
configured sensitivity, 0.95, chosen on the same out-of-fold predictions, so its specificity is optimistic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _ci(entry: dict[str, Any], key: str) -> list[float | None] | None:
    ci = (entry.get("ci95") or {}).get(key)
    return list(ci) if ci else None


def _operating_point(entry: dict[str, Any], op: str) -> dict[str, Any]:
    point = (entry.get("operating_points") or {}).get(op) or {}
    ci = point.get("ci95") or {}
    return {"threshold": point.get("threshold"), "sensitivity": point.get("sensitivity"),
            "specificity": point.get("specificity"), "accuracy": point.get("accuracy"),
            "precision": point.get("precision"), "sensitivity_ci95": ci.get("sensitivity"),
            "specificity_ci95": ci.get("specificity")}


def level_any(metrics: dict[str, Any], level: str) -> dict[str, Any] | None:
    """AUC (+ CI) and the two operating points of label "any" at ``level`` (``slice`` or ``scan``)."""
    block = metrics.get(level)
    if not block:
        return None
    entry = block["classes"]["any"]
    return {"auc": entry.get("auc"), "auc_ci95": _ci(entry, "auc"), "n": entry.get("n"),
            "n_positive": entry.get("n_positive"), "at_0.5": _operating_point(entry, "0.5"),
            "at_sensitivity": _operating_point(entry, "sensitivity")}


def evaluation_summary(eval_dir: Path) -> dict[str, Any]:
    """The comparison numbers of an ``ichd evaluate`` output folder."""
    m = json.loads((eval_dir / "metrics.json").read_text())
    wll = m["rsna_weighted_log_loss"]
    return {"eval_dir": str(eval_dir), "weighted_log_loss": wll["overall"],
            "weighted_log_loss_ci95": wll.get("overall_ci95"), "slice_any": level_any(m, "slice"),
            "scan_any": level_any(m, "scan"), "counts": m.get("counts"), "scan_score": m.get("scan_score"),
            "sensitivity_target": (m.get("thresholds") or {}).get("sensitivity_target"),
            "notes": m.get("notes", [])}


def cnn_fold_costs(fold_dirs: list[Path]) -> dict[str, Any]:
    """Training and inference cost of slice-CNN folds from their ``metrics.json``: ms per training slice (all
    epochs' wall time over slices drawn), ms per predicted slice (the final out-of-fold pass, test-time views
    included), wall time."""
    train_s = train_n = infer_s = infer_n = wall = 0.0
    for d in fold_dirs:
        m = json.loads((d / "metrics.json").read_text())
        for h in m.get("history", []):
            train_s += float(h.get("train/seconds") or 0.0)
            train_n += float(h.get("train/n") or 0.0)
        oof = m.get("oof") or {}
        infer_s += float(oof.get("val/seconds") or 0.0)
        infer_n += float(oof.get("val/n") or 0.0)
        wall += float(m.get("wall_seconds") or 0.0)
    return {"train_ms_per_slice": 1000 * train_s / train_n if train_n else None,
            "infer_ms_per_slice": 1000 * infer_s / infer_n if infer_n else None,
            "train_slices_seen": int(train_n), "wall_seconds": wall}


def baseline_fold_costs(fold_dirs: list[Path]) -> dict[str, Any]:
    """The same costs for PCA baselines (fit and predict time over their slices)."""
    fit = predict = n_train = n_val = wall = 0.0
    params = []
    for d in fold_dirs:
        m = json.loads((d / "metrics.json").read_text())
        fit += m["fit_seconds"]
        predict += m["predict_seconds"]
        n_train += m["train_slices"]
        n_val += m["val_slices"]
        wall += m["wall_seconds"]
        params.append(int(m["parameters"]))
    return {"train_ms_per_slice": 1000 * fit / n_train if n_train else None,
            "infer_ms_per_slice": 1000 * predict / n_val if n_val else None,
            "train_slices_seen": int(n_train), "wall_seconds": wall,
            "parameters": int(np.median(params)) if params else None}


def checkpoint_parameters(path: Path) -> dict[str, int]:
    """Parameter count of a checkpoint's model (all, and trainable per the training config's freeze list)."""
    from ichd.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    total = int(sum(p.numel() for p in ckpt.model.parameters()))
    prefixes = tuple((ckpt.config.get("model") or {}).get("freeze") or ())
    frozen = int(sum(p.numel() for n, p in ckpt.model.named_parameters() if prefixes and n.startswith(prefixes)))
    return {"parameters": total, "trainable_parameters": total - frozen}
