"""JSON-ready description of a :class:`~ichd.types.CTSeries` (what ``ichd ingest --json`` prints per series)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ichd.types import CTSeries

#: Meta keys copied into the summary when present (technical facts only; not even the hashed patient id).
SUMMARY_META_KEYS: tuple[str, ...] = (
    "modality", "manufacturer", "kvp", "transfer_syntaxes", "ordering", "tilt_source", "slice_thickness_mm",
    "multiframe", "n_files", "window",
)


def _num(value: Any, digits: int = 4) -> float | None:
    """A float rounded for JSON, ``None`` for nan/inf/None."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def hu_stats(hu: np.ndarray, *, stride: int = 4) -> dict[str, float | None]:
    """Min, 1st percentile, median, 99th percentile and max HU on a strided sample (cheap on big volumes)."""
    sample = np.asarray(hu[:, ::stride, ::stride], dtype=np.float32)
    if sample.size == 0:
        return {"min": None, "p1": None, "median": None, "p99": None, "max": None}
    p1, med, p99 = np.percentile(sample, [1, 50, 99])
    return {"min": _num(sample.min(), 1), "p1": _num(p1, 1), "median": _num(med, 1), "p99": _num(p99, 1),
            "max": _num(sample.max(), 1)}


def series_summary(series: CTSeries) -> dict[str, Any]:
    """Study/series UIDs, slice count, shape, spacing, z range, tilt, gaps, duplicates, HU stats and warnings."""
    positions = np.asarray(series.positions_mm, dtype=np.float64)
    finite = positions[np.isfinite(positions)]
    meta = series.meta
    summary: dict[str, Any] = {
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "source": series.source,
        "source_kind": series.source_kind,
        "n_slices": series.n_slices,
        "shape": list(series.hu.shape),
        "spacing_mm": [_num(v) for v in series.spacing_mm],
        "z_range_mm": [_num(finite.min()), _num(finite.max())] if finite.size else None,
        "tilt_deg": _num(series.tilt_deg, 2),
        "gaps": list(meta.get("gaps", [])),
        "duplicates": list(meta.get("duplicates", [])),
        "uneven_spacing": bool(meta.get("uneven_spacing", False)),
        "hu": hu_stats(series.hu),
        "warnings": [w.to_dict() for w in series.warnings],
    }
    summary["meta"] = {k: meta[k] for k in SUMMARY_META_KEYS if k in meta}
    return summary
