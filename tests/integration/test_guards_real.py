"""Input guards on the shared data: head masks on every set, headless slices, contrast, overlays, provenance.

The default-model tests use the shipped bundle (skipped when absent); CQ500-CT-0 (238 thin slices) and the full
sets are ``slow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.preprocessing.head_mask import has_head, head_mask

pytestmark = pytest.mark.integration


def _need(path: Path) -> Path:
    """``path``, or skip the test when the data folder lacks it."""
    return path if path.exists() else pytest.skip(f"{path} not in the data folder")


def _spacing(series):
    from ichd.inference.guards import pixel_spacing

    return pixel_spacing(series)


def _check_masks(series) -> list[int]:
    """Head masks of a series: a head on the middle slice, headless slices only at the ends; returns them."""
    h = has_head(head_mask(series.hu, _spacing(series)))
    assert h[len(h) // 2], f"{series.source}: no head on the middle slice"
    head_idx = np.flatnonzero(h)
    assert h[head_idx[0]:head_idx[-1] + 1].all(), f"{series.source}: a headless slice inside the head"
    return [int(i) for i in np.flatnonzero(~h)]


def test_head_masks_on_the_small_sets(data_root: Path):
    from ichd.io.reader import read_ct

    for path in [*sorted(_need(data_root / "rsna-samples").glob("*.dcm")),
                 *sorted(_need(data_root / "hu-slices" / "dicom").glob("*.dcm")),
                 _need(data_root / "edge-cases" / "ge-tilt"), _need(data_root / "cq500" / "CQ500-CT-1"),
                 *sorted(_need(data_root / "edge-cases" / "pydicom-693").glob("*.dcm")),
                 _need(data_root / "ct-ich" / "brain" / "049"), _need(data_root / "rsna-series" / "dicom" / "ID_84296c3845")]:
        for series in read_ct(path, allow_secondary_capture=True):  # hu-slices are Secondary Captures in HU
            skipped = _check_masks(series)
            if path.name == "ID_84296c3845":
                assert skipped == list(range(29, 36))  # table and head holder only above the vertex


@pytest.mark.slow
def test_head_masks_on_every_shared_set(data_root: Path):
    from ichd.io.reader import read_ct

    headless = {}
    for path in [_need(data_root / "ct-ich"), *sorted(_need(data_root / "rsna-series" / "dicom").iterdir()),
                 _need(data_root / "cq500" / "CQ500-CT-0")]:
        for series in read_ct(path):
            headless[series.series_instance_uid] = _check_masks(series)
    assert sum(len(v) for k, v in headless.items() if k.startswith("ctich-")) == 0
    assert sum(len(v) for k, v in headless.items() if k.startswith("ID_")) == 30  # benchmarks/results/contrast


@pytest.fixture(scope="module")
def default_predictor():
    """The shipped default model on the CPU, torch on one thread while this module uses it (skip when absent)."""
    from ichd.errors import ModelError
    from ichd.inference.predictor import Predictor
    from model_factories import single_thread_torch

    for _ in single_thread_torch():
        try:
            predictor = Predictor.load("default", device="cpu")
        except ModelError as e:
            pytest.skip(f"default model not available: {e.message}")
        yield predictor


def test_default_model_rsna_series_headless_training_data_overlays(data_root: Path, default_predictor):
    from ichd.explain.overlay import BRAIN_WINDOW, display_image, overlay
    from ichd.io.reader import read_ct
    from ichd.preprocessing.contrast import measure_contrast

    series = read_ct(_need(data_root / "rsna-series" / "dicom" / "ID_84296c3845"))[0]
    pred = default_predictor.predict_series(series)
    assert [s["index"] for s in pred.skipped_slices] == list(range(29, 36))
    assert (pred.slice_probs[29:] == 0).all()
    assert pred.provenance["in_training_data"] is True and "series" in pred.provenance["matched"]
    assert pred.not_assessable is None
    assert not measure_contrast(series.hu, _spacing(series)).flagged
    evidence = default_predictor.explain(series, pred, at_least_one=True)
    assert evidence and all(e.cam is not None for e in evidence)
    for ev in evidence:  # no heat outside the head on any flagged slice
        rgb = overlay(ev.image_hu, ev.cam, window=BRAIN_WINDOW, pixel_spacing=ev.pixel_spacing)
        gray = np.clip(np.round(display_image(ev.image_hu, BRAIN_WINDOW) * 255.0), 0, 255).astype(np.uint8)
        outside = ~head_mask(ev.image_hu, ev.pixel_spacing)
        heat = (np.abs(rgb.astype(np.int16) - gray[..., None].astype(np.int16)) > 1).any(axis=-1)  # not rounding
        assert (heat & outside).sum() == 0


@pytest.mark.slow
def test_default_model_calls_cq500_ct0_not_assessable(data_root: Path, default_predictor):
    from ichd.io.reader import read_ct

    series = read_ct(_need(data_root / "cq500" / "CQ500-CT-0"))[0]
    pred = default_predictor.predict_series(series)
    assert pred.scan_call == "not_assessable" and pred.not_assessable == "contrast_enhanced"
    assert pred.provenance["in_training_data"] is False
    allowed = default_predictor.predict_series(series, allow_contrast=True)
    assert allowed.scan_call in ("positive", "negative")
    assert any(w.code == "thin_slices_as_slabs" for w in pred.warnings)
    assert len(pred.slabs) == 30 and pred.slabs[0]["source_slices"] == list(range(8))  # 0.62 mm -> ~5 mm slabs
    rows = pred.slice_probs[pred.slabs[5]["source_slices"]]
    assert (rows == rows[0]).all()


def _domain_calls(series) -> tuple[str | None, list[str]]:
    from ichd.inference.guards import series_guards

    g = series_guards(series)
    return g.not_assessable(allow_contrast=False), list(g.domain.flags)


def test_no_out_of_domain_call_on_the_small_sets(data_root: Path):
    """Out-of-domain checks (issue 21 item 4) on real head CT: no reason and no warning."""
    from ichd.io.reader import read_ct

    for path in [*sorted(_need(data_root / "rsna-samples").glob("*.dcm")),
                 *sorted(_need(data_root / "edge-cases" / "pydicom-693").glob("*.dcm")),
                 _need(data_root / "cq500" / "CQ500-CT-1"),
                 _need(data_root / "rsna-series" / "dicom" / "ID_84296c3845")]:
        for series in read_ct(path):
            assert _domain_calls(series) == (None, []), path.name
    tilt = read_ct(_need(data_root / "edge-cases" / "ge-tilt"))[0]
    assert _domain_calls(tilt) == (None, ["short_coverage"])  # an 8-slice, 38 mm excerpt: a true warning


@pytest.mark.slow
def test_no_out_of_domain_call_on_every_shared_set(data_root: Path):
    """Every CT-ICH patient, rsna-series series and hu-slice: not assessable never, no out-of-domain warning
    (benchmarks/results/ood has the measured values)."""
    from ichd.io.reader import read_ct

    for path in [_need(data_root / "ct-ich"), *sorted(_need(data_root / "rsna-series" / "dicom").iterdir()),
                 *sorted(_need(data_root / "hu-slices" / "dicom").glob("*.dcm"))]:
        for series in read_ct(path, allow_secondary_capture=True):
            assert _domain_calls(series) == (None, []), series.series_instance_uid
