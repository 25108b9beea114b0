"""``ichd predict`` on the real shared data: CQ500 DICOM (JPEG lossless, tilt), RSNA single slices, CT-ICH JPGs.

The pipeline tests use a small untrained model (tests/model_factories.py): they check reading, references and
reports, not accuracy. ``test_default_model_*`` use the shipped default model and skip when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichd.cli.main import run
from ichd.constants import LABELS
from ichd.inference.report_json import validate_result


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    from model_factories import single_thread_torch

    yield from single_thread_torch()


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not in the data folder")
    return path


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. highdicom on a single-component PatientName
def test_cq500_single_slice_dicom_outputs_reference_the_source(data_root: Path, test_bundle: Path, tmp_path: Path,
                                                               capsys):
    import pydicom

    src = _need(data_root / "cq500" / "CQ500-CT-1")
    out = tmp_path / "out"
    code = run(["-q", "predict", str(src), "--model", str(test_bundle), "--out", str(out),
                "--format", "json,html,dicom"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "prediction.json").read_text())
    validate_result(data)
    source = pydicom.dcmread(next(src.rglob("*.dcm")), stop_before_pixels=True)
    assert data["n_slices"] == 1 and data["study_instance_uid"] == source.StudyInstanceUID
    assert data["slices"][0]["sop_instance_uid"] == source.SOPInstanceUID
    sr = pydicom.dcmread(out / "dicom" / "sr.dcm")
    sc = pydicom.dcmread(out / "dicom" / "sc-001.dcm")
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == sc.PatientID == source.PatientID  # filed under the source patient


def test_rsna_samples_one_scan_per_slice(data_root: Path, test_bundle: Path, capsys):
    import pandas as pd

    src = _need(data_root / "rsna-samples")
    code = run(["-q", "predict", str(src), "--model", str(test_bundle), "--independent"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    validate_result(data)
    labels = pd.read_csv(src / "labels.csv")
    assert isinstance(data, list) and len(data) == len(labels) == 10
    by_sop = {d["slices"][0]["sop_instance_uid"]: d for d in data}
    assert set(by_sop) == set(labels["sop_instance_uid"])  # every labelled slice has its own result
    for d in data:
        assert d["n_slices"] == 1 and set(d["scan"]) == set(LABELS)
        assert "single_slice" in {w["code"] for w in d["warnings"]}


@pytest.mark.slow
def test_cq500_full_series_jpeg_lossless(data_root: Path, test_bundle: Path, tmp_path: Path, capsys):
    src = _need(data_root / "cq500" / "CQ500-CT-0")
    out = tmp_path / "out"
    code = run(["-q", "predict", str(src), "--model", str(test_bundle), "--out", str(out), "--format",
                "json,html,dicom"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "prediction.json").read_text())
    assert data["n_slices"] == 238
    codes = {w["code"] for w in data["warnings"]}
    assert "gantry_tilt" in codes
    zs = [s["z_mm"] for s in data["slices"]]
    assert zs == sorted(zs)


def _default_model_or_skip() -> None:
    from ichd.errors import ModelError
    from ichd.models.bundled import get_bundled

    try:
        get_bundled("default")
    except ModelError:
        pytest.skip("no bundled default model in this checkout")


def test_default_model_on_rsna_samples(data_root: Path, capsys):
    import pandas as pd

    _default_model_or_skip()
    src = _need(data_root / "rsna-samples")
    code = run(["-q", "predict", str(src), "--independent"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    labels = pd.read_csv(src / "labels.csv").set_index("sop_instance_uid")
    by_sop = {d["slices"][0]["sop_instance_uid"]: d for d in data}
    assert set(by_sop) == set(labels.index)
    for sop, d in by_sop.items():
        positive = [lab for lab in LABELS if labels.loc[sop, lab] == 1]
        assert all(0.0 <= d["scan"][lab] <= 1.0 for lab in positive)  # labelled subtypes are reported


@pytest.mark.slow
def test_hu_slices_need_allow_secondary_capture(data_root: Path, test_bundle: Path, capsys):
    src = _need(data_root / "hu-slices" / "dicom")
    code = run(["-q", "predict", str(src), "--model", str(test_bundle), "--independent"])
    assert code == 2 and "ichd: error:" in capsys.readouterr().err  # Secondary Captures are skipped by default
    code = run(["-q", "predict", str(src), "--model", str(test_bundle), "--independent", "--allow-secondary-capture"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert len(data) == 26 and all(d["input_kind"] == "dicom" for d in data)
    assert all("secondary_capture" in {w["code"] for w in d["warnings"]} for d in data)
