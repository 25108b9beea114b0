"""The second reader's DICOM SEG (ichd.inference.dicom_seg) and its JSON block, on a synthetic DICOM series and a
hand-made label map (no BLAST-CT run): dciodvfy finds no error, highdicom reads it back voxel for voxel."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ichd.inference.dicom_seg import SEG_SERIES_NUMBER, can_write_seg, write_segmentation
from ichd.inference.report_json import SCHEMA_VERSION, prediction_to_dict, validate_result
from ichd.io import read_ct
from ichd.testing.factories import make_ct_series, write_series

FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def series(tmp_path: Path):
    datasets = make_ct_series(6, rows=32, columns=32)
    for ds in datasets:
        ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    write_series(tmp_path / "in", datasets)
    (s,) = read_ct(tmp_path / "in")
    return s


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2, 10:15, 10:20] = 1  # IPH
    labels[3, 20:25, 20:22] = 2  # EAH
    labels[3, 5:8, 5:8] = 4  # IVH
    labels[4, 12:14, 12:14] = 3  # oedema
    return labels


def _dciodvfy(path: Path) -> str:
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (dicom3tools) is missing in CI")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def test_seg_passes_dciodvfy_and_reads_back(series, tmp_path: Path):
    import highdicom as hd

    labels = _labels(series.hu.shape)
    written = write_segmentation(tmp_path / "seg.dcm", labels, series, algorithm_version="v1 weights")
    report = _dciodvfy(tmp_path / "seg.dcm")
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.SOPInstanceUID == written.SOPInstanceUID and int(seg.SeriesNumber) == SEG_SERIES_NUMBER
    assert seg.StudyInstanceUID == series.study_instance_uid
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE
    assert seg.number_of_segments == 4
    assert [seg.get_segment_description(k).SegmentLabel for k in range(1, 5)] == [
        "intraparenchymal hemorrhage (IPH)", "extra-axial hemorrhage (EAH: subdural + epidural)",
        "perilesional oedema", "intraventricular hemorrhage (IVH)"]
    # every frame references its source slice; the map comes back voxel for voxel, slice by slice
    referenced = {ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(series.sop_instance_uids)
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=series.sop_instance_uids,
                                             combine_segments=True, skip_overlap_checks=True)
    assert back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)
    # only frames holding a segment are stored: 4 segments on 4 slices, one each
    assert int(seg.NumberOfFrames) == 4


def test_seg_of_an_empty_map_is_valid(series, tmp_path: Path):
    import highdicom as hd

    write_segmentation(tmp_path / "seg.dcm", np.zeros(series.hu.shape, np.uint8), series, algorithm_version="v1")
    assert not [x for x in _dciodvfy(tmp_path / "seg.dcm").splitlines() if x.startswith("Error")]
    back = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(
        source_sop_instance_uids=series.sop_instance_uids, combine_segments=True, skip_overlap_checks=True)
    assert not back.any()


def test_seg_needs_dicom_geometry(series, tmp_path: Path):
    import dataclasses

    nifti_like = dataclasses.replace(series, source_kind="nifti")
    assert can_write_seg(nifti_like) == "the input is not DICOM"
    with pytest.raises(ValueError, match="not DICOM"):
        write_segmentation(tmp_path / "x.dcm", _labels(series.hu.shape), nifti_like, algorithm_version="v1")
    with pytest.raises(ValueError, match="does not match"):
        write_segmentation(tmp_path / "x.dcm", _labels(series.hu.shape)[:3], series, algorithm_version="v1")


def test_sources_without_a_frame_of_reference_get_a_new_one(tmp_path: Path):
    import highdicom as hd

    write_series(tmp_path / "in", make_ct_series(4, rows=16, columns=16))  # like CQ500: no FrameOfReferenceUID
    (s,) = read_ct(tmp_path / "in")
    labels = np.zeros(s.hu.shape, np.uint8)
    labels[1, 4:8, 4:8] = 2
    notes: list[str] = []
    seg = write_segmentation(tmp_path / "x.dcm", labels, s, algorithm_version="v1", notes=notes)
    assert len(notes) == 1 and seg.FrameOfReferenceUID in notes[0]
    assert not [x for x in _dciodvfy(tmp_path / "x.dcm").splitlines() if x.startswith("Error")]
    back = hd.seg.segread(tmp_path / "x.dcm").get_pixels_by_source_instance(
        source_sop_instance_uids=s.sop_instance_uids, combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(back, labels)


def _block(**extra):
    return {"name": "blast-ct", "version": "v1 weights, blast-ct 2.1.0",
            "models": [{"file": "model_1.pt", "sha256_16": "0123456789abcdef"}],
            "volumes_ml": {"iph": 12.5, "eah": 0.0, "oedema": 3.25, "ivh": 0.4}, "hemorrhage_ml": 12.9,
            "slices_with_hemorrhage": [2, 3], "seconds": 80.0, "settings": {"threads": 2, "block": 90},
            "note": "volumes from BLAST-CT", **extra}


def _pred(n: int = 4):
    from ichd.constants import LABELS
    from ichd.types import Prediction

    p = np.full((n, 6), 0.1, np.float32)
    return Prediction(slice_probs=p, scan_probs=p.max(axis=0), thresholds=dict.fromkeys(LABELS, 0.5),
                      model={"name": "m", "version": "1.0", "sha256": "ab" * 32}, study_instance_uid="1.2.3",
                      series_instance_uid="1.2.3.1", sop_instance_uids=[f"1.2.3.1.{i}" for i in range(n)],
                      positions_mm=np.arange(n) * 5.0)


def test_second_reader_block_in_the_json_schema():
    pred = _pred()
    data = prediction_to_dict(pred, second_reader=_block(seg={"file": "dicom/seg.dcm", "series_instance_uid": "1.2.3",
                                                            "sop_instance_uid": "1.2.3.4"}))
    assert data["schema_version"] == SCHEMA_VERSION == "2.1"
    validate_result(data)
    assert "second_reader" not in prediction_to_dict(pred)
    old = prediction_to_dict(pred)
    old["schema_version"] = "2.0"
    validate_result(old)  # 2.0 results stay valid
    from ichd.errors import ModelError

    for bad in (_block(volumes_ml={"iph": -1.0, "eah": 0.0, "oedema": 0.0, "ivh": 0.0}),
                _block(volumes_ml={"iph": 1.0, "eah": 0.0, "oedema": 0.0}), _block(name="other"),
                _block(cam_volume_ml=3.0)):
        with pytest.raises(ModelError, match="second_reader"):
            validate_result(prediction_to_dict(pred, second_reader=bad))
