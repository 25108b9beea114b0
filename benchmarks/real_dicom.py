"""A bundled model on the real scanner DICOM the project has, at the model's shipped thresholds.

* ``rsna-samples``: 10 single RSNA 2019 slices (7 with hemorrhage), each read as its own one-slice scan
  (``--independent``), called at the model's slice-level threshold when the bundle has one (as ``ichd predict
  --independent`` does); target: at least 6 of the 7 bleeds called positive, at most 1 of 3 negatives;
* ``cq500/CQ500-CT-0``: one CQ500 series whose readers' majority says *no* ICH (probably contrast-enhanced); target:
  called negative;
* ``hu-slices``: the 26 real-HU CT-ICH slices with hemorrhage masks (Secondary Captures). Their patients are in the
  training data of any model fitted on all CT-ICH patients, so this is an in-sample check only.

None of these images is in the rsna-series or CT-ICH training tables (rsna-samples shares no image, patient or
study with rsna-series, see its README). Usage (from the repository root)::

    python benchmarks/real_dicom.py --model default --out benchmarks/results/real_dicom

Writes ``OUT/summary.json`` and ``OUT/summary.md`` (per-image table) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ichd.utils.runinfo import RunInfo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="bundled model name, bundle folder or checkpoint")
    ap.add_argument("--out", default="benchmarks/results/real_dicom")
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    from ichd.constants import LABELS
    from ichd.inference.predictor import Predictor
    from ichd.io import read_ct
    from ichd.paths import data_dir

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = RunInfo.start("benchmarks/real_dicom.py", argv)
    data = data_dir()
    predictor = Predictor.load(args.model)
    from ichd.inference.run import operating_thresholds

    thr = dict(predictor.thresholds)
    # single slices (--independent) are called at the model's slice-level operating point when it has one,
    # exactly as `ichd predict --independent` does
    slice_thr, slice_note = operating_thresholds(predictor, independent=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict = {"model": {"name": predictor.identity.name, "version": predictor.identity.version},
                 "thresholds": thr, "single_slice_thresholds": slice_thr,
                 "single_slice_operating_point": slice_note.code if slice_note is not None else None}

    labels = pd.read_csv(data / "rsna-samples" / "labels.csv", dtype=str).set_index("sop_instance_uid")
    rows = []
    for series in read_ct(data / "rsna-samples", independent=True):
        pred = predictor.predict_series(series)
        sop = series.sop_instance_uids[0]
        lab = labels.loc[sop]
        row = {"image": sop, "file": lab["file"], "label_any": int(lab["any"]),
               "subtypes": ",".join(c for c in LABELS[1:] if lab[c] == "1") or "-",
               "p_any": float(pred.scan_probs[0]), "called_positive": bool(pred.scan_probs[0] >= slice_thr["any"])}
        rows.append(row)
    rows.sort(key=lambda r: (-r["label_any"], r["image"]))
    bleeds = [r for r in rows if r["label_any"] == 1]
    negatives = [r for r in rows if r["label_any"] == 0]
    doc["rsna_samples"] = {"images": rows, "bleeds": len(bleeds),
                           "bleeds_called_positive": sum(r["called_positive"] for r in bleeds),
                           "negatives": len(negatives),
                           "negatives_called_positive": sum(r["called_positive"] for r in negatives)}

    cq = read_ct(data / "cq500" / "CQ500-CT-0")[0]
    pred = predictor.predict_series(cq)
    doc["cq500_ct0"] = {"slices": cq.n_slices, "p_any": float(pred.scan_probs[0]),
                        "called_positive": bool(pred.scan_probs[0] >= thr["any"]),
                        "slices_above_threshold": int((pred.slice_probs[:, 0] >= thr["any"]).sum()),
                        "scan_call": pred.scan_call,  # what ichd predict reports (input guards applied)
                        "warnings": sorted({w.code for w in pred.warnings}),
                        "readers": "majority no ICH (1 of 3 readers marked SAH); probably contrast-enhanced"}

    hu = read_ct(data / "hu-slices" / "dicom", independent=True, allow_secondary_capture=True)
    p_hu = np.array([float(predictor.predict_series(s).scan_probs[0]) for s in hu])
    doc["hu_slices"] = {"slices": len(p_hu), "called_positive": int((p_hu >= slice_thr["any"]).sum()),
                        "note": "CT-ICH patients: in the training data of a model fitted on all CT-ICH patients"}
    doc["meta"] = info.finish(threads=args.threads)
    lines = [(f"Model {doc['model']['name']} {doc['model']['version']}; shipped 'any' threshold {thr['any']:.4f} "
              f"(scans), {slice_thr['any']:.4f} for single slices ({doc['single_slice_operating_point']})."),
             "", "| image | labels | p(any) | called |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {'any: ' + r['subtypes'] if r['label_any'] else 'none'} | "
                     f"{r['p_any']:.3f} | {'positive' if r['called_positive'] else 'negative'} |")
    s = doc["rsna_samples"]
    c = doc["cq500_ct0"]
    lines += ["", (f"rsna-samples: **{s['bleeds_called_positive']} of {s['bleeds']} bleeds** called positive; "
                   f"{s['negatives_called_positive']} of {s['negatives']} negatives called positive."),
              (f"CQ500-CT-0 ({c['slices']} slices): p(any) = {c['p_any']:.3f} ({c['slices_above_threshold']} slices "
               f"above the threshold) → reported call **{c['scan_call']}** (warnings: "
               f"{', '.join(c['warnings']) or 'none'})."),
              (f"hu-slices (in-sample): {doc['hu_slices']['called_positive']} of {doc['hu_slices']['slices']} "
               "called positive.")]
    md = "\n".join(lines)
    (out / "summary.json").write_text(json.dumps(doc, indent=2))
    (out / "summary.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
