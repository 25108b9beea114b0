"""run_predict: output layout, staging (no partial results), overwrite protection, several series."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichd.errors import InputError
from ichd.inference.report_json import validate_result
from ichd.inference.run import PredictOptions, parse_formats, run_predict
from ichd.testing.factories import make_ct_series, uid, write_series


def _folder(tmp_path: Path, name: str = "ct", n: int = 4, **kw) -> Path:
    folder = tmp_path / name
    write_series(folder, make_ct_series(n, rows=48, columns=48, **kw))
    return folder


def test_parse_formats():
    assert parse_formats(None, has_out=True) == ("json", "html")
    assert parse_formats(None, has_out=False) == ("json",)
    assert parse_formats("dicom, json,dicom", has_out=True) == ("dicom", "json")
    with pytest.raises(InputError, match="did you mean 'html'"):
        parse_formats("htm", has_out=True)
    with pytest.raises(InputError, match="--out"):
        parse_formats("json,html", has_out=False)


def test_all_formats_for_one_dicom_series(tmp_path: Path, predictor):
    import pydicom

    src = _folder(tmp_path)
    out = tmp_path / "out"
    result = run_predict(src, PredictOptions(out=out, formats=("json", "html", "dicom")), predictor=predictor)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names[-3:] == ["dicom/sr.dcm", "prediction.json", "report.html"] and names[0] == "dicom/sc-001.dcm"
    data = json.loads((out / "prediction.json").read_text())
    validate_result(data)
    assert data["n_slices"] == 4 and data["input_kind"] == "dicom" and data["generated_uids"] is False
    assert {"read", "preprocess", "cnn", "html", "dicom", "total"} <= set(data["timing_s"])
    sr = pydicom.dcmread(out / "dicom" / "sr.dcm")
    source = pydicom.dcmread(next(src.glob("*.dcm")), stop_before_pixels=True)
    assert sr.StudyInstanceUID == data["study_instance_uid"] == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID and sr.PatientID  # filed under the source patient
    assert "dicom_patient_module_empty" not in {w["code"] for w in data["warnings"]}
    assert result.json_text == (out / "prediction.json").read_text()
    assert not list(out.glob(".ichd-predict-*"))  # staging folder removed
    assert (out / "report.html").stat().st_mode & 0o044  # readable results, not 0600 temporaries


def test_existing_results_are_not_overwritten(tmp_path: Path, predictor):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    run_predict(src, PredictOptions(out=out, formats=("json",)), predictor=predictor)
    before = (out / "prediction.json").read_text()
    with pytest.raises(InputError, match="--overwrite"):
        run_predict(src, PredictOptions(out=out, formats=("json",)), predictor=predictor)
    assert (out / "prediction.json").read_text() == before
    run_predict(src, PredictOptions(out=out, formats=("json",), overwrite=True, tta=True), predictor=predictor)
    assert json.loads((out / "prediction.json").read_text())["model"]["tta"] is True


def test_a_failure_leaves_no_partial_files(tmp_path: Path, predictor, monkeypatch: pytest.MonkeyPatch):
    src = _folder(tmp_path)
    out = tmp_path / "out"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    from ichd.inference import report_html

    monkeypatch.setattr(report_html, "render_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_predict(src, PredictOptions(out=out, formats=("json", "html", "dicom")), predictor=predictor)
    assert not out.exists()  # the folder did not exist before: nothing is left, not even the staging folder
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="disk full"):
        run_predict(src, PredictOptions(out=out, formats=("json", "html", "dicom")), predictor=predictor)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_several_series_and_series_selection(tmp_path: Path, predictor):
    src = tmp_path / "two"
    study = uid("study-two")
    a = make_ct_series(3, rows=48, columns=48, study_uid=study, series_uid=uid("series-a"))
    b = make_ct_series(2, rows=48, columns=48, study_uid=study, series_uid=uid("series-b"))
    write_series(src, a + b)
    out = tmp_path / "out"
    run_predict(src, PredictOptions(out=out, formats=("json", "html")), predictor=predictor)
    data = json.loads((out / "prediction.json").read_text())
    assert isinstance(data, list) and sorted(d["n_slices"] for d in data) == [2, 3]
    for d in data:
        folder = out / d["series_instance_uid"]
        assert (folder / "report.html").is_file()
        assert json.loads((folder / "prediction.json").read_text()) == d
    one = run_predict(src, PredictOptions(series_uid=uid("series-b")), predictor=predictor)
    assert json.loads(one.json_text)["n_slices"] == 2
    with pytest.raises(InputError, match="not in the input"):
        run_predict(src, PredictOptions(series_uid="1.2.3"), predictor=predictor)


def test_image_input_gets_a_new_study_for_dicom_outputs(tmp_path: Path, predictor):
    import numpy as np
    import pydicom
    from PIL import Image

    src = tmp_path / "pngs"
    src.mkdir()
    for i in range(3):
        img = np.zeros((48, 48), np.uint8)
        img[8:40, 8:40] = 120 + 10 * i
        Image.fromarray(img).save(src / f"{i:03d}.png")
    out = tmp_path / "out"
    run_predict(src, PredictOptions(out=out, formats=("json", "dicom"), window="40,80"), predictor=predictor)
    data = json.loads((out / "prediction.json").read_text())
    assert data["generated_uids"] is True and data["slices"][0]["z_mm"] is None
    codes = [w["code"] for w in data["warnings"]]
    assert "generated_study_uid" in codes
    sr = pydicom.dcmread(out / "dicom" / "sr.dcm")
    assert sr.StudyInstanceUID != data["study_instance_uid"] and sr.StudyInstanceUID in \
        next(w["message"] for w in data["warnings"] if w["code"] == "generated_study_uid")


def test_nifti_input(tmp_path: Path, predictor):
    import nibabel as nib
    import numpy as np

    vol = np.full((48, 48, 3), -1000, np.int16)  # x, y, z
    vol[8:40, 8:40, :] = 40
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 5.0, 1.0])), str(path))
    data = json.loads(run_predict(path, PredictOptions(), predictor=predictor).json_text)
    validate_result(data)
    assert data["input_kind"] == "nifti" and data["n_slices"] == 3 and data["generated_uids"] is True


@pytest.fixture(scope="module")
def ctich_predictor(tmp_path_factory: pytest.TempPathFactory, cnn_checkpoint: Path):
    """The test CNN in a bundle whose manifest says it was trained on all CT-ICH patients (like the shipped one)."""
    from ichd.constants import LABELS
    from ichd.inference.predictor import Predictor
    from ichd.models.bundled import write_bundle

    b = write_bundle(tmp_path_factory.mktemp("ctich-bundle") / "m", name="ctich-test", version="1",
                     files={"cnn": cnn_checkpoint}, thresholds=dict.fromkeys(LABELS, 0.5), model_card="# test\n",
                     extra={"training_sources": [{"source": "ct-ich", "patients": "all"}]})
    return Predictor.load(b.root, device="cpu")


def _demo_or_skip() -> Path:
    from ichd.inference.demo import demo_dir

    if not demo_dir().is_dir():
        pytest.skip("the demo study is not in this checkout")
    return demo_dir()


def test_demo_input_is_marked_as_training_data(tmp_path: Path, ctich_predictor):
    from ichd.inference.demo import NOTE_IN_TRAINING

    demo = _demo_or_skip()
    out = tmp_path / "out"
    run_predict(demo, PredictOptions(out=out, formats=("json", "html"), gradcam=False), predictor=ctich_predictor)
    data = json.loads((out / "prediction.json").read_text())
    validate_result(data)
    assert data["input_kind"] == "ctich" and data["series_instance_uid"] == "ctich-071"
    assert data["demo"] == {"is_demo": True, "in_training_data": True, "note": NOTE_IN_TRAINING}
    html = (out / "report.html").read_text()
    assert 'class="demo-banner"' in html and "not an independent test" in html


def test_demo_detection_follows_the_path_not_the_flag(tmp_path: Path):
    from ichd.inference.demo import demo_dir, is_demo_path

    demo = _demo_or_skip()
    assert is_demo_path(demo) and is_demo_path(str(demo) + "/") and is_demo_path(demo / "brain" / "071")
    assert is_demo_path(demo / "brain" / ".." / "bone")  # resolved
    link = tmp_path / "my-demo"
    link.symlink_to(demo_dir(), target_is_directory=True)
    assert is_demo_path(link)  # a link to the demo folder is the demo
    assert not is_demo_path(demo.parent) and not is_demo_path(tmp_path) and not is_demo_path(tmp_path / "missing")


def test_demo_with_a_model_that_does_not_list_its_training_data(predictor, monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path):
    from ichd.inference import demo as demo_mod

    src = _folder(tmp_path)  # a small series standing in for the demo folder
    monkeypatch.setattr(demo_mod, "demo_dir", lambda: src)
    data = json.loads(run_predict(src, PredictOptions(), predictor=predictor).json_text)
    validate_result(data)
    assert data["demo"]["is_demo"] is True and data["demo"]["in_training_data"] is None
    assert "may have been part of" in data["demo"]["note"]


def test_other_input_has_no_demo_block(tmp_path: Path, ctich_predictor):
    out = tmp_path / "out"
    run_predict(_folder(tmp_path), PredictOptions(out=out, formats=("json", "html")), predictor=ctich_predictor)
    data = json.loads((out / "prediction.json").read_text())
    validate_result(data)
    assert "demo" not in data
    assert 'class="demo-banner"' not in (out / "report.html").read_text()
