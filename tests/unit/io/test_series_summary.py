"""Unit tests for ichd.io.summary.series_summary (the ``ichd ingest --json`` record)."""

from __future__ import annotations

import json
import math

import numpy as np

from ichd.io.summary import hu_stats, series_summary
from ichd.types import CTSeries


def _series(**kw: object) -> CTSeries:
    hu = np.full((3, 8, 8), -1000.0, dtype=np.float32)
    hu[:, 2:6, 2:6] = 40.0
    base = {
        "hu": hu, "spacing_mm": (2.5, 0.5, 0.5), "positions_mm": np.array([0.0, 2.5, 7.5]),
        "sop_instance_uids": ["1.1", "1.2", "1.3"], "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4",
        "tilt_deg": 8.5,
        "meta": {"gaps": [{"after_index": 1, "step_mm": 5.0, "expected_mm": 2.5}], "duplicates": ["x.dcm"],
                 "modality": "CT", "ordering": "position"},
    }
    base.update(kw)
    s = CTSeries(**base)
    s.warn("gap", "one gap", ("c.dcm",))
    return s


def test_summary_fields_and_json_round_trip() -> None:
    d = series_summary(_series())
    assert d["study_instance_uid"] == "1.2.3" and d["series_instance_uid"] == "1.2.3.4"
    assert d["n_slices"] == 3 and d["shape"] == [3, 8, 8]
    assert d["spacing_mm"] == [2.5, 0.5, 0.5]
    assert d["z_range_mm"] == [0.0, 7.5]
    assert d["tilt_deg"] == 8.5
    assert d["gaps"][0]["after_index"] == 1 and d["duplicates"] == ["x.dcm"]
    assert d["warnings"] == [{"code": "gap", "message": "one gap", "files": ["c.dcm"]}]
    assert d["meta"] == {"modality": "CT", "ordering": "position"}
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_unknown_geometry_becomes_null() -> None:
    d = series_summary(_series(spacing_mm=(math.nan, math.nan, math.nan), positions_mm=np.full(3, np.nan),
                               tilt_deg=0.0, meta={}))
    assert d["spacing_mm"] == [None, None, None] and d["z_range_mm"] is None
    assert d["gaps"] == [] and d["duplicates"] == []
    json.dumps(d, allow_nan=False)


def test_hu_stats() -> None:
    hu = np.zeros((2, 16, 16), dtype=np.float32)
    hu[:, :8] = -1000.0
    stats = hu_stats(hu, stride=1)
    assert stats["min"] == -1000.0 and stats["max"] == 0.0 and stats["p1"] == -1000.0
