"""Out-of-domain checks (ichd.inference.guards, issue 21 item 4) on synthetic DICOM from the factory: a body CT, a
localizer (tagged and untagged), a sagittal series (DICOM and NIfTI), a noisy series, a short series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.inference import guards as g
from ichd.inference.report_json import prediction_to_dict, validate_result
from ichd.io.reader import read_ct
from ichd.testing.factories import make_ct_series, make_ct_slice, phantom_hu, uid, write_series

#: A head-sized phantom: 128 px of 1.6 mm (a 205 mm field of view), head 172 x 148 mm.
HEAD_PX = 128
HEAD_MM = (1.6, 1.6)


def _head_series(folder: Path, n: int = 30, *, noise: float = 0.0, spacing: float = 5.0, **kw) -> Path:
    rng = np.random.default_rng(0)
    hu = phantom_hu(HEAD_PX, HEAD_PX)
    if noise:
        hu = hu + rng.normal(0.0, noise, hu.shape).astype(np.float32)
    write_series(folder, make_ct_series(n, spacing=spacing, hu=hu, pixel_spacing=HEAD_MM, **kw))
    return folder


def _body_hu(size: int = 128) -> np.ndarray:
    """A chest-like slice: a 360 x 240 mm trunk (soft tissue 40 HU) with two lungs (-850 HU) and a spine."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = (size - 1) / 2
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[((yy - c) / (size * 0.31)) ** 2 + ((xx - c) / (size * 0.47)) ** 2 < 1] = 40.0
    for side in (-1, 1):
        hu[((yy - c) / (size * 0.2)) ** 2 + ((xx - c - side * size * 0.2) / (size * 0.14)) ** 2 < 1] = -850.0
    hu[np.hypot(yy - c - size * 0.2, xx - c) < size * 0.05] = 700.0
    return hu


def test_body_ct_is_not_assessable(predictor, tmp_path):
    write_series(tmp_path, make_ct_series(20, spacing=5.0, hu=_body_hu(), pixel_spacing=(3.0, 3.0),
                                          extra={"BodyPartExamined": "CHEST"}))
    series = read_ct(tmp_path)[0]
    assert series.meta["body_part"] == "CHEST"
    pred = predictor.predict_series(series, allow_contrast=True)  # --allow-contrast does not lift it
    assert pred.not_assessable == g.NOT_HEAD and pred.scan_call == "not_assessable"
    codes = [w.code for w in pred.warnings]
    assert g.NOT_HEAD in codes and g.BODY_PART in codes
    data = prediction_to_dict(pred)
    validate_result(data)
    assert data["not_assessable_reason"] == "not_head"
    assert data["guards"]["domain"]["extent_mm"] > g.MAX_HEAD_EXTENT_MM
    assert set(data["scan_positive"].values()) == {None}


def test_head_ct_gets_no_domain_warning(predictor, tmp_path):
    pred = predictor.predict_series(read_ct(_head_series(tmp_path, extra={"BodyPartExamined": "HEAD"}))[0])
    assert pred.not_assessable is None
    assert not {w.code for w in pred.warnings} & {g.NOT_HEAD, g.LOCALIZER, g.NON_AXIAL, g.EXTREME_NOISE,
                                                  g.SHORT_COVERAGE, g.BODY_PART}
    d = pred.guards["domain"]
    assert 140 < d["extent_mm"] < 200 and d["z_coverage_mm"] == pytest.approx(150.0)
    assert d["noise_sd_hu"] < 5 and d["acquisition_plane"] == "axial" and d["flags"] == []


