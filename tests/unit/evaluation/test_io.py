"""Prediction readers (ichd CSV, predict JSON, RSNA submission), alignment with labels, and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.evaluation.io import align, read_predictions, read_scan_map


def _labels(n_scans: int = 3, per_scan: int = 4, with_ids: bool = True) -> pd.DataFrame:
    rows = []
    for s in range(n_scans):
        for k in range(per_scan):
            y = [0] * 6
            if s == 0 and k in (1, 2):
                y = [1, 0, 1, 0, 0, 0]
            rows.append({"slice_id": f"s{s}-{k}", "scan_id": f"scan{s}" if with_ids else None,
                         "patient_id": f"pat{s}" if with_ids else None, "slice_index": k,
                         **dict(zip(LABELS, y))})
    return pd.DataFrame(rows).set_index("slice_id")


def _pred_csv(path: Path, labels: pd.DataFrame, **overrides: object) -> Path:
    df = labels.reset_index()[["slice_id", "scan_id", "patient_id", "slice_index"]].copy()
    df["fold"] = 0
    rng = np.random.default_rng(0)
    for lab in LABELS:
        df[lab] = np.round(rng.random(len(df)), 4)
    df = df.astype(object)
    for key, value in overrides.items():
        row, col = key.split(":")
        df.loc[int(row), col] = value
    df.to_csv(path, index=False)
    return path


def test_read_ichd_csv_and_align(tmp_path: Path) -> None:
    lab = _labels()
    preds = read_predictions(_pred_csv(tmp_path / "p.csv", lab))
    assert preds.fmt == "ichd-csv" and len(preds.slices) == 12
    data = align(preds, lab)
    assert data.has_scans and data.group_kind == "patient"
    assert list(data.scans) == ["scan0", "scan1", "scan2"]
    np.testing.assert_array_equal(data.y_scan[:, 0], [1, 0, 0])
    # scan score = max over slices (no scan output in a CSV)
    np.testing.assert_allclose(data.p_scan[0], data.p[:4].max(axis=0))
    assert data.scan_score_source == "max over slice probabilities"


@pytest.mark.parametrize(("override", "message"), [
    ({"3:epidural": "nan"}, "line 5"),
    ({"3:epidural": ""}, "line 5"),
    ({"2:any": 1.5}, "line 4 [s0-2] (1.5)"),
    ({"7:subdural": -0.1}, "outside [0, 1]"),
    ({"1:any": "high"}, "not a number"),
])
def test_bad_probabilities_name_rows(tmp_path: Path, override: dict, message: str) -> None:
    path = _pred_csv(tmp_path / "p.csv", _labels(), **override)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        read_predictions(path)


def test_missing_class_column(tmp_path: Path) -> None:
    path = _pred_csv(tmp_path / "p.csv", _labels())
    pd.read_csv(path).drop(columns=["subdural"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="missing probability column.*subdural"):
        read_predictions(path)


def test_mismatched_ids_and_partial_scans(tmp_path: Path) -> None:
    lab = _labels()
    preds = read_predictions(_pred_csv(tmp_path / "p.csv", lab))
    other = lab.rename(index={"s1-2": "zzz"})
    with pytest.raises(InputError, match="have no label.*s1-2"):
        align(preds, other)
    partial = preds.slices.drop(index=["s2-3"])
    preds.slices = partial
    with pytest.raises(InputError, match="labelled slices without a prediction: scan2"):
        align(preds, lab)
    # a scan left out entirely is only noted
    preds.slices = partial.drop(index=["s2-0", "s2-1", "s2-2"])
    data = align(preds, lab)
    assert any("1 more scan" in n for n in data.notes) and len(data.scans) == 2


def test_duplicate_slice_ids(tmp_path: Path) -> None:
    path = _pred_csv(tmp_path / "p.csv", _labels(), **{"5:slice_id": "s0-0"})
    with pytest.raises(InputError, match="more than once.*line 2.*line 7"):
        read_predictions(path)


def test_rsna_submission(tmp_path: Path) -> None:
    lines = ["ID,Label"]
    for sop, base in (("ID_aaa", 0.1), ("ID_bbb", 0.7)):
        lines += [f"{sop}_{lab},{base + i / 100}" for i, lab in enumerate(LABELS)]
    path = tmp_path / "sub.csv"
    path.write_text("\n".join(lines) + "\n")
    preds = read_predictions(path)
    assert preds.fmt == "rsna-csv"
    assert preds.slices.loc["ID_bbb", "epidural"] == pytest.approx(0.71)
    lab = pd.DataFrame({lab: [0, 1] for lab in LABELS}, index=pd.Index(["ID_aaa", "ID_bbb"], name="slice_id"))
    data = align(preds, lab)
    assert not data.has_scans and data.group_kind == "slice"
    assert any("slice-level metrics" in n for n in data.notes)
    # missing subtype rows and bad values name the IDs / lines
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match="ID_bbb.*missing subdural"):
        read_predictions(path)
    path.write_text("\n".join(lines[:3] + ["ID_aaa_intraparenchymal,NaN"] + lines[4:]) + "\n")
    with pytest.raises(InputError, match="line 4"):
        read_predictions(path)
    path.write_text("ID,Label\nID_aaa_fracture,0.5\n")
    with pytest.raises(InputError, match="ID_aaa_fracture"):
        read_predictions(path)


def _predict_json(uid: str, sops: list[str], scan: bool = True) -> dict:
    doc = {"series_instance_uid": uid, "slices": [
        {"index": i, "sop_instance_uid": s, "z_mm": float(i), "probabilities": {lab: 0.1 * (i + 1) for lab in LABELS}}
        for i, s in enumerate(sops)]}
    if scan:
        doc["scan"] = {lab: 0.42 for lab in LABELS}
    return doc


def test_predict_json_folder_uses_scan_output(tmp_path: Path) -> None:
    folder = tmp_path / "preds"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(_predict_json("1.2.3", ["1.2.3.1", "1.2.3.2"])))
    (folder / "b.json").write_text(json.dumps(_predict_json("1.2.4", ["1.2.4.1"])))
    preds = read_predictions(folder)
    assert preds.fmt == "predict-json" and preds.scans is not None
    lab = pd.DataFrame({lab: [0, 1, 0] for lab in LABELS},
                       index=pd.Index(["1.2.3.1", "1.2.3.2", "1.2.4.1"], name="slice_id"))
    data = align(preds, lab)
    assert data.group_kind == "scan" and data.scan_score_source == "model scan output"
    np.testing.assert_allclose(data.p_scan, 0.42)
    bad = _predict_json("1.2.5", ["x"])
    bad["slices"][0]["probabilities"]["any"] = 2.0
    (folder / "c.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"c\.json slices\[0\]"):
        read_predictions(folder)


def test_scan_map(tmp_path: Path) -> None:
    lab = _labels(with_ids=False)
    preds = read_predictions(_pred_csv(tmp_path / "p.csv", _labels()))
    preds.slices[["scan_id", "patient_id"]] = None
    m = tmp_path / "scans.csv"
    pd.DataFrame({"slice_id": lab.index, "scan_id": [s.split("-")[0] for s in lab.index],
                  "patient_id": "P" + pd.Series([s[1] for s in lab.index])}).to_csv(m, index=False)
    data = align(preds, lab, scan_map=read_scan_map(m))
    assert list(data.scans) == ["s0", "s1", "s2"] and data.group_kind == "patient"
    # a map that disagrees with the predictions' own scan ids is an error
    preds2 = read_predictions(_pred_csv(tmp_path / "p2.csv", _labels()))
    with pytest.raises(InputError, match="scan_id differs"):
        align(preds2, lab, scan_map=read_scan_map(m))


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="cannot tell the predictions format"):
        read_predictions(path)
    with pytest.raises(InputError, match="does not exist"):
        read_predictions(tmp_path / "nope.csv")


def test_scan_predictions_csv(tmp_path: Path) -> None:
    from ichd.evaluation.io import read_scan_predictions

    lab = _labels()
    preds = read_predictions(_pred_csv(tmp_path / "p.csv", lab))
    path = tmp_path / "scans.csv"
    rows = [f"scan{s},pat{s},{','.join(str(0.1 * (s + 1)) for _ in LABELS)},1" for s in range(3)]
    path.write_text("scan_id,patient_id," + ",".join(LABELS) + ",y_any\n" + "\n".join(rows) + "\n")
    preds.scans = read_scan_predictions(path)
    data = align(preds, lab)
    assert data.scan_score_source == "model scan output"
    np.testing.assert_allclose(data.p_scan[:, 0], [0.1, 0.2, 0.3])
    path.write_text("scan_id," + ",".join(LABELS) + "\nscan0," + ",".join(["0.5"] * 5) + ",7\n")
    with pytest.raises(InputError, match=r"line 2 \[scan0\] \(7\)"):
        read_scan_predictions(path)
    preds.scans = preds.scans.drop(index="scan2")
    with pytest.raises(InputError, match="no scan-level output for scan.*scan2"):
        align(preds, lab)


def test_rsna_submission_errors_name_the_lines(tmp_path: Path) -> None:
    good = [f"ID_aaa_{lab},0.1" for lab in LABELS]
    path = tmp_path / "sub.csv"
    path.write_text("ID,Label\n" + "\n".join(good + ["ID_bbb_bleed,0.2"]) + "\n")
    with pytest.raises(InputError, match=r"line 8 \('ID_bbb_bleed'\)"):
        read_predictions(path)
    path.write_text("ID,Label\n" + "\n".join(good + ["ID_aaa_any,0.9"]) + "\n")
    with pytest.raises(InputError, match="conflicting values.*ID_aaa_any at lines 2, 8"):
        read_predictions(path)
    path.write_text("ID,Label\n" + "\n".join(good + ["ID_bbb_any,0.3"]) + "\n")
    with pytest.raises(InputError, match="lack some.*ID_bbb"):
        read_predictions(path)
    path.write_text("ID,Label\n" + "\n".join(good[:-1] + ["ID_aaa_subdural,1.5"]) + "\n")
    with pytest.raises(InputError, match="line 7"):
        read_predictions(path)


def test_partial_scans_option(tmp_path: Path) -> None:
    lab = _labels()
    preds = read_predictions(_pred_csv(tmp_path / "p.csv", lab))
    full = preds.slices
    preds.slices = full.drop(index=["s2-3"])  # a negative slice of a negative scan (e.g. a dropped duplicate)
    data = align(preds, lab, partial_scans=True)
    assert any("predicted slices only" in n and "scan2" in n for n in data.notes)
    assert len(data.scans) == 3
    # losing the only positive slices of scan0 would change its scan label: still an error
    preds.slices = full.drop(index=["s0-1", "s0-2"])
    with pytest.raises(InputError, match="only positive"):
        align(preds, lab, partial_scans=True)
    # losing one of two positive slices keeps the scan label: allowed
    preds.slices = full.drop(index=["s0-1"])
    assert len(align(preds, lab, partial_scans=True).scans) == 3


def test_calibrated_source_and_slice_order_columns(tmp_path: Path) -> None:
    from ichd.evaluation.report import evaluate_files

    lab = _labels()
    path = _pred_csv(tmp_path / "p.csv", lab)
    df = pd.read_csv(path)
    df["calibrated"] = "temperature"
    df["source"] = ["x"] * 8 + ["y"] * 4
    df.to_csv(path, index=False)
    preds = read_predictions(path)
    assert preds.calibrated == "temperature"
    data = align(preds, lab)
    assert list(data.sources) == ["x"] * 8 + ["y"] * 4 and list(data.slice_index) == [0, 1, 2, 3] * 3
    df.loc[3, "calibrated"] = "false"
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match="calibrated"):
        read_predictions(path)
    # evaluate_files: --repeat must predict the same slices
    lab.reset_index().to_csv(tmp_path / "labels.csv", index=False)
    main = _pred_csv(tmp_path / "main.csv", lab)
    rep = _pred_csv(tmp_path / "rep.csv", lab)
    ev, _ = evaluate_files(main, tmp_path / "labels.csv", tmp_path / "out", n_boot=0, plots=False, repeats=[rep])
    assert ev.metrics["repeats"]["n_repeats"] == 2 and ev.metrics["inputs"]["repeats"] == [str(rep)]
    pd.read_csv(rep).iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match="slices differ"):
        evaluate_files(main, tmp_path / "labels.csv", tmp_path / "out2", n_boot=0, plots=False,
                       repeats=[tmp_path / "short.csv"], partial_scans=True)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_files(main, tmp_path / "labels.csv", tmp_path / "out3", repeats=[tmp_path / "nope.csv"])
