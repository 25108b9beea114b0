"""Predictor: loading (bundle, checkpoint, sequence checkpoint), chunked prediction, TTA, Grad-CAM evidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError
from ichd.inference.evidence import ExplainedPrediction
from ichd.inference.predictor import Predictor
from ichd.inference.tta import tta_views


def test_bundle_prediction_shapes_and_identity(predictor, make_series):
    series = make_series(5)
    pred = predictor.predict_series(series)
    assert pred.slice_probs.shape == (5, 6) and pred.scan_probs.shape == (6,)
    assert ((pred.slice_probs > 0) & (pred.slice_probs < 1)).all()
    np.testing.assert_allclose(pred.scan_probs, pred.slice_probs.max(axis=0), rtol=1e-6)  # scan rule "max"
    assert pred.model["name"] == "test-model" and pred.model["sha256"] == predictor.bundle.sha256
    assert pred.sop_instance_uids == series.sop_instance_uids
    np.testing.assert_array_equal(pred.positions_mm, series.positions_mm)
    assert {"preprocess", "cnn", "predict_total"} <= set(pred.timing_s)
    assert not isinstance(pred, ExplainedPrediction)


def test_chunking_does_not_change_results(predictor, make_series):
    series = make_series(5)
    chunked = Predictor(predictor.cnn, predictor.preprocess, identity=predictor.identity,
                        thresholds=predictor.thresholds, device=predictor.device, batch_size=2)
    np.testing.assert_allclose(chunked.predict_series(series).slice_probs,
                               predictor.predict_series(series).slice_probs, atol=1e-5)


def test_model_inputs_are_the_preprocessed_slices_in_unit_range(predictor, make_series):
    x = predictor.model_inputs(make_series(4), 1, 3)
    assert tuple(x.shape) == (2, 3, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_tta_is_the_mean_over_views(predictor, make_series):
    from ichd.inference.embed import embed_slices
    from ichd.preprocessing.pipeline import preprocess_hu

    series = make_series(3)
    pred = predictor.predict_series(series, tta=True)
    x = preprocess_hu(series.hu, predictor.preprocess)
    per_view = [embed_slices(predictor.cnn, v.apply(x), device=predictor.device)[1] for v in tta_views(64)]
    np.testing.assert_allclose(pred.slice_probs, np.mean(per_view, axis=0), atol=1e-5)
    assert not np.allclose(per_view[0], per_view[1])  # the flip really changes the input
    assert pred.model["tta"] == "true"


def test_gradcam_gives_evidence_maps(bundle_dir: Path, make_series):
    from ichd.models.bundled import read_bundle

    p = Predictor.load(bundle_dir, device="cpu")
    p.thresholds = dict.fromkeys(LABELS, 0.0)  # everything positive: slices get flagged
    series = make_series(4, size=80)
    pred = p.predict_series(series, gradcam=True, max_flagged=2)
    assert isinstance(pred, ExplainedPrediction) and len(pred.evidence) == 2
    for ev in pred.evidence:
        assert ev.cam is not None and ev.cam.shape == ev.image_hu.shape and 0 <= ev.cam.min() and ev.cam.max() <= 1
        assert ev.image_hu.shape == (80, 80)  # display image at the source resolution
    from ichd.explain.gradcam import GradCAM

    ev = pred.evidence[0]  # batched per label == one slice at a time
    alone = GradCAM(p.cnn)(p.model_inputs(series, ev.index, ev.index + 1), ev.label)[0]
    np.testing.assert_allclose(ev.cam, p.map_to_display(series, alone), atol=1e-4)  # on the display grid
    assert "gradcam" in pred.timing_s
    assert read_bundle(bundle_dir).thresholds["any"] == 0.5  # the bundle itself is untouched


def test_non_square_slices_are_padded_for_display(predictor, make_series):
    series = make_series(2, size=64)
    series.hu = np.ascontiguousarray(series.hu[:, :, 8:56])  # 64 x 48
    ev = predictor.explain(series, predictor.predict_series(series), at_least_one=True)
    assert ev[0].image_hu.shape == (64, 64) and ev[0].cam.shape == (64, 64)


def test_single_slice_and_unknown_spacing(predictor, make_series):
    series = make_series(1)
    series.spacing_mm = (float("nan"), 0.5, 0.5)
    pred = predictor.predict_series(series)
    assert [w.code for w in pred.warnings] == ["single_slice"]
    assert np.isnan(pred.positions_mm).all()


def test_one_slice_through_the_shipped_scan_mean_head_uses_its_prior_and_says_so(make_series):
    """The shipped default (3.3.0) joins the scan's mean embedding; a one-slice input sees the training scans' mean:
    its result is the head on [slice, slice, scan_prior], and its warning says so."""
    import torch

    try:
        pred_model = Predictor.load("default", device="cpu")
    except ModelError:
        pytest.skip("no bundled default model in this checkout")
    head = pred_model.sequence.model if pred_model.sequence is not None else None
    if head is None or not getattr(head, "uses_scan_mean", False):
        pytest.skip("the bundled default has no scan-mean head")
    series = make_series(1, size=128)
    pred = pred_model.predict_series(series, input_guards=False)
    (note,) = [w for w in pred.warnings if w.code == "single_slice"]
    assert "mean of the training scans" in note.message
    feats, _, _, _ = pred_model._embed(series, False)
    f = torch.from_numpy(pred_model.sequence.selector.transform(feats))
    with torch.no_grad():
        expected = torch.sigmoid(head.net(torch.cat([f, f, head.scan_prior[None]], dim=-1)))[0].numpy()
    np.testing.assert_allclose(pred.slice_probs[0], expected, rtol=1e-4, atol=1e-6)


def test_too_small_or_empty_series_is_an_input_error(predictor, make_series):
    series = make_series(2)
    series.hu = series.hu[:, :8, :8]
    with pytest.raises(InputError, match="too small"):
        predictor.predict_series(series)
    series = make_series(1)
    series.hu = series.hu[:0]
    with pytest.raises(InputError, match="no slices"):
        predictor.predict_series(series)


def test_checkpoint_without_thresholds_warns(cnn_checkpoint: Path, make_series):
    p = Predictor.load(cnn_checkpoint, device="cpu")
    assert p.thresholds == dict.fromkeys(LABELS, 0.5) and p.bundle is None
    pred = p.predict_series(make_series(2))
    assert "uncalibrated_thresholds" in [w.code for w in pred.warnings]
    assert pred.model["name"] == "efficientnet_lite0:cnn.pt"


def test_sequence_checkpoint_runs_cnn_then_sequence(seq_checkpoint: Path, make_series):
    p = Predictor.load(seq_checkpoint, device="cpu")
    assert p.sequence is not None and p.thresholds["any"] == 0.4
    series = make_series(6)
    pred = p.predict_series(series)
    assert pred.slice_probs.shape == (6, 6) and "sequence" in pred.timing_s
    assert pred.model["scan_rule"] == "sequence+max"
    cnn_only = Predictor(p.cnn, p.preprocess, identity=p.identity, thresholds=p.thresholds, device=p.device)
    assert not np.allclose(cnn_only.predict_series(series).slice_probs, pred.slice_probs)


def test_bundle_with_sequence_stage(cnn_checkpoint: Path, seq_checkpoint: Path, tmp_path: Path, make_series):
    from ichd.models.bundled import write_bundle

    write_bundle(tmp_path / "b", name="cnn+seq", version="1", files={"cnn": cnn_checkpoint, "sequence": seq_checkpoint},
                 thresholds=dict.fromkeys(LABELS, 0.3), model_card="x")
    p = Predictor.load(tmp_path / "b", device="cpu")
    assert p.sequence is not None and p.thresholds["any"] == 0.3
    assert p.predict_series(make_series(3)).slice_probs.shape == (3, 6)


@pytest.mark.parametrize("model, message", [
    ("no/such/model.pt", "does not exist"),
    ("./missing-dir", "does not exist"),
    ("no-such-bundled-model", "bundled model"),
])
def test_unknown_models_are_model_errors(model: str, message: str):
    with pytest.raises(ModelError, match=message) as e:
        Predictor.load(model, device="cpu")
    assert e.value.exit_code == 2


def test_foreign_file_is_a_model_error(tmp_path: Path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        Predictor.load(bad, device="cpu")
