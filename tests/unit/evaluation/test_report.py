"""evaluate() / write_report(): metrics content, honest thresholds, files written, overwrite protection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ichd.calls import calls
from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.evaluation.io import EvalData
from ichd.evaluation.metrics import (
    call_metrics,
    extra_subtype_rate,
    scan_aggregate,
    threshold_metrics,
    weighted_log_loss,
)
from ichd.evaluation.readers import ReaderStudy
from ichd.evaluation.report import (
    choose_operating_thresholds,
    evaluate,
    prepare_output_dir,
    read_thresholds,
    write_report,
)


def _data(seed: int, n_patients: int = 16, per_scan: int = 10) -> EvalData:
    rng = np.random.default_rng(seed)
    n = n_patients * per_scan
    scan_ids = np.repeat([f"scan{seed}-{i}" for i in range(n_patients)], per_scan).astype(object)
    y = np.zeros((n, 6))
    for i in range(0, n_patients, 2):  # every other scan has a bleed in a few slices
        rows = slice(i * per_scan + 3, i * per_scan + 6)
        y[rows, 0] = 1
        y[rows, 1 + (i // 2) % 5] = 1
    p = np.clip(0.5 * y + 0.5 * rng.random((n, 6)) * (0.4 + 0.6 * y), 0, 1)
    scans, ys, ps = scan_aggregate(y, p, scan_ids)
    return EvalData(slice_ids=np.array([f"{seed}-{k}" for k in range(n)], dtype=object), y=y, p=p,
                    scan_ids=scan_ids, patient_ids=scan_ids.copy(), group_kind="patient",
                    scans=np.asarray(scans, dtype=object), y_scan=ys, p_scan=ps,
                    scan_patients=np.asarray(scans, dtype=object), scan_score_source="max over slice probabilities")


def test_evaluate_metrics_and_intervals() -> None:
    data = _data(0)
    ev = evaluate(data, n_boot=40, seed=0, plots=False)
    m = ev.metrics
    assert m["rsna_weighted_log_loss"]["overall"] == pytest.approx(weighted_log_loss(data.y, data.p))
    lo, hi = m["rsna_weighted_log_loss"]["overall_ci95"]
    assert lo <= m["rsna_weighted_log_loss"]["overall"] <= hi
    any_slice = m["slice"]["classes"]["any"]
    assert set(any_slice["operating_points"]) == {"0.5", "youden", "sensitivity", "policy"}
    assert any_slice["operating_points"]["sensitivity"]["sensitivity"] >= 0.95
    assert any_slice["bootstrap_valid"]["auc"] <= 40
    assert m["scan"]["n"] == 16 and m["bootstrap"]["unit"] == "patient"
    assert any("optimistic" in n for n in m["notes"])
    # seeded: the same seed gives the same intervals
    again = evaluate(data, n_boot=40, seed=0, plots=False).metrics
    assert again["slice"]["classes"]["any"]["ci95"] == any_slice["ci95"]
    json.dumps(m)  # JSON-ready (no NaN objects)
    assert m["per_fold"] is None
    data.folds = np.asarray([i % 2 for i in range(len(data.y))], dtype=object)
    per_fold = evaluate(data, n_boot=0, plots=False).metrics["per_fold"]
    assert list(per_fold) == ["0", "1"] and per_fold["1"]["n_slices"] == len(data.y) // 2
    assert per_fold["0"]["weighted_log_loss"] == pytest.approx(weighted_log_loss(data.y[::2], data.p[::2]))


def test_thresholds_from_validation_are_applied_unchanged() -> None:
    val, test = _data(1), _data(2)
    th = choose_operating_thresholds(val, sensitivity=0.9, chosen_on="val.csv")
    ev = evaluate(test, thresholds=th, n_boot=0, plots=False)
    for level, y, p, t in (("slice", test.y, test.p, th.slice), ("scan", test.y_scan, test.p_scan, th.scan)):
        for c, lab in enumerate(LABELS):
            got = ev.metrics[level]["classes"][lab]["operating_points"]["youden"]
            assert got["threshold"] == pytest.approx(t["youden"][lab])
            assert got["sensitivity"] == pytest.approx(  # subtype calls gated by "any" (ichd.calls)
                call_metrics(y[:, c], calls(p, t["youden"])[:, c], t["youden"][lab])["sensitivity"], nan_ok=True)
            if lab == "any":  # the gate itself is the plain threshold rule
                assert got["sensitivity"] == pytest.approx(
                    threshold_metrics(y[:, c], p[:, c], t["youden"][lab])["sensitivity"], nan_ok=True)
    assert ev.metrics["thresholds"]["chosen_on"] == "val.csv"
    assert not any("optimistic" in n for n in ev.metrics["notes"])


def test_write_report_files_and_overwrite(tmp_path: Path) -> None:
    data = _data(3)
    study = ReaderStudy(cases=[str(s) for s in data.scans[:10]], readers=["A", "B"], labels=["any"],
                        calls=np.stack([data.y_scan[:10, :1], 1 - data.y_scan[:10, :1]], axis=1), source="r.csv")
    ev = evaluate(data, n_boot=20, readers=study)
    r = ev.metrics["readers"]["per_label"]["any"]
    assert r["readers"]["A"]["sensitivity"] == 1.0 and r["readers"]["B"]["sensitivity"] == 0.0
    assert r["cohen_kappa"]["A vs B"] == pytest.approx(-1.0)
    out = tmp_path / "rep"
    paths = write_report(ev, out)
    for name in ("metrics.json", "thresholds.json", "report.md", "report.html", "plots/slice_roc_pr.png",
                 "plots/scan_reliability.png", "plots/readers_roc.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(ev.figures) and "<img src=\"plots" not in html
    md = (out / "report.md").read_text()
    assert "RSNA 2019 weighted log loss" in md and "Human readers" in md and "(plots/slice_roc_pr.png)" in md
    assert json.loads(paths["metrics"].read_text())["counts"]["scans"] == 16
    th = read_thresholds(out / "thresholds.json")
    assert th.slice["youden"] == pytest.approx(ev.thresholds.slice["youden"])
    with pytest.raises(InputError, match="not empty"):
        write_report(ev, out)
    assert prepare_output_dir(out, overwrite=True) == out


def test_slice_only_data_and_bad_arguments() -> None:
    d = _data(4)
    flat = EvalData(slice_ids=d.slice_ids, y=d.y, p=d.p, scan_ids=None, patient_ids=d.slice_ids.copy(),
                    group_kind="slice", notes=["No scan membership"])
    ev = evaluate(flat, n_boot=5, plots=False)
    assert ev.metrics["scan"] is None and ev.metrics["bootstrap"]["unit"] == "slice"
    with pytest.raises(InputError, match="sensitivity"):
        evaluate(flat, sensitivity=1.5, plots=False)
    study = ReaderStudy(["x"], ["A"], ["any"], np.ones((1, 1, 1)))
    with pytest.raises(InputError, match="scan membership"):
        evaluate(flat, n_boot=0, readers=study, plots=False)
    with pytest.raises(InputError, match="none of the 1 cases"):
        evaluate(d, n_boot=0, readers=study, plots=False)


def test_weighted_bootstrap_statistic_equals_metrics_on_resampled_rows() -> None:
    from ichd.evaluation.bootstrap import GroupIndex, draws
    from ichd.evaluation.calibration import expected_calibration_error
    from ichd.evaluation.metrics import average_precision, roc_auc
    from ichd.evaluation.report import OPERATING_POINTS, _WeightedLevel

    data = _data(5)
    data.p = np.round(data.p, 2)  # ties
    th = choose_operating_thresholds(data, sensitivity=0.9).slice
    th["youden"]["subdural"] = float("nan")
    level = _WeightedLevel(data.y, data.p, th, 10, "slice")
    groups = GroupIndex(data.patient_ids)
    for draw in draws(groups.n_groups, 5, seed=3):
        fast = level.statistic(groups.row_weights(draw))
        rows = groups.rows(draw)
        y, p = data.y[rows], data.p[rows]
        assert fast["slice/weighted_log_loss"] == pytest.approx(weighted_log_loss(y, p))
        for c, lab in enumerate(LABELS):
            assert fast[f"slice/{lab}/auc"] == pytest.approx(roc_auc(y[:, c], p[:, c]), nan_ok=True)
            assert fast[f"slice/{lab}/average_precision"] == pytest.approx(average_precision(y[:, c], p[:, c]),
                                                                           nan_ok=True)
            assert fast[f"slice/{lab}/ece"] == pytest.approx(expected_calibration_error(y[:, c], p[:, c]))
            for op in OPERATING_POINTS:
                ref = call_metrics(y[:, c], calls(p, th[op])[:, c], th[op][lab])
                for name in ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1"):
                    assert fast[f"slice/{lab}/{op}/{name}"] == pytest.approx(ref[name], nan_ok=True), (lab, op, name)
        for op in OPERATING_POINTS:
            assert fast[f"slice/{op}/extra_subtype_rate"] == pytest.approx(
                extra_subtype_rate(y, calls(p, th[op]))["rate"])
