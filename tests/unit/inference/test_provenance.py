"""Training UIDs in bundles and the provenance of results (ichd.inference.provenance)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ichd.errors import ModelError
from ichd.inference.provenance import (
    TRAINING_UIDS_KEY,
    TrainingUids,
    add_training_uids,
    load_training_uids,
    provenance_block,
    training_uids_from_cache,
)


def _fake_cache(root: Path) -> Path:
    root.mkdir()
    series = [{"scan_id": "ctich-049", "study_instance_uid": "ctich-049", "source": "/data/ct-ich"},
              {"scan_id": "1.2.3.2", "study_instance_uid": "1.2.3.1", "source": "../data/rsna-series/dicom/1.2.3.2"},
              {"scan_id": "9.9.2", "study_instance_uid": "9.9.1", "source": "/elsewhere/other"}]
    (root / "manifest.json").write_text(json.dumps({"version": 1, "series": series}))
    (root / "slices.csv").write_text("slice_id,scan_id,patient_id,slice_index,z_mm\n"
                                     "ctich-049-001,ctich-049,p,0,\n1.2.3.3.1,1.2.3.2,q,0,0.0\n9.9.3,9.9.2,r,0,0\n")
    return root


def test_uids_from_the_cache_manifest_by_source(tmp_path):
    cache = _fake_cache(tmp_path / "cache")
    uids = training_uids_from_cache([cache], ["ct-ich", "rsna-series"])
    assert uids.series == {"ctich-049", "1.2.3.2"} and uids.studies == {"ctich-049", "1.2.3.1"}
    assert uids.sop_instances == {"ctich-049-001", "1.2.3.3.1"}
    assert "9.9.2" in training_uids_from_cache([cache]).series  # no source filter: everything
    with pytest.raises(ModelError, match="manifest"):
        training_uids_from_cache([tmp_path])


def test_added_to_a_bundle_without_touching_the_weights(tmp_path, bundle_dir):
    from ichd.models.bundled import read_bundle

    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    before = read_bundle(b)
    entry = add_training_uids(b, TrainingUids(frozenset({"1.2.3.1"}), frozenset({"1.2.3.2"}), frozenset()))
    after = read_bundle(b)
    assert after.sha256 == before.sha256 and after.manifest["files"] == before.manifest["files"]
    after.verify()
    assert after.manifest[TRAINING_UIDS_KEY] == entry and entry["n_series"] == 1
    assert load_training_uids(after).series == {"1.2.3.2"}
    (b / entry["path"]).write_text((b / entry["path"]).read_text().replace("1.2.3.2", "1.2.3.9"))
    with pytest.raises(ModelError, match="sha256"):
        load_training_uids(read_bundle(b))
    assert load_training_uids(before) is None  # a bundle without the key records nothing


def test_provenance_of_a_result(make_series, predictor):
    series = make_series(3)
    assert provenance_block(None, series) is None
    uids = TrainingUids(frozenset({series.study_instance_uid}), frozenset(),
                        frozenset({series.sop_instance_uids[0]}))
    block = provenance_block(uids, series)
    assert block["in_training_data"] is True and block["matched"] == ["study", "sop_instance"]
    assert block["n_training_slices"] == 1 and "not an independent test" in block["note"]
    other = provenance_block(TrainingUids(frozenset({"x"}), frozenset({"y"}), frozenset()), series)
    assert other["in_training_data"] is False and other["matched"] == []
    predictor._training_uids, predictor._training_uids_read = uids, True
    try:
        pred = predictor.predict_series(series)
    finally:
        predictor._training_uids, predictor._training_uids_read = None, False
    from ichd.inference.dicom_out import sr_notes
    from ichd.inference.report_html import render_html
    from ichd.inference.report_json import prediction_to_dict, validate_result

    data = prediction_to_dict(pred)
    validate_result(data)
    assert data["provenance"]["in_training_data"] is True
    assert "Training data." in render_html(pred, [], model_info={"name": "m"})
    assert any("training data" in n for n in sr_notes(pred))
    assert np.isfinite(pred.scan_probs).all()


def test_shipped_default_bundle_records_its_training_uids():
    from ichd.models.bundled import get_bundled

    b = get_bundled("default")
    uids = load_training_uids(b)
    assert uids is not None and len(uids.series) == b.manifest[TRAINING_UIDS_KEY]["n_series"] > 0
    assert any(s.startswith("ctich-") for s in uids.series)
