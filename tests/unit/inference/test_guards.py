"""Input checks in the Predictor (ichd.inference.guards): slices without a head, contrast, overlays on the head."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.inference.report_json import prediction_to_dict, validate_result


def _with_air_slices(series, idx):
    series.hu[list(idx)] = -1000.0
    return series


def _contrast_series(series):
    """Bright (160 HU) 2 mm vessel-like spots inside the brain of every slice (0.5 mm pixels)."""
    size = series.hu.shape[1]
    yy, xx = np.mgrid[:size, :size]
    for s in series.hu:
        for dy, dx in ((-4, -3), (3, 4)):
            s[np.hypot(yy - size / 2 - dy, xx - size / 2 - dx) < 2.2] = 160.0
    return series


def test_slices_without_head_are_not_scored(predictor, make_series):
    from ichd.models.scan_rules import scan_probabilities

    series = _with_air_slices(make_series(6), (0, 5))
    full = predictor.predict_series(make_series(6))
    pred = predictor.predict_series(series)
    assert pred.skipped_slices == [{"index": 0, "reason": "no_head"}, {"index": 5, "reason": "no_head"}]
    assert (pred.slice_probs[[0, 5]] == 0).all()
    np.testing.assert_allclose(pred.slice_probs[1:5], full.slice_probs[1:5], atol=1e-6)  # the others unchanged
    np.testing.assert_allclose(pred.scan_probs, scan_probabilities(pred.slice_probs[1:5], predictor.scan_rule),
                               atol=1e-6)  # scan from the scored slices only
    assert any(w.code == "no_head_slices" for w in pred.warnings)
    data = prediction_to_dict(pred)
    validate_result(data)
    assert data["skipped_slices"] == [{"index": 0, "reason": "no_head"}, {"index": 5, "reason": "no_head"}]
    assert data["slices"][0]["probabilities"]["any"] == 0.0


def test_sequence_models_get_the_same_rule(seq_checkpoint, make_series):
    from ichd.inference.predictor import Predictor

    p = Predictor.load(seq_checkpoint, device="cpu")
    series = _with_air_slices(make_series(6), (5,))
    pred = p.predict_series(series)
    assert [s["index"] for s in pred.skipped_slices] == [5]
    assert (pred.slice_probs[5] == 0).all() and pred.slice_probs[:5].max() > 0
    kept = make_series(6)
    kept.hu = kept.hu[:5]
    kept.positions_mm = kept.positions_mm[:5]
    kept.sop_instance_uids = kept.sop_instance_uids[:5]
    alone = p.predict_series(kept)
    np.testing.assert_allclose(pred.scan_probs, alone.scan_probs, atol=1e-5)  # the stage ran on the 5 head slices


def test_a_series_without_any_head_gets_zero_and_a_warning(predictor, make_series):
    series = _with_air_slices(make_series(3), range(3))
    pred = predictor.predict_series(series)
    assert (pred.scan_probs == 0).all() and (pred.slice_probs == 0).all()
    assert pred.scan_call == "negative"
    assert [w.code for w in pred.warnings if w.code == "no_head"] == ["no_head"]


def test_contrast_series_is_not_assessable_unless_allowed(predictor, make_series):
    pred = predictor.predict_series(_contrast_series(make_series(5)))
    assert pred.not_assessable == "contrast_enhanced" and pred.scan_call == "not_assessable"
    assert any(w.code == "contrast_enhanced" for w in pred.warnings)
    data = prediction_to_dict(pred)
    validate_result(data)
    assert data["scan_call"] == "not_assessable" and data["not_assessable_reason"] == "contrast_enhanced"
    assert set(data["scan_positive"].values()) == {None}
    assert data["guards"]["contrast"]["flagged"] is True
    assert data["scan"]["any"] == pytest.approx(float(pred.scan_probs[0]), abs=1e-6)  # probabilities kept
    allowed = predictor.predict_series(_contrast_series(make_series(5)), allow_contrast=True)
    assert allowed.not_assessable is None and allowed.scan_call in ("positive", "negative")
    assert any(w.code == "contrast_enhanced" and "--allow-contrast" in w.message for w in allowed.warnings)
    plain = predictor.predict_series(make_series(5))
    assert plain.not_assessable is None and not any(w.code == "contrast_enhanced" for w in plain.warnings)


def test_not_assessable_in_html_and_sr(predictor, make_series, tmp_path):
    from pydicom import dcmread

    from ichd.inference.dicom_out import sr_notes
    from ichd.inference.report_html import render_html

    series = _with_air_slices(_contrast_series(make_series(6)), (5,))
    pred = predictor.predict_series(series)
    evidence = predictor.explain(series, pred, at_least_one=True)
    html = render_html(pred, evidence, model_info={"name": "m"}, input_kind="dicom", generated_uids=False)
    assert "Not assessable" in html and "not scored" in html
    notes = sr_notes(pred)
    assert any("NOT ASSESSABLE" in n for n in notes) and any("not scored" in n for n in notes)
    from ichd.inference.run import PredictOptions, run_predict
    from ichd.testing.factories import make_ct_series, write_series

    src = tmp_path / "in"
    write_series(src, make_ct_series(4, rows=64, columns=64))
    run = run_predict(src, PredictOptions(out=tmp_path / "out", formats=("json", "dicom")), predictor=predictor)
    sr = dcmread(next((tmp_path / "out" / "dicom").glob("sr*.dcm")))
    assert sr.Modality == "SR" and run.results[0].result["scan_call"] in ("positive", "negative")


def test_overlays_are_zero_outside_the_head(make_series):
    from ichd.explain.overlay import display_image, head_masked_map, overlay
    from ichd.preprocessing.head_mask import head_mask

    hu = make_series(1, size=96).hu[0]
    hu[92:95, 4:92] = 250.0  # a table just under the head (1.5 mm thick)
    cam = np.ones((16, 16), dtype=np.float32)  # heat everywhere, the table and the air included
    mask = head_mask(hu, (0.5, 0.5))
    assert mask.any() and mask[92:95].mean() < 0.1  # the table is cut off (a few pixels where it touches remain)
    shown = head_masked_map(cam, hu, (0.5, 0.5))
    assert (shown[~mask] == 0).all() and (shown[mask] == 1).all()
    rgb = overlay(hu, cam, pixel_spacing=(0.5, 0.5))
    gray = np.round(display_image(hu) * 255.0).astype(np.uint8)
    assert (rgb[~mask] == gray[~mask][:, None]).all()  # outside the head: the plain slice
    assert (rgb[mask] != gray[mask][:, None]).any()  # inside: heat drawn
    air = np.full((64, 64), -1000.0, dtype=np.float32)
    assert (overlay(air, cam)[..., 0] == 0).all()  # a slice without a head gets no heat at all


def test_calls_three_states():
    from ichd.calls import reported_calls, scan_call

    t = dict.fromkeys(LABELS, 0.5)
    p = np.array([0.9, 0.1, 0.8, 0.1, 0.1, 0.1])
    assert scan_call(p, t) == "positive" and scan_call(p * 0.1, t) == "negative"
    assert scan_call(p, t, not_assessable="contrast_enhanced") == "not_assessable"
    assert reported_calls(p, t)["intraparenchymal"] is True
    assert reported_calls(p, t, not_assessable="contrast_enhanced") == dict.fromkeys(LABELS)
