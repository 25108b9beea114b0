"""``ichd evaluate`` end to end on CT-ICH labels with noisy synthetic predictions (the real OOF file is
evaluated by hand and reported in docs/results.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichd.cli.main import run
from ichd.constants import LABELS


@pytest.fixture(scope="module")
def ctich_preds(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(labels.csv, fold-0 predictions, folds 1-4 predictions) with patient-level noise."""
    from ichd.data.labels import read_labels

    labels_path = data_root / "ct-ich" / "labels.csv"
    lab = read_labels(labels_path)
    rng = np.random.default_rng(0)
    pats = sorted(lab["patient_id"].unique())
    fold = {p: i % 5 for i, p in enumerate(rng.permutation(pats))}
    effect = {p: rng.normal(0, 0.7) for p in pats}
    df = lab[["scan_id", "patient_id", "slice_index"]].copy()
    df["fold"] = df["patient_id"].map(fold)
    for c in LABELS:
        z = -3.0 + 4.0 * lab[c].to_numpy() + df["patient_id"].map(effect).to_numpy() + rng.normal(0, 1, len(df))
        df[c] = np.round(1 / (1 + np.exp(-z)), 6)
    out = tmp_path_factory.mktemp("preds")
    val, test = out / "val.csv", out / "test.csv"
    df[df["fold"] == 0].reset_index().to_csv(val, index=False)
    df[df["fold"] != 0].reset_index().to_csv(test, index=False)
    return labels_path, val, test


def test_evaluate_with_validation_thresholds(ctich_preds: tuple[Path, Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    labels, val, test = ctich_preds
    out = tmp_path / "report"
    rc = run(["-q", "evaluate", str(test), str(labels), "--out", str(out), "--thresholds-from", str(val),
              "--bootstrap", "30", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["thresholds"]["chosen_on"] == str(val)
    assert not any("optimistic" in n for n in m["notes"])
    assert any("without predictions" in n for n in m["notes"])  # the validation patients' labels
    assert m["counts"]["scans"] == m["counts"]["patients"] < 82
    assert m["slice"]["classes"]["any"]["auc"] > 0.8 and m["bootstrap"]["unit"] == "patient"
    assert (out / "report.html").stat().st_size > 50_000 and (out / "plots" / "scan_roc_pr.png").is_file()
    # the stored thresholds can be reused directly and give the same numbers
    out2 = tmp_path / "again"
    assert run(["-q", "evaluate", str(test), str(labels), "--out", str(out2), "--thresholds-from",
                str(out / "thresholds.json"), "--bootstrap", "0", "--no-plots"]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert not (out2 / "plots").exists() and "![" not in (out2 / "report.md").read_text()
    for level in ("slice", "scan"):
        a = m[level]["classes"]["epidural"]["operating_points"]["sensitivity"]
        b = m2[level]["classes"]["epidural"]["operating_points"]["sensitivity"]
        assert (a["threshold"], a["tp"], a["fp"]) == (b["threshold"], b["tp"], b["fp"])


def test_bad_inputs_give_one_line_errors(ctich_preds: tuple[Path, Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    labels, val, _ = ctich_preds
    df = pd.read_csv(val)
    df.loc[4, "subdural"] = np.nan
    bad = tmp_path / "nan.csv"
    df.to_csv(bad, index=False)
    assert run(["evaluate", str(bad), str(labels), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "'subdural' is empty or NaN" in err and f"line 6 [{df.loc[4, 'slice_id']}]" in err
    assert "Traceback" not in err and not (tmp_path / "o1").exists()
    df = pd.read_csv(val)
    df.loc[2, "slice_id"] = "ctich-999-001"
    df.to_csv(bad, index=False)
    assert run(["evaluate", str(bad), str(labels), "--out", str(tmp_path / "o2")]) == 2
    assert "ctich-999-001" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert run(["evaluate", str(val), str(labels), "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "x"


def test_rsna_submission_against_rsna_labels(data_root: Path, tmp_path: Path) -> None:
    """An RSNA-format submission scored against RSNA-format labels: slice level only, said in the report."""
    labels = data_root / "rsna-samples" / "source_dcm_test.csv"
    truth = pd.read_csv(labels)
    sub = truth.assign(Label=np.where(truth["Label"] == 1, 0.8, 0.1))
    sub_path = tmp_path / "submission.csv"
    sub.to_csv(sub_path, index=False)
    out = tmp_path / "rsna"
    assert run(["-q", "evaluate", str(sub_path), str(labels), "--out", str(out), "--bootstrap", "0",
                "--no-plots"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"]["predictions_format"] == "rsna-csv" and m["scan"] is None
    # every slice: BCE is -ln 0.8 for positives and -ln 0.9 for negatives, whatever the class
    y = truth.assign(sop=truth["ID"].str.rsplit("_", n=1).str[0], lab=truth["ID"].str.rsplit("_", n=1).str[1])
    per = {lab: float(np.mean(np.where(g["Label"] == 1, -np.log(0.8), -np.log(0.9)))) for lab, g in y.groupby("lab")}
    expected = (2 * per["any"] + sum(per[lab] for lab in LABELS[1:])) / 7
    assert m["rsna_weighted_log_loss"]["overall"] == pytest.approx(expected)
    assert "slice level only" in (out / "report.md").read_text()


def test_evaluate_two_sources_with_missing_labels(data_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """CT-ICH + rsna-series labels as one table: the 3 rsna-series slices without labels are left out, and
    --source evaluates one source alone."""
    from ichd.data.labels import read_label_sources

    files = [data_root / "ct-ich" / "labels.csv", data_root / "rsna-series" / "labels.csv"]
    lab = read_label_sources(files)
    rng = np.random.default_rng(1)
    df = lab[["scan_id", "patient_id", "slice_index"]].copy()
    df["fold"] = 0
    for c in LABELS:
        y = np.nan_to_num(lab[c].to_numpy(float))
        df[c] = np.round(1 / (1 + np.exp(-(-2.5 + 3.0 * y + rng.normal(0, 1, len(df))))), 6)
    preds = tmp_path / "preds.csv"
    df.reset_index().to_csv(preds, index=False)
    out = tmp_path / "all"
    rc = run(["-q", "evaluate", str(preds), *map(str, files), "--out", str(out), "--bootstrap", "20",
              "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["counts"]["slices"] == len(lab) - 3
    assert any("3 slice(s) with missing labels" in n for n in m["notes"])
    out2 = tmp_path / "rsna"
    rc = run(["-q", "evaluate", str(preds), *map(str, files), "--out", str(out2), "--source", "rsna-series",
              "--bootstrap", "20", "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["counts"]["slices"] == 684 - 3 and m2["counts"]["scans"] == 20
    rc = run(["-q", "evaluate", str(preds), *map(str, files), "--out", str(tmp_path / "x"), "--source",
              "rsna-serie"])
    assert rc == 2 and "did you mean 'rsna-series'" in capsys.readouterr().err
