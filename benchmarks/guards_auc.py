""""No new false negatives" (issue 21): out-of-fold any-AUC with the input guards on and off.

Every series of the chosen sets is predicted by the fold model of a frozen-encoder run that held its patient out
(``RUN/r0/fold{k}/sequence.pt``, fold from ``RUN/r0/oof.csv``), once as ``ichd predict`` does (guards on:
headless slices get P = 0, the sequence stage sees the head slices only) and once with
``Predictor.predict_series(input_guards=False)`` (every slice scored, as before the guards). The AUCs are pooled
over the set's slices (slice AUC: ``slice_probs`` against the slice labels) and scans (scan AUC: the reported scan
probability ``scan_probs`` against "any slice positive"). A not-assessable call does not change probabilities, so
the AUCs measure the headless-slice rule (and, where slabs apply, the slab reformat); the scans called not
assessable are counted separately.

    python benchmarks/guards_auc.py --run runs/frozen_default --sets rsna-series,ct-ich \\
        --out benchmarks/results/guards_auc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _inputs(data: Path, name: str) -> list[Path]:
    if name == "rsna-series":
        return sorted(p for p in (data / "rsna-series" / "dicom").iterdir() if p.is_dir())
    if name == "ct-ich":
        return sorted(p for p in (data / "ct-ich" / "brain").iterdir() if p.is_dir())
    raise SystemExit(f"unknown set {name!r} (rsna-series, ct-ich)")


def _labels(data: Path, name: str):
    from ichd.data.labels import read_labels

    return read_labels(data / name / "labels.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/frozen_default", help="frozen-encoder run with r0/fold{k}/ and r0/oof.csv")
    ap.add_argument("--sets", default="rsna-series", help="comma-separated: rsna-series, ct-ich")
    ap.add_argument("--out", default="benchmarks/results/guards_auc")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch
    from sklearn.metrics import roc_auc_score

    from ichd.constants import LABELS
    from ichd.inference.predictor import Predictor
    from ichd.io.reader import read_ct
    from ichd.paths import data_dir
    from ichd.utils.progress import progress

    torch.set_num_threads(1)
    t0 = time.time()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    oof = pd.read_csv(run / "r0" / "oof.csv", dtype={"slice_id": str, "scan_id": str})
    scan_fold = oof.groupby("scan_id")["fold"].first().to_dict()
    data = data_dir()
    models: dict[int, Predictor] = {}
    any_j = LABELS.index("any")
    slice_rows: list[dict[str, object]] = []
    scan_rows: list[dict[str, object]] = []
    for set_name in [s for s in args.sets.split(",") if s]:
        for folder in progress(_inputs(data, set_name), desc=set_name, unit="series"):
            series = read_ct(folder)[0]
            scan = series.series_instance_uid
            if scan not in scan_fold:
                raise SystemExit(f"series {scan} is not in {run / 'r0' / 'oof.csv'}: the run must cover {set_name}")
            fold = int(scan_fold[scan])
            if fold not in models:
                models[fold] = Predictor.load(run / "r0" / f"fold{fold}" / "sequence.pt", device="cpu")
            for mode, on in (("guards_on", True), ("guards_off", False)):
                pred = models[fold].predict_series(series, input_guards=on)
                scan_rows.append({"set": set_name, "mode": mode, "scan_id": scan, "fold": fold,
                                  "p_any": float(pred.scan_probs[any_j]), "scan_call": pred.scan_call,
                                  "not_assessable": pred.not_assessable or "",
                                  "n_skipped": len(pred.skipped_slices),
                                  "guard_s": round(float(pred.timing_s.get("guards", 0.0)), 3)})
                for i, uid in enumerate(series.sop_instance_uids):
                    slice_rows.append({"set": set_name, "mode": mode, "scan_id": scan, "slice_id": uid,
                                       "slice_index": i, "fold": fold, "p_any": float(pred.slice_probs[i, any_j])})
    slices, scans = pd.DataFrame(slice_rows), pd.DataFrame(scan_rows)
    slices.to_csv(out / "slice_predictions.csv", index=False, float_format="%.6g")
    scans.to_csv(out / "scan_predictions.csv", index=False, float_format="%.6g")
    summary: dict[str, object] = {}
    for set_name, part in slices.groupby("set", sort=False):
        labels = _labels(data, str(set_name))
        res: dict[str, object] = {}
        for mode, m in part.groupby("mode", sort=False):
            y = labels.reindex(m["slice_id"])["any"].to_numpy()
            known = ~np.isnan(y)
            scan_y = pd.Series(y, index=m["scan_id"].to_numpy()).groupby(level=0).max()
            sc = scans[(scans["set"] == set_name) & (scans["mode"] == mode)].set_index("scan_id")
            sy = scan_y.reindex(sc.index)
            res[str(mode)] = {
                "slice_auc_any": round(float(roc_auc_score(y[known].astype(int), m["p_any"].to_numpy()[known])), 4),
                "scan_auc_any": round(float(roc_auc_score(sy.astype(int), sc["p_any"])), 4),
                "slices": int(known.sum()), "scans": len(sc), "positive_scans": int(sy.sum()),
                "skipped_slices": int(sc["n_skipped"].sum()),
                "not_assessable": sorted(sc.index[sc["scan_call"] == "not_assessable"].tolist())}
        on, off = res["guards_on"], res["guards_off"]
        res["slice_auc_on_minus_off"] = round(on["slice_auc_any"] - off["slice_auc_any"], 4)  # type: ignore[index]
        res["scan_auc_on_minus_off"] = round(on["scan_auc_any"] - off["scan_auc_any"], 4)  # type: ignore[index]
        summary[str(set_name)] = res
    meta = {"command": "python benchmarks/guards_auc.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "run": str(run), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": round(time.time() - t0, 1),
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread",
            "load_avg_end": [round(v, 2) for v in os.getloadavg()]}
    (out / "summary.json").write_text(json.dumps({"meta": meta, "sets": summary}, indent=2) + "\n")
    print(json.dumps({"meta": meta, "sets": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
