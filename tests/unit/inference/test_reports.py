"""JSON result + schema, HTML report and DICOM SR/SC writers, on a hand-made prediction (no model needed)."""

from __future__ import annotations

import copy
import html as html_lib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.errors import ModelError
from ichd.inference.dicom_out import (
    DicomContext,
    is_valid_uid,
    orientation_letters,
    split_frame,
    write_dicom_outputs,
)
from ichd.inference.evidence import SliceEvidence
from ichd.inference.report_html import DISCLAIMER, render_html
from ichd.inference.report_json import SCHEMA_VERSION, dumps, load_schema, prediction_to_dict, validate_result
from ichd.types import IngestWarning, Prediction

ROOT = "1.2.826.0.1.3680043.8.498.77"


def _pred(n: int = 4) -> Prediction:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 0.3, size=(n, 6)).astype(np.float32)
    p[2, 0], p[2, 5] = 0.9, 0.8  # slice 2: any + subdural
    return Prediction(
        slice_probs=p, scan_probs=p.max(axis=0), thresholds=dict.fromkeys(LABELS, 0.5),
        model={"name": "m", "version": "1.0", "sha256": "ab" * 32, "scan_rule": "max", "tta": "false"},
        study_instance_uid=f"{ROOT}.1", series_instance_uid=f"{ROOT}.2",
        sop_instance_uids=[f"{ROOT}.3.{i}" for i in range(n)], positions_mm=np.arange(n) * 5.0,
        warnings=[IngestWarning("gap", "a <script>gap</script>", ("a.dcm",))], timing_s={"cnn": 0.5})


def _evidence(pred: Prediction) -> list[SliceEvidence]:
    hu = np.full((48, 48), -1000.0, np.float32)
    hu[8:40, 8:40] = 40.0
    cam = np.zeros((32, 32), np.float32)
    cam[10:20, 10:20] = 1.0
    return [SliceEvidence(index=2, label="subdural", probability=0.8, image_hu=hu, cam=cam),
            SliceEvidence(index=1, label="any", probability=0.2, image_hu=hu, cam=None)]


def test_schema_is_valid_and_results_validate():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(load_schema())
    pred = _pred()
    data = prediction_to_dict(pred, flagged=[(2, "subdural", 0.8)], input_kind="dicom", generated_uids=False)
    validate_result(data)
    validate_result([data, data])
    assert data["schema_version"] == SCHEMA_VERSION and data["n_slices"] == 4
    assert data["scan_positive"] == {"any": True, "epidural": False, "intraparenchymal": False,
                                     "intraventricular": False, "subarachnoid": False, "subdural": True}
    assert data["slices"][2]["probabilities"]["subdural"] == pytest.approx(0.8, abs=1e-6)
    assert data["slices"][1]["z_mm"] == 5.0 and data["model"]["tta"] is False
    assert json.loads(dumps(data)) == data


def test_display_orientation_is_written_only_when_known():
    pred = _pred()
    data = prediction_to_dict(pred, display_orientation=("L", "P"))
    validate_result(data)
    assert data["display_orientation"] == {"row": "L", "column": "P"}
    assert "display_orientation" not in prediction_to_dict(pred)  # e.g. NIfTI or PNG input
    broken = copy.deepcopy(data)
    broken["display_orientation"]["row"] = ""
    with pytest.raises(ModelError, match="does not match"):
        validate_result(broken)


def test_unknown_positions_become_null():
    pred = _pred()
    pred.positions_mm = np.full(4, np.nan)
    data = prediction_to_dict(pred)
    validate_result(data)
    assert all(s["z_mm"] is None for s in data["slices"])


def test_slices_name_their_source_files():
    pred = _pred()
    data = prediction_to_dict(pred, source_files=["a/IM0.dcm", "a/IM1.dcm", "b/x.png", "b/y.png"])
    validate_result(data)
    assert [s["source_file"] for s in data["slices"]] == ["a/IM0.dcm", "a/IM1.dcm", "b/x.png", "b/y.png"]
    assert all("source_file" not in s for s in prediction_to_dict(pred)["slices"])  # optional: e.g. NIfTI
    with pytest.raises(ValueError, match="3 source files for 4 slices"):
        prediction_to_dict(pred, source_files=["a", "b", "c"])
    broken = copy.deepcopy(data)
    broken["slices"][0]["source_file"] = ""
    with pytest.raises(ModelError, match="does not match"):
        validate_result(broken)


