"""The RSNA submission writer (``ichd predict --format rsna``): layout, ID rule, read-back by ``ichd evaluate``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError
from ichd.evaluation.io import read_predictions
from ichd.inference.report_json import prediction_to_dict
from ichd.inference.run import PredictOptions, parse_formats, run_predict
from ichd.inference.submission import SUBMISSION_NAME, submission_id, submission_text, write_submission
from ichd.testing.factories import make_ct_series, uid, write_series
from ichd.types import Prediction


def _pred(sops: list[str], series: str = "ID_5eries", *, seed: int = 0) -> Prediction:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 1.0, size=(len(sops), 6)).astype(np.float32)
    p[0, 0], p[0, 1] = 1e-7, 1.0  # tiny and extreme values keep their 6-decimal text
    return Prediction(
        slice_probs=p, scan_probs=p.max(axis=0), thresholds=dict.fromkeys(LABELS, 0.5),
        model={"name": "m", "version": "1.0", "sha256": "ab" * 32}, study_instance_uid="ID_study",
        series_instance_uid=series, sop_instance_uids=list(sops), positions_mm=np.arange(len(sops)) * 5.0)


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


def test_kaggle_layout_for_rsna_images():
    a = _pred(["ID_000012eaf", "ID_0000aee4b"], "ID_s1", seed=1)
    b = _pred(["ID_00000a0b1"], "ID_s2", seed=2)
    rows = _rows(submission_text([a, b]))
    assert rows[0] == ["ID", "Label"]
    ids = [r[0] for r in rows[1:]]
    assert len(ids) == 3 * 6 and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {i for i in ids if i.startswith("ID_000012eaf_")} == {f"ID_000012eaf_{lab}" for lab in LABELS}
    assert ids[:6] == sorted(f"ID_00000a0b1_{lab}" for lab in LABELS)  # both series in one file, sorted by ID
    # every value is the 6-decimal probability, the same number prediction.json holds
    values = {r[0]: r[1] for r in rows[1:]}
    for pred in (a, b):
        for s in prediction_to_dict(pred)["slices"]:
            for lab, p in s["probabilities"].items():
                text = values[submission_id(s["sop_instance_uid"], lab)]
                assert len(text.split(".")[1]) == 6 and float(text) == p
    assert values["ID_000012eaf_any"] == "0.000000" and values["ID_000012eaf_epidural"] == "1.000000"


@pytest.mark.parametrize("sops", [
    ["ID_000012eaf", "ID_0000aee4b"],                                    # RSNA: SOPInstanceUID starts with ID_
    ["1.2.840.113619.2.55.3.1", "1.2.840.113619.2.55.3.2"],              # real DICOM UIDs: kept as they are
    ["1.2.826.0.1.3680043.8.498.5#1", "1.2.826.0.1.3680043.8.498.5#2"],  # frames of a multi-frame file
    ["my_series-0000", "my_series-0001"],                                # generated ids with an underscore
])
def test_evaluate_reads_the_submission_back(tmp_path: Path, sops: list[str]):
    pred = _pred(sops)
    path = write_submission(tmp_path / SUBMISSION_NAME, [pred])
    back = read_predictions(path)
    assert back.fmt == "rsna-csv"
    assert sorted(back.slices.index) == sorted(sops)  # the slice ids of labels tables and prediction.json
    for s in prediction_to_dict(pred)["slices"]:
        for lab, p in s["probabilities"].items():
            assert back.slices.at[s["sop_instance_uid"], lab] == p
    if sops[0].startswith("1.2.840"):
        assert path.read_text().splitlines()[1] == "1.2.840.113619.2.55.3.1_any,0.000000"  # no ID_ added


def test_problems_are_errors_not_bad_files():
    with pytest.raises(InputError, match="more than one place"):
        submission_text([_pred(["ID_a"], "ID_s1"), _pred(["ID_a"], "ID_s2")])
    with pytest.raises(InputError, match="no usable SOPInstanceUID"):
        submission_text([_pred(["ID_a", ""])])
    bad = _pred(["ID_a"])
    bad.slice_probs[0, 3] = np.nan
    with pytest.raises(ModelError, match="ID_a"):
        submission_text([bad])
    with pytest.raises(InputError, match="--out"):
        parse_formats("rsna", has_out=False)
    assert parse_formats("json, RSNA", has_out=True) == ("json", "rsna")


def test_run_predict_writes_one_submission_for_several_series(tmp_path: Path, predictor,
                                                              monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "two"
    study = uid("study-sub")
    write_series(src, make_ct_series(3, rows=48, columns=48, study_uid=study, series_uid=uid("sub-a"))
                 + make_ct_series(2, rows=48, columns=48, study_uid=study, series_uid=uid("sub-b")))
    out = tmp_path / "out"
    result = run_predict(src, PredictOptions(out=out, formats=("rsna", "json")), predictor=predictor)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [SUBMISSION_NAME, "prediction.json"] + [f"{r.folder}/prediction.json" for r in result.results])
    data = json.loads((out / "prediction.json").read_text())
    expected = {submission_id(s["sop_instance_uid"], lab): p for d in data for s in d["slices"]
                for lab, p in s["probabilities"].items()}
    rows = _rows((out / SUBMISSION_NAME).read_text())
    assert rows[0] == ["ID", "Label"] and len(rows) - 1 == 5 * 6 == len(expected)
    assert [r[0] for r in rows[1:]] == sorted(expected)
    assert all(float(v) == expected[i] for i, v in rows[1:])
    assert (out / SUBMISSION_NAME).stat().st_mode & 0o044  # a readable result, not a 0600 temporary

    # an existing submission is kept unless --overwrite; a failing writer leaves no partial results
    before = (out / SUBMISSION_NAME).read_text()
    with pytest.raises(InputError, match="--overwrite"):
        run_predict(src, PredictOptions(out=out, formats=("rsna",)), predictor=predictor)
    from ichd.inference import submission

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(submission, "write_submission", broken)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        run_predict(src, PredictOptions(out=fresh, formats=("json", "rsna")), predictor=predictor)
    assert not fresh.exists()
    assert (out / SUBMISSION_NAME).read_text() == before
