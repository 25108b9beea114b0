"""Windowed-image inputs (issue 20 item 6): rsna-series as 8-bit brain-window PNGs vs its DICOM, out of fold.

Every rsna-series series is read from DICOM (``ichd.io.read_ct``, as ``ichd predict`` does), exported with
:func:`ichd.preprocessing.export.write_window_pngs` at each variant (window and size), and read back with the
window given, exactly as ``ichd predict --window L,W`` reads a PNG folder. Each series is predicted by the fold
model of a frozen-encoder run that held its patient out (``RUN/r0/fold{k}/sequence.pt``, written with
``--set save_fold_models=true``), from the DICOM and from every PNG variant; slice i of an export is slice i of
the DICOM series. The table gives the pooled out-of-fold slice and scan any-AUC of rsna-series per input.

    python benchmarks/windowed_png.py --run runs/frozen_default --out benchmarks/results/windowed_png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ichd.utils.runinfo import RunInfo

VARIANTS: dict[str, tuple[tuple[float, float], int | None]] = {
    "png_40_80_512": ((40, 80), 512),
    "png_40_80_224": ((40, 80), 224),
    "png_40_100_512": ((40, 100), 512),
    "png_40_100_224": ((40, 100), 224),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="frozen-encoder run folder with r0/fold{k}/sequence.pt and oof.csv")
    ap.add_argument("--out", default="benchmarks/results/windowed_png")
    ap.add_argument("--work", default="runs/windowed_png", help="where the PNG exports are written (not committed)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    args = ap.parse_args(argv)

    import pandas as pd

    from ichd.constants import LABELS
    from ichd.data.labels import read_labels
    from ichd.inference.predictor import Predictor
    from ichd.io.reader import read_ct
    from ichd.paths import data_dir
    from ichd.preprocessing.export import write_window_pngs
    from ichd.utils.progress import progress

    info = RunInfo.start("benchmarks/windowed_png.py", argv)
    run, out, work = Path(args.run), Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; variants: {', '.join(VARIANTS)}")
    oof = pd.read_csv(run / "oof.csv", dtype={"slice_id": str, "scan_id": str})
    scan_fold = oof.groupby("scan_id")["fold"].first().to_dict()
    labels = read_labels(data_dir() / "rsna-series" / "labels.csv")
    root = data_dir() / "rsna-series" / "dicom"
    models: dict[int, Predictor] = {}
    rows: list[dict[str, object]] = []
    for folder in progress(sorted(p for p in root.iterdir() if p.is_dir()), desc="series", unit="series"):
        series = read_ct(folder)[0]
        scan = series.series_instance_uid
        if scan not in scan_fold:
            raise SystemExit(f"series {scan} is not in {run / 'oof.csv'}: the run must cover rsna-series")
        fold = int(scan_fold[scan])
        if fold not in models:
            models[fold] = Predictor.load(run / "r0" / f"fold{fold}" / "sequence.pt")
        inputs = {"dicom": series}
        for name in variants:
            window, size = VARIANTS[name]
            dest = work / name / scan
            if not dest.is_dir() or not any(dest.iterdir()):
                write_window_pngs(series, dest, window, size=size)
            inputs[name] = read_ct(dest, window=window)[0]
        for name, s in inputs.items():
            if s.n_slices != series.n_slices:
                raise SystemExit(f"{name} of {scan} has {s.n_slices} slices, the DICOM {series.n_slices}")
            p = models[fold].predict_series(s).slice_probs
            for i, uid in enumerate(series.sop_instance_uids):
                rows.append({"input": name, "scan_id": scan, "slice_id": uid, "slice_index": i, "fold": fold,
                             **{lab: float(p[i, c]) for c, lab in enumerate(LABELS)}})
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "predictions.csv", index=False, float_format="%.6g")
    from ichd.evaluation.metrics import roc_auc

    summary = {}
    for name, part in frame.groupby("input", sort=False):
        part = part.set_index("slice_id")
        y = labels.reindex(part.index)["any"]
        known = y.notna().to_numpy()
        slice_auc = roc_auc(y, part["any"])   # slices with a missing label are left out
        scans = part.assign(y=y).groupby("scan_id").agg(p=("any", "max"), y=("y", "max"))
        scan_auc = roc_auc(scans["y"], scans["p"])
        summary[name] = {"slice_auc_any": round(slice_auc, 4), "scan_auc_any": round(scan_auc, 4),
                         "slices": int(known.sum()), "scans": len(scans)}
    dicom = summary["dicom"]["slice_auc_any"]
    for name, s in summary.items():
        s["slice_auc_minus_dicom"] = round(s["slice_auc_any"] - dicom, 4)
    meta = info.finish(run=str(run))
    (out / "summary.json").write_text(json.dumps({"meta": meta, "inputs": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
