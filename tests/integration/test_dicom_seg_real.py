"""The second reader's DICOM SEG on real source headers (CQ500-CT-0: tilted, JPEG lossless, de-identified, without
a FrameOfReferenceUID) with a synthetic label map (no BLAST-CT run): dciodvfy finds no error, highdicom warns of
nothing and reads the labels back slice by slice."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. highdicom on a single-component PatientName
def test_seg_on_cq500_headers(data_root: Path, tmp_path: Path):
    import highdicom as hd

    from ichd.inference.dicom_seg import write_segmentation
    from ichd.io import read_ct

    src = data_root / "cq500" / "CQ500-CT-0"
    if not src.is_dir():
        pytest.skip(f"{src} not in the data folder")
    (full,) = read_ct(src)
    subset = tmp_path / "in"
    subset.mkdir()
    for name in full.source_files[120:136]:
        shutil.copy2(src / name, subset / Path(name).name)
    (series,) = read_ct(subset)
    labels = np.zeros(series.hu.shape, np.uint8)
    labels[3, 200:230, 250:270] = 1
    labels[4, 100:110, 100:140] = 2
    labels[9, 300:305, 300:305] = 4
    notes: list[str] = []
    seg = write_segmentation(tmp_path / "seg.dcm", labels, series, algorithm_version="v1", notes=notes)
    assert len(notes) == 1 and "no FrameOfReferenceUID" in notes[0]
    assert seg.StudyInstanceUID == series.study_instance_uid and seg.PatientIdentityRemoved == "YES"
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (dicom3tools) is missing in CI")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    report = subprocess.run(["dciodvfy", str(tmp_path / "seg.dcm")], check=False, capture_output=True, text=True,
                            timeout=120)
    errors = [x for x in (report.stdout + report.stderr).splitlines() if x.startswith("Error")]
    assert not errors, report.stderr
    back = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(
        source_sop_instance_uids=series.sop_instance_uids, combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(back, labels)
