"""An ensemble scan score of ichd and the BLAST-CT second reader, measured out of fold on rsna-series (issue 22).

Usage::

    python benchmarks/blast_ct_ensemble.py                 # writes results/blast_ct_ensemble/{report.json,report.md}

Scans: the 20 rsna-series series (the only labelled real DICOM with hemorrhage here: 6 positive), one per patient.
Readers:
- ichd: the default model's out-of-fold scan "any" (max over slices of ``runs/frozen_default/oof.csv``, repeat 0,
  whose ``fold`` column is ``r0/folds.csv``);
- BLAST-CT (model_1): hemorrhage volume IPH + EAH + IVH in ml from ``results/blast_ct_model1/scans/<scan>.json``
  (BLAST-CT's own ``run_inference``; ``ichd.inference.second_reader`` reproduces them, see blast_ct_speed.py);
- ensemble: logistic regression on the two standardised features ``[p_ichd, log(1 + ml)]`` (scikit-learn,
  L2 with C = 1, fixed before looking at the result: with 16 training scans no hyper-parameter is chosen),
  fitted leave-one-fold-out on the same patient folds, so every scan's ensemble score comes from a model that
  did not see it.
Each score's AUC gets a patient-bootstrap 95 % interval (``ichd.evaluation.bootstrap``, 1000 draws); the
difference ensemble - BLAST-CT gets one from the same draws. The fit on all 20 scans (coefficients in the raw
feature scale) is written too, for shipping only if the OOF AUC is at least the better reader's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OOF = ROOT / "runs" / "frozen_default" / "oof.csv"
BLAST = HERE / "results" / "blast_ct_model1" / "scans"
OUT = HERE / "results" / "blast_ct_ensemble"
HEMORRHAGE = ("iph", "eah", "ivh")
C = 1.0


def scan_table(oof: Path = OOF, blast: Path = BLAST) -> pd.DataFrame:
    """One row per rsna-series scan: scan_id, patient_id, fold, any (label), p_ichd, ml."""
    from ichd.data.labels import read_labels
    from ichd.paths import data_dir

    o = pd.read_csv(oof)
    o = o[o["source"] == "rsna-series"]
    scans = o.groupby("scan_id").agg(patient_id=("patient_id", "first"), fold=("fold", "first"),
                                      p_ichd=("any", "max")).reset_index()
    labels = read_labels(data_dir() / "rsna-series" / "labels.csv").groupby("scan_id")["any"].max()
    scans["any"] = scans["scan_id"].map(labels).astype(int)
    ml = {}
    for p in blast.glob("*.json"):
        r = json.loads(p.read_text())
        ml[r["scan_id"]] = float(sum(r["volumes_ml"].get(c, 0.0) for c in HEMORRHAGE))
    scans["ml"] = scans["scan_id"].map(ml)
    missing = scans[scans["ml"].isna()]["scan_id"].tolist()
    if missing:
        raise SystemExit(f"no BLAST-CT result for {missing}: run peer_blast_ct.py run --rsna-series first")
    return scans.sort_values("scan_id").reset_index(drop=True)


def features(p_ichd: np.ndarray, ml: np.ndarray) -> np.ndarray:
    return np.column_stack([np.asarray(p_ichd, float), np.log1p(np.asarray(ml, float))])


def fit(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Standardised L2 logistic regression; returns coefficients on the raw features (intercept, w_p, w_logml)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    lr = LogisticRegression(C=C, max_iter=1000).fit((x - mean) / std, y)
    w = lr.coef_[0] / std
    b = float(lr.intercept_[0] - np.sum(lr.coef_[0] * mean / std))
    return {"intercept": b, "p_ichd": float(w[0]), "log1p_hemorrhage_ml": float(w[1])}


def predict(coef: dict[str, Any], x: np.ndarray) -> np.ndarray:
    z = coef["intercept"] + coef["p_ichd"] * x[:, 0] + coef["log1p_hemorrhage_ml"] * x[:, 1]
    return 1.0 / (1.0 + np.exp(-z))


def oof_ensemble(df: pd.DataFrame) -> tuple[np.ndarray, list[dict[str, Any]]]:
    x, y, folds = features(df["p_ichd"], df["ml"]), df["any"].to_numpy(int), df["fold"].to_numpy()
    out = np.full(len(df), np.nan)
    per_fold = []
    for f in sorted(np.unique(folds)):
        train = folds != f
        coef = fit(x[train], y[train])
        out[~train] = predict(coef, x[~train])
        per_fold.append({"fold": int(f), "train_scans": int(train.sum()), "train_positive": int(y[train].sum()),
                         **coef})
    return out, per_fold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from ichd.evaluation.bootstrap import GroupIndex, bootstrap
    from ichd.evaluation.metrics import roc_auc

    df = scan_table()
    df["ensemble_oof"], per_fold = oof_ensemble(df)
    y = df["any"].to_numpy(int)
    scores = {"ichd": df["p_ichd"].to_numpy(float), "blast_ct": df["ml"].to_numpy(float),
              "ensemble": df["ensemble_oof"].to_numpy(float)}
    groups = GroupIndex(df["patient_id"])

    def stat(draw: np.ndarray) -> dict[str, float]:
        rows = groups.rows(draw)
        vals = {k: roc_auc(y[rows], s[rows]) for k, s in scores.items()}
        vals["ensemble_minus_blast_ct"] = vals["ensemble"] - vals["blast_ct"]
        vals["ensemble_minus_ichd"] = vals["ensemble"] - vals["ichd"]
        return vals

    ci = bootstrap(stat, groups.n_groups, desc="patient bootstrap")
    auc = {k: roc_auc(y, s) for k, s in scores.items()}
    full = fit(features(df["p_ichd"], df["ml"]), y)
    better = max(auc["ichd"], auc["blast_ct"])
    result = {
        "scans": len(df), "positive": int(y.sum()), "patients": int(df["patient_id"].nunique()),
        "folds": sorted(int(f) for f in df["fold"].unique()),
        "auc": auc, "auc_ci": {k: ci[k].to_list() for k in scores},
        "difference": {k: {"value": auc["ensemble"] - auc[k.split("_minus_")[1]], "ci": ci[k].to_list()}
                       for k in ("ensemble_minus_blast_ct", "ensemble_minus_ichd")},
        "model": {"features": ["p_ichd", "log1p_hemorrhage_ml"], "standardised": True, "C": C,
                  "per_fold": per_fold, "fit_all_scans": full},
        "meets_target": bool(auc["ensemble"] >= better),
        "sources": {"ichd_oof": str(OOF.relative_to(ROOT)), "blast_ct": str(BLAST.relative_to(ROOT))},
        "scans_table": df.to_dict(orient="records"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = ["| reader | rsna-series scan any-AUC, OOF [patient-bootstrap 95 % CI] |", "|---|---|"]
    names = {"ichd": "ichd default model (frozen_default OOF, max slice p(any))",
             "blast_ct": "BLAST-CT model_1, IPH+EAH+IVH ml",
             "ensemble": "ensemble: logistic regression [p_ichd, log(1+ml)], leave-one-fold-out"}
    for k in scores:
        lo, hi = result["auc_ci"][k]
        lines.append(f"| {names[k]} | {auc[k]:.3f} [{lo:.3f}, {hi:.3f}] |")
    for k, d in result["difference"].items():
        lo, hi = d["ci"]
        lines.append(f"| difference {k.replace('_minus_', ' - ')} | {d['value']:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    table = "\n".join(lines)
    (args.out / "report.md").write_text(table + "\n")
    print(table)
    print("fit on all scans:", {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                                for k, v in full.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
