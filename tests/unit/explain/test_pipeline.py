"""explain_series / write_series_explanation / explain_to_folder with the toy CNN behind a real Predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from explain_toy import SIZE, synthetic_hu
from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.explain.pipeline import explain_series, explain_to_folder, resolve_classes, write_series_explanation
from ichd.types import CTSeries


def _series(hu: np.ndarray, uid: str = "1.2.3.4") -> CTSeries:
    n = len(hu)
    return CTSeries(hu=hu, spacing_mm=(5.0, 0.5, 0.5), positions_mm=np.arange(n) * 5.0,
                    sop_instance_uids=[f"{uid}.{i}" for i in range(n)], study_instance_uid="1.2.3",
                    series_instance_uid=uid)


@pytest.fixture()
def predictor(trained_toy):
    from ichd.inference.predictor import ModelIdentity, Predictor
    from ichd.preprocessing.config import PreprocessConfig

    return Predictor(trained_toy, PreprocessConfig(image_size=SIZE),
                     identity=ModelIdentity("toy", "0", "0" * 64, "checkpoint", "toy.pt"),
                     thresholds=dict.fromkeys(LABELS, 0.5), device=torch.device("cpu"))


@pytest.fixture()
def scan() -> tuple[CTSeries, np.ndarray, np.ndarray]:
    hu, has, masks = synthetic_hu(np.random.default_rng(5), 6)
    return _series(hu), has, masks


def test_resolve_classes() -> None:
    assert resolve_classes(None) == LABELS
    assert resolve_classes(["SDH", "any", "subdural"]) == ("any", "subdural")


def test_flags_the_blob_slices_and_maps_point_at_the_blob(predictor, scan) -> None:
    series, has, masks = scan
    pred = predictor.predict_series(series)
    expl = explain_series(series, predictor.cnn, lambda a, b: predictor.model_inputs(series, a, b),
                          pred.slice_probs, thresholds=predictor.thresholds, classes=["any"])
    assert expl.flagged_slices() == [i for i in range(len(has)) if pred.slice_probs[i, 0] >= 0.5]
    assert sorted(expl.flagged_slices()) == list(np.flatnonzero(has))  # the toy model is right on this scan
    for f in expl.findings:
        assert f.class_name == "any" and f.cam.shape == (SIZE, SIZE) and np.isfinite(f.cam).all()
        r, c = np.unravel_index(np.argmax(f.cam), f.cam.shape)
        assert masks[f.slice_index][max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].any()


def test_nothing_flagged_and_bad_probabilities(predictor, scan) -> None:
    series, _, _ = scan
    zeros = np.zeros((series.n_slices, 6), np.float32)
    inputs = lambda a, b: predictor.model_inputs(series, a, b)
    expl = explain_series(series, predictor.cnn, inputs, zeros, thresholds=predictor.thresholds)
    assert expl.findings == []
    with pytest.raises(InputError, match="shape"):
        explain_series(series, predictor.cnn, inputs, zeros[:2], thresholds=predictor.thresholds)
    with pytest.raises(InputError, match="threshold"):
        explain_series(series, predictor.cnn, inputs, zeros, thresholds={"any": 0.5}, classes=["SDH"])


def test_writes_overlays_montage_and_index(predictor, scan, tmp_path) -> None:
    series, _, _ = scan
    probs = np.full((series.n_slices, 6), 0.1, np.float32)
    probs[1, [0, 5]] = [0.9, 0.7]
    probs[3, 0] = 0.6
    expl = explain_series(series, predictor.cnn, lambda a, b: predictor.model_inputs(series, a, b), probs,
                          thresholds=predictor.thresholds, classes=["any", "subdural"], scan_id="scan/1")
    index = write_series_explanation(series, expl, tmp_path, model_info={"name": "toy"})
    root = tmp_path / "scan_1"
    assert sorted(p.name for p in (root / "overlays").iterdir()) == [
        "slice_001_any.png", "slice_001_subdural.png", "slice_003_any.png"]
    assert Image.open(root / "montage.png").format == "PNG"
    on_disk = json.loads((root / "explain.json").read_text())
    assert on_disk == index
    assert index["flagged_slices"] == [1, 3]
    assert [(f["slice_index"], f["class"]) for f in index["findings"]] == [(1, "any"), (1, "subdural"), (3, "any")]
    assert index["findings"][0]["sop_instance_uid"] == "1.2.3.4.1"


def test_explain_to_folder_refuses_to_overwrite(predictor, scan, tmp_path) -> None:
    series, has, _ = scan
    [index] = explain_to_folder([series], predictor, tmp_path, classes=["any"])
    assert index["flagged_slices"] == list(np.flatnonzero(has))
    with pytest.raises(InputError, match="--overwrite"):
        explain_to_folder([series], predictor, tmp_path, classes=["any"])
    [again] = explain_to_folder([series], predictor, tmp_path, classes=["any"], threshold=0.999, overwrite=True)
    assert again["thresholds"] == {"any": 0.999}
    with pytest.raises(InputError, match="between 0 and 1"):
        explain_to_folder([series], predictor, tmp_path, threshold=1.5, overwrite=True)


def test_a_not_assessable_scan_gets_no_overlay(predictor, scan, tmp_path) -> None:
    """explain applies the guards as predict does: the same blob scan with 15 mm pixels images a 'head' wider than
    any head (not_head), so nothing is explained, and --allow-contrast does not lift that reason."""
    series, has, _ = scan
    assert has.any()
    series.spacing_mm = (5.0, 15.0, 15.0)
    [index] = explain_to_folder([series], predictor, tmp_path, classes=["any"], allow_contrast=True)
    assert index["scan_call"] == "not_assessable" and index["not_assessable_reason"] == "not_head"
    assert index["findings"] == [] and index["montage"] is None and not (tmp_path / "1.2.3.4" / "overlays").exists()
    assert any(w["code"] == "not_head" for w in index["warnings"])
    assert max(max(row) for row in index["slice_probabilities"]) >= 0.5  # the probabilities are kept
    on_disk = json.loads((tmp_path / "1.2.3.4" / "explain.json").read_text())
    assert on_disk["not_assessable_reason"] == "not_head"


def test_maps_as_data_peak_energy_and_saved_maps(predictor, scan, tmp_path) -> None:
    series, _, _ = scan
    probs = np.full((series.n_slices, 6), 0.1, np.float32)
    probs[1, 0] = 0.9
    expl = explain_series(series, predictor.cnn, lambda a, b: predictor.model_inputs(series, a, b), probs,
                          thresholds=predictor.thresholds, classes=["any"], scan_id="s")
    index = write_series_explanation(series, expl, tmp_path, save_maps=True)
    [f] = index["findings"]
    saved = np.load(tmp_path / "s" / f["map_file"])
    assert saved.shape == series.hu.shape[1:] and saved.dtype == np.float32  # source resolution
    r, c = f["map_peak"]
    assert saved[r, c] == pytest.approx(saved.max()) and f["map_peak_value"] == pytest.approx(float(saved.max()), abs=1e-5)
    assert f["map_energy"] == pytest.approx(float(saved.sum()), rel=1e-3)
    assert index["method"] == "gradcam" and "Grad-CAM" in index["map"]  # the toy CNN has no lesion head
    assert not (tmp_path / "t").exists()
    plain = write_series_explanation(series, expl, tmp_path / "t")
    assert "map_file" not in plain["findings"][0] and plain["findings"][0]["map_peak"] == f["map_peak"]