def _scout_hu(size: int = 160) -> np.ndarray:
    """A lateral localizer of head, neck and shoulders: a 480 mm tall outline (3 mm pixels)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[np.hypot((yy - 35) / 33, (xx - 80) / 30) < 1] = 60.0  # head
    hu[60:110, 60:100] = 40.0  # neck
    hu[100:160, 10:150] = 30.0  # shoulders
    return hu


def test_tagged_localizer_is_skipped_by_the_reader_and_exits_2(tmp_path, test_bundle, capsys):
    from ichd.cli.main import run

    write_series(tmp_path, [make_ct_slice(hu=_scout_hu(), pixel_spacing=(3.0, 3.0),
                                          image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))])
    code = run(["-q", "predict", str(tmp_path), "--model", str(test_bundle), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "localizer/scout" in err and "Traceback" not in err


def test_untagged_localizer_is_not_assessable(predictor, tmp_path):
    write_series(tmp_path, [make_ct_slice(hu=_scout_hu(), pixel_spacing=(3.0, 3.0), image_type=None)])
    pred = predictor.predict_series(read_ct(tmp_path)[0])
    assert pred.not_assessable == g.LOCALIZER and pred.scan_call == "not_assessable"
    assert any(w.code == g.LOCALIZER and "localizer" in w.message for w in pred.warnings)


def test_sagittal_dicom_is_skipped_by_the_reader_and_exits_2(tmp_path, test_bundle, capsys):
    from ichd.cli.main import run

    series_uid = uid("sagittal")
    write_series(tmp_path, [make_ct_slice(hu=phantom_hu(64, 64), orientation=(0, 1, 0, 0, 0, -1),
                                          position=(-20.0 + 5 * k, -16.0, 16.0), instance_number=k + 1,
                                          series_uid=series_uid, sop_uid=uid(series_uid, k)) for k in range(6)])
    code = run(["-q", "predict", str(tmp_path), "--model", str(test_bundle), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "not axial" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 2  # the error line and its hint


def test_sagittal_nifti_is_not_assessable(predictor, tmp_path):
    import nibabel as nib

    # stored as sagittal slices: voxel axes (anterior, superior, left), 1.6 x 1.6 mm in plane, 4 mm apart
    vol = np.stack([phantom_hu(HEAD_PX, HEAD_PX) for _ in range(40)], axis=-1)
    affine = np.array([[0, 0, -4.0, 0], [1.6, 0, 0, 0], [0, 1.6, 0, 0], [0, 0, 0, 1]])
    path = tmp_path / "sag.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(path))
    series = read_ct(path)[0]
    assert series.meta["original_axcodes"][2] in "LR"
    pred = predictor.predict_series(series)
    assert pred.not_assessable == g.NON_AXIAL
    assert pred.guards["domain"]["acquisition_plane"] == "sagittal"
    assert any(w.code == g.NON_AXIAL and "sagittal" in w.message for w in pred.warnings)


def test_noisy_series_is_not_assessable(predictor, tmp_path):
    pred = predictor.predict_series(read_ct(_head_series(tmp_path, noise=80.0))[0])
    assert pred.not_assessable == g.EXTREME_NOISE
    assert pred.guards["domain"]["noise_sd_hu"] == pytest.approx(80.0, rel=0.15)
    quiet = predictor.predict_series(read_ct(_head_series(tmp_path / "q", noise=8.0))[0])
    assert quiet.not_assessable is None and quiet.guards["domain"]["noise_sd_hu"] == pytest.approx(8.0, rel=0.15)


def test_short_series_is_only_a_warning(predictor, tmp_path):
    pred = predictor.predict_series(read_ct(_head_series(tmp_path, n=4))[0])
    assert pred.not_assessable is None and pred.scan_call in ("positive", "negative")
    assert next(w for w in pred.warnings if w.code == g.SHORT_COVERAGE).message.startswith("the series covers 20 mm")
    single = predictor.predict_series(read_ct(_head_series(tmp_path / "one", n=1))[0])
    assert not any(w.code == g.SHORT_COVERAGE for w in single.warnings)  # single_slice says it instead


def test_every_domain_code_has_a_message():
    m = g.DomainMeasure(extent_mm=300.0, max_extent_mm=320.0, z_coverage_mm=40.0, noise_sd_hu=50.0,
                        body_part="CHEST", acquisition_plane="coronal", pixel_aspect=1.0, flags=())
    for code in (g.LOCALIZER, g.NOT_HEAD, g.NON_AXIAL, g.EXTREME_NOISE, g.SHORT_COVERAGE, g.BODY_PART):
        assert g.domain_message(code, m)
    with pytest.raises(ValueError):
        g.domain_message("nonsense", m)


def test_reports_say_why_a_body_ct_is_not_assessable(predictor, tmp_path):
    from ichd.inference.dicom_out import sr_notes
    from ichd.inference.report_html import render_html

    write_series(tmp_path, make_ct_series(6, spacing=5.0, hu=_body_hu(), pixel_spacing=(3.0, 3.0)))
    series = read_ct(tmp_path)[0]
    pred = predictor.predict_series(series)
    html = render_html(pred, predictor.explain(series, pred, at_least_one=True), model_info={"name": "m"},
                       input_kind="dicom", generated_uids=False)
    assert "Not assessable" in html and "does not look like a head CT" in html
    notes = sr_notes(pred)
    assert any("NOT ASSESSABLE (not_head)" in n and "does not look like a head CT" in n for n in notes)
    assert not any("non-contrast" in n for n in notes)  # the contrast text is for contrast only


def _thin(make_series, n=24, dz=1.25):
    series = make_series(n, spacing_z=dz)
    series.hu[n - 1] = -1000.0  # the top slice shows no head
    return series


def test_thin_series_is_read_as_slabs(predictor, make_series):
    from ichd.types import CTSeries

    series = _thin(make_series)
    pred = predictor.predict_series(series)
    assert [sl["source_slices"] for sl in pred.slabs] == [list(range(k, k + 4)) for k in range(0, 24, 4)]
    for sl in pred.slabs[:-1]:  # every slice of a slab reports the slab
        rows = pred.slice_probs[sl["source_slices"]]
        assert (rows == rows[0]).all()
    assert (pred.slice_probs[23] == 0).all() and pred.slice_probs[20].max() > 0  # headless slice 0, its slab not
    assert [s["index"] for s in pred.skipped_slices] == [23]
    slab_hu = np.stack([series.hu[k:k + 4].mean(axis=0) for k in range(0, 24, 4)])
    direct = predictor.predict_series(CTSeries(
        hu=slab_hu, spacing_mm=(5.0, 0.5, 0.5), positions_mm=np.arange(6) * 5.0,
        sop_instance_uids=[f"1.2.3.{i}" for i in range(6)], study_instance_uid="1.2", series_instance_uid="1.2.1"))
    np.testing.assert_allclose(pred.slice_probs[[0, 4, 8, 12, 16]], direct.slice_probs[:5], atol=1e-5)
    np.testing.assert_allclose(pred.scan_probs, direct.scan_probs, atol=1e-5)  # the scan rule saw the slabs
    assert any(w.code == "thin_slices_as_slabs" for w in pred.warnings) and "slabs" in pred.timing_s
    data = prediction_to_dict(pred)
    validate_result(data)
    assert data["slabs"][0] == {"index": 0, "source_slices": [0, 1, 2, 3], "z_mm": 1.875}
    assert len(data["slices"]) == 24
    from ichd.inference.dicom_out import sr_notes

    assert any("6 slabs" in n for n in sr_notes(pred))


def test_evidence_of_slabs_is_their_middle_slice(predictor, make_series):
    from ichd.inference.evidence import select_flagged

    series = _thin(make_series)
    pred = predictor.predict_series(series)
    flagged = select_flagged(pred, 10, at_least_one=True)
    assert flagged and {i for i, _, _ in flagged} <= {1, 5, 9, 13, 17, 21}
    [ev] = predictor.explain(series, pred, max_slices=1, at_least_one=True)
    shown = ev.image_hu[:series.hu.shape[1], :series.hu.shape[2]]  # square already: no padding
    k = ev.index // 4 * 4
    np.testing.assert_allclose(shown, series.hu[k:k + 4].mean(axis=0), atol=1e-4)  # the slab the model saw


def test_no_slabs_scores_thin_slices_one_by_one(bundle_dir, make_series):
    from ichd.inference.predictor import Predictor

    p = Predictor.load(bundle_dir, device="cpu", slabs=False)
    pred = p.predict_series(_thin(make_series))
    assert pred.slabs is None and not any(w.code == "thin_slices_as_slabs" for w in pred.warnings)
    assert "slabs" not in prediction_to_dict(pred)
