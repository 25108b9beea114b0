"""Evaluation: the RSNA weighted log loss and per-subtype metrics, bootstrap intervals, calibration, plots,
reports and human-reader comparison.

Modules: :mod:`~ichd.evaluation.metrics` (``weighted_log_loss``, ``CumulativeMetrics``, ``choose_thresholds``,
per-class metrics), :mod:`~ichd.evaluation.bootstrap` (patient-level bootstrap),
:mod:`~ichd.evaluation.calibration` (ECE, reliability curves), :mod:`~ichd.evaluation.io` (prediction files,
labels, alignment), :mod:`~ichd.evaluation.readers` (reader studies, kappas), :mod:`~ichd.evaluation.plots`
and :mod:`~ichd.evaluation.report` (``evaluate``, ``write_report``, ``evaluate_files``).

The most used names are importable from here (loaded on first use, so importing the package is cheap).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "weighted_log_loss": "metrics",
    "CumulativeMetrics": "metrics",
    "choose_thresholds": "metrics",
    "choose_threshold": "metrics",
    "evaluate": "report",
    "evaluate_files": "report",
    "write_report": "report",
}

__all__ = ["CumulativeMetrics", "choose_threshold", "choose_thresholds", "evaluate", "evaluate_files",
           "weighted_log_loss", "write_report"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"ichd.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ichd.evaluation' has no attribute {name!r}")
