"""``ichd preprocess`` end to end on real data: CT-ICH patients, a DICOM series, a windowed PNG folder; resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ichd.cli.main import run
from ichd.preprocessing.cache import open_cache


def test_preprocess_ctich_resume_and_settings_guard(data_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cache"
    args = ["-q", "preprocess", str(data_root / "ct-ich"), "--out", str(out), "--size", "64", "--patients", "49,84",
            "--workers", "1"]
    assert run(args) == 0
    assert "wrote 2 series" in capsys.readouterr().out
    cache = open_cache(out)
    assert cache.scan_ids == ["ctich-049", "ctich-084"]
    assert cache.array("ctich-049").shape == (33, 3, 64, 64)
    warnings = cache.series["ctich-084"]["warnings"]
    assert [w["code"] for w in warnings] == ["missing_bone_window"]
    assert run(args) == 0
    assert "skipped 2 input(s)" in capsys.readouterr().out
    other = ["-q", "preprocess", str(data_root / "ct-ich"), "--out", str(out), "--size", "32", "--patients", "49"]
    assert run(other) == 2
    assert "different preprocessing" in capsys.readouterr().err


def test_preprocess_dicom_and_png_folder(data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for s in (1, 2, 10):
        shutil.copy(data_root / "ct-ich" / "brain" / "049" / f"{s:03d}.jpg", pngs / f"img{s}.jpg")
    out = tmp_path / "cache"
    assert run(["-q", "preprocess", str(data_root / "edge-cases" / "ge-tilt"), str(pngs), "--out", str(out),
                "--size", "32", "--window", "40,120", "--workers", "1", "--dtype", "float16"]) == 0
    cache = open_cache(out)
    kinds = sorted(e["source_kind"] for e in cache.series.values())
    assert kinds == ["dicom", "images"]
    dicom_scan = next(k for k, e in cache.series.items() if e["source_kind"] == "dicom")
    arr = cache.array(dicom_scan)
    assert arr.dtype == np.float16 and arr.shape == (8, 3, 32, 32)
    rows = cache.scan_slices(dicom_scan)
    assert rows["z_mm"].is_monotonic_increasing and rows["z_mm"].notna().all()
    image_scan = next(k for k, e in cache.series.items() if e["source_kind"] == "images")
    assert cache.array(image_scan).shape[0] == 3


def test_preprocess_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["preprocess", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(["preprocess", str(tmp_path), "--out", str(tmp_path / "c"), "--dtype", "int8"]) == 2
