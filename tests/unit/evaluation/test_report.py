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


def _cv_data(seed: int) -> EvalData:
    """_data with 4 folds (by patient), two sources and slice order."""
    d = _data(seed)
    scan_no = np.asarray([int(str(s).rsplit("-", 1)[1]) for s in d.scan_ids])
    d.folds = np.asarray([str((k // 2) % 4) for k in scan_no], dtype=object)  # each fold: 2 positive, 2 negative
    d.sources = np.asarray(["a" if k < 8 else "b" for k in scan_no], dtype=object)
    d.slice_index = np.tile(np.arange(10), 16).astype(float)
    return d


def test_per_fold_spread_per_source_and_scan_rules() -> None:
    from ichd.evaluation.metrics import roc_auc
    from ichd.models.scan_rules import scan_probabilities

    d = _cv_data(6)
    m = evaluate(d, n_boot=30, plots=False).metrics
    f2 = d.folds == "2"
    assert m["per_fold"]["2"]["slice"]["any"]["auc"] == pytest.approx(roc_auc(d.y[f2, 0], d.p[f2, 0]))
    assert m["per_fold"]["2"]["slice"]["any"]["n_positive"] == int(d.y[f2, 0].sum())
    assert m["per_fold"]["2"]["n_scans"] == 4
    fold_aucs = [m["per_fold"][f]["scan"]["epidural"]["auc"] for f in "0123"]
    spread = m["fold_spread"]["scan"]["epidural"]
    defined = [a for a in fold_aucs if a is not None]
    assert spread["n"] == len(defined) and spread["mean"] == pytest.approx(np.mean(defined))
    assert spread["min"] == pytest.approx(min(defined)) and spread["max"] == pytest.approx(max(defined))
    # per source: the source's own AUC, with a patient-bootstrap interval within the source
    a = d.sources == "a"
    src = m["per_source"]["a"]
    assert src["counts"] == {"slices": 80, "scans": 8, "patients": 8}
    assert src["slice"]["any"]["auc"] == pytest.approx(roc_auc(d.y[a, 0], d.p[a, 0]))
    lo, hi = src["slice"]["any"]["auc_ci95"]
    assert lo <= src["slice"]["any"]["auc"] <= hi
    # scan rules: every rule's scan AUC over the slice predictions
    rules = m["scan_rules"]["rules"]
    assert set(rules) == {"max", "consecutive", "topk_mean", "smoothed_max"} and not m["scan_rules"]["skipped"]
    sm = np.stack([scan_probabilities(d.p[d.scan_ids == s], "smoothed_max") for s in d.scans])
    assert rules["smoothed_max"]["auc"]["any"] == pytest.approx(roc_auc(d.y_scan[:, 0], sm[:, 0]))
    assert rules["max"]["auc"]["any"] == pytest.approx(m["scan"]["classes"]["any"]["auc"])
    # without a slice order the order-dependent rules are skipped, with the reason
    d.slice_index = None
    assert set(evaluate(d, n_boot=0, plots=False).metrics["scan_rules"]["skipped"]) == {"consecutive",
                                                                                       "smoothed_max"}


def test_repeats_policy_and_extra_subtypes(tmp_path: Path) -> None:
    from ichd.evaluation.metrics import roc_auc

    d = _cv_data(7)
    rep = _cv_data(7)
    rep.p = np.clip(rep.p + np.random.default_rng(9).normal(0, 0.1, rep.p.shape), 0, 1)
    rep.folds = np.asarray([str(int(f) % 3) for f in rep.folds], dtype=object)  # other folds (3 of them)
    ev = evaluate(d, n_boot=20, plots=False, repeats=[("rep.csv", rep)], inputs={"predictions": "main.csv"})
    r = ev.metrics["repeats"]
    assert r["n_repeats"] == 2 and [x["predictions"] for x in r["per_repeat"]] == ["main.csv", "rep.csv"]
    pooled = [roc_auc(d.y[:, 0], d.p[:, 0]), roc_auc(rep.y[:, 0], rep.p[:, 0])]
    assert r["across_repeats"]["slice"]["any"]["mean"] == pytest.approx(np.mean(pooled))
    assert r["across_repeats"]["slice"]["any"]["sd"] == pytest.approx(np.std(pooled, ddof=1))
    assert r["all_folds"]["slice"]["any"]["n"] == 4 + 3
    assert ev.metrics["slice"]["classes"]["any"]["auc"] == pytest.approx(pooled[0])  # main metrics: the first file
    # policy: any at the sensitivity point, subtypes at specificity >= 0.9; calls gated by "any"
    th = ev.thresholds
    for level, y, p in (("slice", d.y, d.p), ("scan", d.y_scan, d.p_scan)):
        t = getattr(th, level)
        assert t["policy"]["any"] == t["sensitivity"]["any"]
        for c, lab in enumerate(LABELS[1:], start=1):
            assert threshold_metrics(y[:, c], p[:, c], t["policy"][lab])["specificity"] >= 0.9
        gated = calls(p, t["policy"])
        assert not (gated[:, 1:] & ~gated[:, :1]).any()
        e = ev.metrics[level]["extra_subtype"]["policy"]
        assert e == {**extra_subtype_rate(y, gated), "rate_ci95": e["rate_ci95"]}
        assert e["rate_ci95"][0] <= e["rate"] <= e["rate_ci95"][1]
    paths = write_report(ev, tmp_path / "rep")
    md = paths["report_md"].read_text()
    for heading in ("## Per-fold AUC", "## Per source", "## Scan rules", "## Repeated cross-validation",
                    "### Extra subtypes", "subtypes at specificity >= 0.9"):
        assert heading in md, heading
    assert "<h2>Per source</h2>" in paths["report_html"].read_text()
    doc = json.loads(paths["thresholds"].read_text())
    assert doc["policy"]["subtypes"] == "specificity >= 0.9" and doc["subtype_specificity"] == 0.9
    back = read_thresholds(paths["thresholds"])
    assert back.slice["policy"] == pytest.approx(th.slice["policy"]) and back.subtype_specificity == 0.9
    # a thresholds.json written before the policy point: policy = any at sensitivity, subtypes at Youden
    del doc["slice"]["policy"], doc["scan"]["policy"], doc["subtype_specificity"], doc["policy"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = read_thresholds(tmp_path / "old.json")
    assert old.subtype_specificity is None
    assert old.scan["policy"]["subdural"] == pytest.approx(th.scan["youden"]["subdural"])
    assert old.scan["policy"]["any"] == pytest.approx(th.scan["sensitivity"]["any"])
    # subtype specificity off: subtypes at Youden
    off = choose_operating_thresholds(d, subtype_specificity=0)
    assert off.slice["policy"]["epidural"] == off.slice["youden"]["epidural"]
    with pytest.raises(InputError, match="subtype-specificity"):
        choose_operating_thresholds(d, subtype_specificity=1.5)


def test_calibrated_note() -> None:
    d = _cv_data(8)
    m = evaluate(d, n_boot=0, plots=False).metrics
    assert m["calibrated"] is None and any("scales" in n for n in m["notes"])
    d.calibrated = "temperature"
    m = evaluate(d, n_boot=0, plots=False).metrics
    assert m["calibrated"] == "temperature" and any("calibrated (temperature)" in n for n in m["notes"])