def _predict_cli(args: list[str], bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """``ichd predict ARGS`` with the test bundle; the JSON it prints (validated)."""
    from ichd.cli.main import run

    assert run(["-q", "predict", *args, "--model", str(bundle_dir), "--device", "cpu", "--workers", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    validate_result(data)
    return data


def test_predict_json_names_the_slices_of_an_image_folder(tmp_path: Path, bundle_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    from PIL import Image

    src = tmp_path / "pngs"
    (src / "sub").mkdir(parents=True)
    names = ["slice-2.png", "slice-10.png", "slice-1.png"]
    for i, name in enumerate(names):
        img = np.zeros((48, 48), np.uint8)
        img[8:40, 8:40] = 100 + 20 * i
        Image.fromarray(img).save(src / "sub" / name)
    data = _predict_cli([str(src), "--window", "40,80"], bundle_dir, capsys)
    assert data["input_kind"] == "images" and data["n_slices"] == 3
    assert [s["source_file"] for s in data["slices"]] == ["sub/slice-1.png", "sub/slice-2.png", "sub/slice-10.png"]
    each = _predict_cli([str(src), "--window", "40,80", "--independent"], bundle_dir, capsys)
    assert sorted(r["slices"][0]["source_file"] for r in each) == sorted(f"sub/{n}" for n in names)


def test_predict_json_names_independent_dicom_files(tmp_path: Path, bundle_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]):
    from ichd.testing.factories import make_ct_series, write_series

    src = tmp_path / "rsna"
    write_series(src / "a", make_ct_series(2, rows=48, columns=48, patient_id="P1"), names=["ID_1.dcm", "ID_2.dcm"])
    write_series(src / "b", make_ct_series(1, rows=48, columns=48, patient_id="P2"), names=["ID_3.dcm"])
    results = _predict_cli([str(src), "--independent"], bundle_dir, capsys)
    assert len(results) == 3 and all(r["n_slices"] == 1 for r in results)
    by_uid = {r["series_instance_uid"]: r["slices"][0] for r in results}
    assert sorted(s["source_file"] for s in by_uid.values()) == ["a/ID_1.dcm", "a/ID_2.dcm", "b/ID_3.dcm"]
    assert all(uid == s["sop_instance_uid"] for uid, s in by_uid.items())  # independent: series = the image
    one = _predict_cli([str(src / "b" / "ID_3.dcm")], bundle_dir, capsys)
    assert one["slices"][0]["source_file"] == "ID_3.dcm"  # a single file: its name
    archive = tmp_path / "rsna.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*.dcm")):
            zf.write(path, path.relative_to(tmp_path).as_posix())
    zipped = _predict_cli([str(archive), "--independent"], bundle_dir, capsys)
    assert sorted(r["slices"][0]["source_file"] for r in zipped) == ["rsna/a/ID_1.dcm", "rsna/a/ID_2.dcm",
                                                                      "rsna/b/ID_3.dcm"]  # zip: member names


@pytest.mark.parametrize("breaks", [
    lambda d: d["scan"].update(any=1.5),
    lambda d: d["scan"].pop("subdural"),
    lambda d: d["slices"][0]["probabilities"].update(extra=0.1),
    lambda d: d.update(schema_version="1.0"),
    lambda d: d.update(scan_call="maybe"),
    lambda d: d.pop("skipped_slices"),
    lambda d: d["model"].update(sha256="xyz"),
    lambda d: d.update(slices=[]),
])
def test_schema_rejects_broken_results(breaks):
    data = prediction_to_dict(_pred())
    broken = copy.deepcopy(data)
    breaks(broken)
    with pytest.raises(ModelError, match="does not match"):
        validate_result(broken)


def test_html_is_self_contained_and_escaped():
    pred = _pred()
    text = render_html(pred, _evidence(pred), model_info={"name": "m", "version": "1.0", "license": "CC BY 4.0",
                                                          "model_card_text": "# card <b>"},
                       input_kind="dicom")
    assert text.startswith("<!DOCTYPE html>") and DISCLAIMER in text
    assert "<script>" not in text and "&lt;script&gt;gap" in text and "# card &lt;b&gt;" in text
    assert text.count("data:image/png;base64,") == 3  # curves + two slices
    for attr in ('src="http', "src='http", 'href="http', "@import", "url("):
        assert attr not in text
    assert "Hemorrhage suspected" in text and "subdural" in text


def test_html_without_flagged_slices():
    pred = _pred()
    pred.thresholds = dict.fromkeys(LABELS, 0.95)
    text = render_html(pred, [], model_info={"name": "m"}, gradcam=False)
    assert "No slice reached the operating threshold" in text and "No hemorrhage above" in text


def _demo(bundle_manifest: dict | None):
    """The demo block for a model whose manifest has ``bundle_manifest`` (None: a plain checkpoint)."""
    from ichd.inference.demo import demo_block
    from ichd.models.bundled import BundledModel

    bundle = None if bundle_manifest is None else BundledModel("m", "1.0", Path("."), bundle_manifest)
    return demo_block(bundle)


def test_demo_block_in_json_and_banner_in_html():
    from ichd.inference.demo import NOTE_IN_TRAINING

    pred = _pred()
    demo = _demo({"training_sources": [{"source": "ct-ich", "patients": "all"}]})
    assert demo == {"is_demo": True, "in_training_data": True, "note": NOTE_IN_TRAINING}
    data = prediction_to_dict(pred, input_kind="ctich", generated_uids=True, demo=demo)
    validate_result(data)
    validate_result([data, data])
    assert data["schema_version"] == SCHEMA_VERSION  # the block is optional and additive
    assert data["demo"] == {"is_demo": True, "in_training_data": True, "note": NOTE_IN_TRAINING}
    assert "CT-ICH patient 071" in data["demo"]["note"] and "not an independent test" in data["demo"]["note"]
    text = render_html(pred, [], model_info={"name": "m"}, input_kind="ctich", demo=demo)
    assert 'class="demo-banner"' in text and "Demo study." in text
    assert html_lib.escape(NOTE_IN_TRAINING) in text
    assert text.index('class="demo-banner"') < text.index('class="disclaimer"')  # at the top


def test_no_demo_block_or_banner_for_other_input():
    pred = _pred()
    data = prediction_to_dict(pred, input_kind="dicom", generated_uids=False)
    validate_result(data)
    assert "demo" not in data
    text = render_html(pred, [], model_info={"name": "m"}, input_kind="dicom")
    assert 'class="demo-banner"' not in text and "Demo study." not in text and "CT-ICH patient 071" not in text


@pytest.mark.parametrize("manifest, trained, words", [
    ({"training_sources": [{"source": "ct-ich", "patients": ["049", "071"]}]}, True, "was part of"),
    ({"training_sources": [{"source": "rsna-series", "patients": "all"}]}, False, "was not part of"),
    ({}, None, "may have been part of"),
    (None, None, "may have been part of"),
])
def test_demo_note_follows_the_manifest(manifest, trained, words):
    demo = _demo(manifest)
    assert demo["in_training_data"] is trained and words in demo["note"]
    data = prediction_to_dict(_pred(), demo=demo)
    validate_result(data)
    assert data["demo"]["in_training_data"] is trained


@pytest.mark.parametrize("breaks", [
    lambda d: d["demo"].pop("note"),
    lambda d: d["demo"].update(in_training_data="yes"),
    lambda d: d["demo"].update(extra=1),
])
def test_schema_rejects_broken_demo_blocks(breaks):
    data = prediction_to_dict(_pred(), demo=_demo({}))
    breaks(data)
    with pytest.raises(ModelError, match="does not match"):
        validate_result(data)


def _ctx(reference=None) -> DicomContext:
    return DicomContext(study_instance_uid=f"{ROOT}.1", source_series_instance_uid=f"{ROOT}.2",
                        source_sop_class_uid="1.2.840.10008.5.1.4.1.1.2", reference=reference)


def _source_header():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P-1", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "101010", "S1", "A1"
    ds.ReferringPhysicianName = ""
    return ds


def test_dicom_outputs_reference_the_source(tmp_path: Path):
    import pydicom

    pred = _pred()
    paths = write_dicom_outputs(tmp_path, pred, _evidence(pred), _ctx(_source_header()))
    assert [p.name for p in paths] == ["sc-001.dcm", "sc-002.dcm", "sr.dcm"]
    scs = [pydicom.dcmread(p) for p in paths[:2]]
    sr = pydicom.dcmread(paths[2])
    source_uids = set(pred.sop_instance_uids)
    for ds in [*scs, sr]:
        assert ds.StudyInstanceUID == pred.study_instance_uid  # same study as the source
        assert ds.SeriesInstanceUID != pred.series_instance_uid and ds.SOPInstanceUID not in source_uids
        assert ds.PatientID == "P-1" and ds.AccessionNumber == "A1"  # filed under the source patient
    assert scs[0].SeriesInstanceUID == scs[1].SeriesInstanceUID != sr.SeriesInstanceUID
    assert scs[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and scs[0].SamplesPerPixel == 3
    assert scs[0].SourceImageSequence[0].ReferencedSOPInstanceUID == pred.sop_instance_uids[2]
    assert scs[0].pixel_array.shape == (48, 48, 3)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert {scs[0].SOPInstanceUID, scs[1].SOPInstanceUID, pred.sop_instance_uids[2]} <= evidence
    findings = sr.ContentSequence[-1].ContentSequence
    assert len(findings) == 6
    by_label = {}
    for f in findings:
        props = {p.ConceptNameCodeSequence[0].CodeMeaning: p for p in f.ContentSequence}
        by_label[f.ConceptCodeSequence[0].CodeMeaning] = props
    sdh = by_label["Subdural hemorrhage"]
    assert float(sdh["Probability"].MeasuredValueSequence[0].NumericValue) == pytest.approx(0.8, abs=1e-4)
    assert sdh["Presence of property"].ConceptCodeSequence[0].CodeMeaning == "Present"
    assert sdh["Best illustration of finding"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == scs[0].SOPInstanceUID
    assert sdh["Source image"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == pred.sop_instance_uids[2]
    assert by_label["Intracranial hemorrhage (disorder)"]["Presence of property"].ConceptCodeSequence[0].CodeMeaning \
        == "Present"
    assert by_label["Epidural hemorrhage"]["Presence of property"].ConceptCodeSequence[0].CodeMeaning == "Absent"


def test_dicom_outputs_for_non_dicom_input(tmp_path: Path):
    import highdicom as hd
    import pydicom

    pred = _pred()
    study = str(hd.UID())
    ctx = DicomContext(study_instance_uid=study, source_series_instance_uid=None, source_sop_class_uid=None,
                       reference=None)
    paths = write_dicom_outputs(tmp_path, pred, _evidence(pred)[:1], ctx)
    sr = pydicom.dcmread(paths[-1])
    sc = pydicom.dcmread(paths[0])
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == study and "SourceImageSequence" not in sc
    assert sr.PatientID == ""


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(tmp_path: Path):
    pred = _pred()
    for path in write_dicom_outputs(tmp_path, pred, _evidence(pred), _ctx(_source_header())):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_uid_and_orientation_helpers():
    assert is_valid_uid("1.2.840.10008.1") and not is_valid_uid("ID_0fe31b044") and not is_valid_uid("")
    assert orientation_letters([1, 0, 0, 0, 1, 0]) == ("L", "P")
    assert orientation_letters([1, 0, 0, 0, 0.9483, -0.3173]) == ("L", "P")
    assert orientation_letters([0, 1, 0, 0, 0, -1]) == ("P", "F")
    assert orientation_letters(None) == ("L", "P")
    assert split_frame("1.2.3#4") == ("1.2.3", 4) and split_frame("1.2.3") == ("1.2.3", None)


def test_subtype_called_only_with_any_in_json_html_and_sr(tmp_path: Path):
    import pydicom

    pred = _pred()
    pred.thresholds = {**pred.thresholds, "any": 0.95}  # any 0.9 < 0.95: SDH 0.8 > 0.5 must not be called
    assert pred.scan_probs[5] >= 0.5
    data = prediction_to_dict(pred)
    assert data["scan_positive"]["subdural"] is False and data["scan_positive"]["any"] is False
    assert data["scan"]["subdural"] == pytest.approx(0.8, abs=1e-6)  # probabilities unchanged
    page = render_html(pred, [], model_info={"name": "m", "version": "1", "sha256": "ab" * 32})
    assert "POSITIVE</span>" not in page and 'negative ("any" negative)' in page
    assert "a subtype is called only when" in page
    paths = write_dicom_outputs(tmp_path, pred, _evidence(pred), _ctx(_source_header()))
    sr = pydicom.dcmread(paths[-1])
    presence = {f.ConceptCodeSequence[0].CodeMeaning: {p.ConceptNameCodeSequence[0].CodeMeaning: p
                                                       for p in f.ContentSequence}["Presence of property"]
                .ConceptCodeSequence[0].CodeMeaning for f in sr.ContentSequence[-1].ContentSequence}
    assert presence["Subdural hemorrhage"] == "Absent"


def test_independent_slices_use_the_slice_operating_point():
    from types import SimpleNamespace

    from ichd.inference.run import operating_thresholds

    scan_t, slice_t = dict.fromkeys(LABELS, 0.5), dict.fromkeys(LABELS, 0.2)
    with_slices = SimpleNamespace(thresholds=scan_t, bundle=SimpleNamespace(manifest={"slice_thresholds": slice_t}))
    assert operating_thresholds(with_slices, independent=False) == (scan_t, None)
    t, note = operating_thresholds(with_slices, independent=True)
    assert t == slice_t and note.code == "slice_operating_point"
    without = SimpleNamespace(thresholds=scan_t, bundle=None)  # e.g. a checkpoint: no manifest
    t, note = operating_thresholds(without, independent=True)
    assert t == scan_t and note.code == "no_slice_operating_point" and "whole scans" in note.message
