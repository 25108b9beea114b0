"""BLAST-CT (a published peer: 3D DeepMedic lesion segmentation) beside ichd on the same scans and folds.

Usage::

    pip install -e ".[blast-ct]"                  # blast-ct 2.1.0 (Apache-2.0); weights are NOT in the wheel
    python benchmarks/peer_blast_ct.py run --rsna-series --ctich 10 --models model_1     # resumable, one scan at a time
    python benchmarks/peer_blast_ct.py report          # table + JSON from what has run so far

``run``: each scan is read with ichd's own reader (``read_ct``), written as NIfTI in HU with an L/P/S affine
(``ichd.io.nifti.write_nifti``) and segmented by BLAST-CT's ``run_inference`` from Python with the v1 ensemble
weights in ``../shared/models/blast-ct`` (its console command would try to download them). Denormal weights make
two convolutions ~100x slower on CPU: ``torch.set_flush_denormal(True)`` (see that folder's README). Each scan's
volumes (IPH, EAH = subdural + epidural, IVH, oedema, in ml) and minutes go to ``OUT/scans/<scan_id>.json``
(atomically); a scan already there is skipped, so a killed run resumes. Scans: the 20 rsna-series series
(``--rsna-series``) and a stratified CT-ICH subset (``--ctich K``: K patients with and K without hemorrhage, the
first K of each by a seeded shuffle).

``report``: the scan score is the hemorrhage volume IPH + EAH + IVH (oedema is not hemorrhage). Against the scans'
"any" label: AUC with a patient-bootstrap 95 % interval; sensitivity/specificity at a volume threshold chosen
on the *other* folds' scans (the default model's patient folds, ``benchmarks/results/cnn_multi_256/folds.csv``,
Youden's J) and applied to each fold's scans; the median minutes per scan for each torch thread count. ichd's
default-model OOF scan "any" (max over slices, ``benchmarks/results/cnn_multi_256/oof.csv``) on the same scans
stands beside it, with thresholds chosen the same way. When the scans span both sources, the same again per source
(CT-ICH's HU is rebuilt from JPG windows, rsna-series' is the scanner's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "blast_ct"
FOLDS = HERE / "results" / "cnn_multi_256" / "folds.csv"
OOF = HERE / "results" / "cnn_multi_256" / "oof.csv"
HEMORRHAGE_CLASSES = ("iph", "eah", "ivh")  # BLAST-CT's prediction.csv names them in lower case


def _models_dir() -> Path:
    from ichd.paths import data_dir

    return Path(os.environ.get("ICHD_BLAST_CT", data_dir().parent / "models" / "blast-ct"))


def _labels() -> pd.DataFrame:
    from ichd.data.labels import read_label_sources
    from ichd.paths import data_dir

    root = data_dir()
    return read_label_sources([root / "ct-ich" / "labels.csv", root / "rsna-series" / "labels.csv"])


def select_scans(rsna: bool, ctich: int, seed: int = 0) -> list[dict[str, Any]]:
    """The scans to run: ``scan_id``, ``patient_id``, ``source``, ``any`` (scan label) and the input path."""
    from ichd.paths import data_dir

    root = data_dir()
    labels = _labels()
    scans = labels.groupby("scan_id").agg(patient_id=("patient_id", "first"), source=("source", "first"),
                                           any=("any", "max")).reset_index()
    chosen: list[dict[str, Any]] = []
    if rsna:
        for row in scans[scans.source == "rsna-series"].itertuples():
            chosen.append({**row._asdict(), "path": str(root / "rsna-series" / "dicom" / row.scan_id)})
    if ctich:
        ct = scans[scans.source == "ct-ich"].sample(frac=1.0, random_state=seed)
        for positive in (1.0, 0.0):
            for row in ct[ct["any"] == positive].head(ctich).itertuples():
                number = int(str(row.scan_id).split("-")[-1])
                chosen.append({**row._asdict(), "path": str(root / "ct-ich" / "brain" / f"{number:03d}")})
    for c in chosen:
        c.pop("Index", None)
    return chosen


def _volumes(prediction_csv: Path) -> dict[str, float]:
    row = pd.read_csv(prediction_csv).iloc[0]
    return {str(k).replace("_predicted_volume_ml", "").lower(): float(v) for k, v in row.items()
            if str(k).endswith("_predicted_volume_ml")}


def hemorrhage_ml(volumes: dict[str, float]) -> float:
    """The scan score: predicted IPH + EAH + IVH volume in ml (oedema is not hemorrhage)."""
    return float(sum(volumes.get(c, 0.0) for c in HEMORRHAGE_CLASSES))


def run_scan(scan: dict[str, Any], models: list[Path], out: Path, threads: int) -> dict[str, Any]:
    """Segment one scan with BLAST-CT; returns (and writes) its record."""
    import blast_ct
    import torch
    from blast_ct.inference import run_inference

    from ichd.io import read_ct
    from ichd.io.nifti import write_nifti
    from ichd.utils.files import atomic_write_text

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    config = Path(blast_ct.__file__).parent / "data" / "config.json"
    t0 = time.perf_counter()
    (series,) = read_ct(scan["path"])
    with tempfile.TemporaryDirectory(prefix="ichd-blast-") as tmp:
        nifti = write_nifti(series, Path(tmp) / f"{scan['scan_id']}.nii.gz")
        csv = Path(tmp) / "test.csv"
        pd.DataFrame({"id": [scan["scan_id"]], "image": [str(nifti)]}).to_csv(csv, index=False)
        job = Path(tmp) / "job"
        t1 = time.perf_counter()
        run_inference(str(job), str(csv), str(config), "cpu", " ".join(str(m) for m in models),
                      write_prob_maps=False, do_localisation=False, save_atlas_and_brain_mask_native_space=False,
                      num_reg_runs=1, overwrite=True, native_space=True)
        seconds = time.perf_counter() - t1
        volumes = _volumes(job / "predictions" / "prediction.csv")
    record = {**{k: scan[k] for k in ("scan_id", "patient_id", "source", "any", "path")},
              "slices": int(series.hu.shape[0]), "spacing_mm": [float(s) for s in series.spacing_mm],
              "models": [m.name for m in models], "threads": threads, "volumes_ml": volumes,
              "hemorrhage_ml": hemorrhage_ml(volumes),
              "minutes_inference": seconds / 60, "minutes_total": (time.perf_counter() - t0) / 60,
              "load_average": os.getloadavg()[0]}
    atomic_write_text(out / "scans" / f"{scan['scan_id']}.json", json.dumps(record, indent=2))
    return record


def cmd_run(args: argparse.Namespace) -> int:
    models = [_models_dir() / f"{name}.pt" for name in args.models.split(",")]
    missing = [m for m in models if not m.is_file()]
    if missing:
        print(f"error: BLAST-CT weights not found: {', '.join(map(str, missing))} (set ICHD_BLAST_CT to the folder)",
              file=sys.stderr)
        return 2
    scans = select_scans(args.rsna_series, args.ctich, args.seed)
    (args.out / "scans").mkdir(parents=True, exist_ok=True)
    todo = [s for s in scans if not (args.out / "scans" / f"{s['scan_id']}.json").exists()]
    print(f"{len(scans)} scans selected, {len(scans) - len(todo)} done, {len(todo)} to run with "
          f"{[m.name for m in models]} on {args.threads} thread(s)", flush=True)
    for k, scan in enumerate(todo, 1):
        record = run_scan(scan, models, args.out, args.threads)
        print(f"[{k}/{len(todo)}] {scan['scan_id']} any={scan['any']:.0f}: hemorrhage {record['hemorrhage_ml']:.1f} ml, "
              f"{record['minutes_total']:.1f} min", flush=True)
    return 0


def _fold_thresholds(y: np.ndarray, score: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each scan's threshold: Youden's J on the scans of the other folds."""
    from ichd.evaluation.metrics import choose_threshold

    out = np.full(len(y), np.nan)
    for f in np.unique(folds):
        train = folds != f
        out[folds == f] = choose_threshold(y[train], score[train], method="youden")
    return out


