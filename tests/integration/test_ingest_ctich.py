"""Integration tests: CT-ICH brain+bone JPG pairs through read_ct's dispatcher."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichd.io import read_ct
from ichd.io.summary import series_summary


def test_ctich_patient_folder(data_root: Path) -> None:
    (s,) = read_ct(data_root / "ct-ich/brain/049")
    assert s.series_instance_uid == "ctich-049" and s.source_kind == "ctich"
    assert s.n_slices == 33 and s.hu.shape[1:] == (650, 650)
    assert s.sop_instance_uids[0] == "ctich-049-001"
    mid = s.hu[s.n_slices // 2]
    assert float(np.percentile(mid, 1)) < -800  # air (the bone window reaches -900 HU)
    brain = mid[(mid > 0) & (mid < 100)]
    assert 20 <= float(np.median(brain)) <= 50
    summary = series_summary(s)
    assert summary["n_slices"] == 33 and summary["spacing_mm"] == [None, None, None]


def test_ctich_missing_bone_slice_warns(data_root: Path) -> None:
    (s,) = read_ct(data_root / "ct-ich/brain/084")
    assert "missing_bone_window" in [w.code for w in s.warnings]
