"""``ichd predict --format rsna`` on a real RSNA series, read back by ``ichd evaluate`` (issue 14).

One whole series of ``rsna-series`` (34 slices, every slice labelled) through a small untrained model
(tests/model_factories.py): the test checks the file format and the round trip, not accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from ichd.cli.main import run
from ichd.constants import LABELS

SERIES = "ID_7518324893"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    from model_factories import single_thread_torch

    yield from single_thread_torch()


def test_submission_round_trip_through_evaluate(data_root: Path, test_bundle: Path, tmp_path: Path, capsys):
    src = data_root / "rsna-series" / "dicom" / SERIES
    labels_csv = data_root / "rsna-series" / "labels.csv"
    if not src.is_dir() or not labels_csv.is_file():
        pytest.skip(f"{src} not in the data folder")
    labels = pd.read_csv(labels_csv)
    labels = labels[labels["series_uid"] == SERIES]
    assert len(labels) == 34 and labels[list(LABELS)].notna().all().all()  # no missing label in this series

    out = tmp_path / "pred"
    code = run(["-q", "predict", str(src), "--model", str(test_bundle), "--out", str(out), "--format", "rsna,json",
                "--no-gradcam"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["prediction.json", "submission.csv"]

    # the Kaggle layout: ID,Label; six rows ID_<hex>_<subtype> per image, sorted by ID
    with (out / "submission.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Label"]
    ids = [r[0] for r in rows[1:]]
    assert len(ids) == 34 * 6 and ids == sorted(ids)
    assert set(ids) == {f"{image}_{lab}" for image in labels["image_id"] for lab in LABELS}
    # the same probabilities as prediction.json (both 6 decimals)
    data = json.loads((out / "prediction.json").read_text())
    assert data["series_instance_uid"] == SERIES and data["n_slices"] == 34
    expected = {f"{s['sop_instance_uid']}_{lab}": p for s in data["slices"] for lab, p in s["probabilities"].items()}
    assert {i: float(v) for i, v in rows[1:]} == expected

    # ichd evaluate reads it back; scan and patient membership come from the labels (series_uid, patient_id)
    capsys.readouterr()
    ev = tmp_path / "eval"
    code = run(["-q", "evaluate", str(out / "submission.csv"), str(labels_csv), "--out", str(ev),
                "--bootstrap", "0", "--no-plots"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["counts"] == {"slices": 34, "scans": 1, "patients": 1}
    assert metrics["scan_score"] == "max over slice probabilities"
    # same slice-level numbers as evaluating prediction.json itself
    ev_json = tmp_path / "eval-json"
    code = run(["-q", "evaluate", str(out / "prediction.json"), str(labels_csv), "--out", str(ev_json),
                "--bootstrap", "0", "--no-plots"])
    assert code == 0, capsys.readouterr().err
    from_json = json.loads((ev_json / "metrics.json").read_text())
    assert from_json["counts"]["slices"] == 34
    assert metrics["rsna_weighted_log_loss"]["overall"] == pytest.approx(  # same values, other slice order
        from_json["rsna_weighted_log_loss"]["overall"], rel=1e-12)