def _summary(y: np.ndarray, score: np.ndarray, folds: np.ndarray, patients: np.ndarray) -> dict[str, Any]:
    from ichd.evaluation.bootstrap import bootstrap
    from ichd.evaluation.metrics import metrics_from_counts, roc_auc

    thresholds = _fold_thresholds(y, score, folds)
    called = score >= thresholds
    tp, fp = int(np.sum(called & (y == 1))), int(np.sum(called & (y == 0)))
    tn, fn = int(np.sum(~called & (y == 0))), int(np.sum(~called & (y == 1)))
    ops = metrics_from_counts(tp, fp, tn, fn)
    groups = pd.factorize(patients)[0]
    rows = [np.flatnonzero(groups == g) for g in range(groups.max() + 1)]

    def stat(draw: np.ndarray) -> dict[str, float]:
        idx = np.concatenate([rows[g] for g in draw])
        return {"auc": roc_auc(y[idx], score[idx])}

    ci = bootstrap(stat, len(rows), desc="patient bootstrap")["auc"]
    return {"auc": roc_auc(y, score), "auc_ci": [ci.low, ci.high], "sensitivity": ops["sensitivity"],
            "specificity": ops["specificity"], "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _part(df: pd.DataFrame) -> dict[str, Any]:
    """Scan count, positives and both systems' summaries on the scans of ``df``."""
    y, patients, fold = df["any"].to_numpy(int), df["patient_id"].to_numpy(), df["fold"].to_numpy()
    return {"scans": len(df), "positive": int(y.sum()),
            "blast_ct": _summary(y, df["hemorrhage_ml"].to_numpy(float), fold, patients),
            "ichd_default_oof": _summary(y, df["ichd_any"].to_numpy(float), fold, patients)}


def cmd_report(args: argparse.Namespace) -> int:
    records = [json.loads(p.read_text()) for p in sorted((args.out / "scans").glob("*.json"))]
    if not records:
        print(f"error: no scan results in {args.out / 'scans'}: run `python {Path(__file__).name} run` first",
              file=sys.stderr)
        return 2
    df = pd.DataFrame(records)
    df["hemorrhage_ml"] = [hemorrhage_ml(v) for v in df["volumes_ml"]]  # recomputed: the definition lives here
    folds = pd.read_csv(FOLDS).set_index("patient_id")["fold"]
    df["fold"] = df["patient_id"].map(folds)
    oof = pd.read_csv(OOF)
    ichd_scan = oof.groupby("scan_id")["any"].max()
    df["ichd_any"] = df["scan_id"].map(ichd_scan)
    result: dict[str, Any] = {
        **_part(df), "by_source": df.groupby("source").size().to_dict(),
        "scan_ids": df["scan_id"].tolist(), "models": sorted({m for ms in df["models"] for m in ms}),
        "minutes_per_scan_median": float(df["minutes_total"].median()),
        # the torch thread count changes the time ~2x: the median per thread count, with its number of scans
        "minutes_per_scan_median_by_threads": {
            str(t): {"median": float(g["minutes_total"].median()), "scans": len(g)}
            for t, g in df.groupby("threads")},
        # CT-ICH's HU is rebuilt from JPG windows, rsna-series' is the scanner's: only when the scans span both, and
        # only a source with both classes (an AUC needs them)
        "by_source_summary": {source: _part(g) for source, g in df.groupby("source")
                              if len(g) < len(df) and 0 < g["any"].sum() < len(g)},
    }
    (args.out / "report.json").write_text(json.dumps(result, indent=2))
    header = ("| system | scans (positive) | scan any-AUC [95 % CI] | sensitivity / specificity at the fold "
              "threshold | minutes per scan |")
    lines = [header, "|---|---|---|---|---|"]
    blast_name = "BLAST-CT v1 (" + "+".join(result["models"]) + "), IPH+EAH+IVH ml"
    blast_minutes = "; ".join(f"{v['median']:.1f} ({t} thread{'s' if t != '1' else ''}, {v['scans']} scans)"
                              for t, v in result["minutes_per_scan_median_by_threads"].items())
    groups = [("all", result)] + list(result["by_source_summary"].items())
    for label, part in groups:
        for name, key, minutes in ((blast_name, "blast_ct", blast_minutes),
                                   ("ichd default model (OOF, max slice p(any))", "ichd_default_oof", "see Predict")):
            r = part[key]
            scans = f"{part['scans']} ({part['positive']})" + ("" if label == "all" else f" {label}")
            lines.append(f"| {name} | {scans} | {r['auc']:.3f} "
                         f"[{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}] | {r['sensitivity']:.2f} / "
                         f"{r['specificity']:.2f} | {minutes if label == 'all' else ''} |")
    table = "\n".join(lines)
    (args.out / "report.md").write_text(table + "\n")
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment the selected scans (resumable)")
    run.add_argument("--rsna-series", action="store_true", help="the 20 rsna-series scans")
    run.add_argument("--ctich", type=int, default=0, help="K CT-ICH patients with and K without hemorrhage")
    run.add_argument("--models", default="model_1,model_3,model_6",
                     help="comma-separated ensemble members (files NAME.pt in ICHD_BLAST_CT)")
    run.add_argument("--threads", type=int, default=2, help="torch threads")
    run.add_argument("--seed", type=int, default=0, help="seed of the CT-ICH subset")
    report = sub.add_parser("report", help="AUC, operating point and time from the scans run so far")
    for p in (run, report):
        p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
