"""The input guards end to end with the shipped default model: headless slices, contrast, overlays, provenance.

Runs :class:`ichd.inference.predictor.Predictor` (``--model``, default the ``default`` bundle; CPU, no TTA) on the 20 rsna-series series, on
CQ500-CT-0 (150 cc contrast) and on the CT-ICH patients given by ``--ctich`` (default: 5 of them), and records per
series: the slices without a head (``skipped_slices``) and their largest P(any) (must be 0), the scan call
(CQ500-CT-0 must be ``not_assessable``), whether the result says the input is training data, and for every
flagged slice (Grad-CAM on, as in the HTML report and the DICOM Secondary Captures) the number of overlay pixels
with heat outside the head mask (must be 0), and what the CNN itself gave the skipped slices. Writes
``OUT/guards_predict.json`` (``OUT/guards_predict_<model>.json`` for another ``--model``).

Usage (from the repository root; about 6 minutes on the 2-core VM)::

    NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 python benchmarks/guards_predict.py --out benchmarks/results/guards
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _overlay_outside(ev: Any) -> int:
    """Overlay pixels where heat is drawn (an RGB channel more than 1 grey level from the plain slice: rounding
    differs by 1 between the float32 and float64 paths) outside the slice's head mask."""
    from ichd.explain.overlay import BRAIN_WINDOW, display_image, overlay
    from ichd.preprocessing.head_mask import head_mask

    if ev.cam is None:
        return 0
    rgb = overlay(ev.image_hu, ev.cam, window=BRAIN_WINDOW, pixel_spacing=ev.pixel_spacing)
    gray = np.clip(np.round(display_image(ev.image_hu, BRAIN_WINDOW) * 255.0), 0, 255).astype(np.uint8)
    changed = (np.abs(rgb.astype(np.int16) - gray[..., None].astype(np.int16)) > 1).any(axis=-1)
    return int((changed & ~head_mask(ev.image_hu, ev.pixel_spacing)).sum())


def main(argv: list[str] | None = None) -> int:
    import torch

    from ichd.inference.predictor import Predictor
    from ichd.io.reader import read_ct
    from ichd.paths import data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/guards"))
    ap.add_argument("--ctich", default="049,071,080,100,123", help="CT-ICH patients (comma-separated)")
    ap.add_argument("--model", default="default", help="bundled model name or bundle folder (default: default)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = data_dir()
    t0 = time.perf_counter()
    predictor = Predictor.load(args.model, device="cpu")
    inputs = [("rsna-series", p) for p in sorted((data / "rsna-series" / "dicom").iterdir())]
    inputs.append(("cq500", data / "cq500" / "CQ500-CT-0"))
    inputs += [("ct-ich", data / "ct-ich" / "brain" / f"{int(p):03d}") for p in args.ctich.split(",") if p.strip()]
    rows = []
    for set_name, path in inputs:
        series = read_ct(path)[0]
        t = time.perf_counter()
        pred = predictor.predict_series(series)
        evidence = predictor.explain(series, pred, at_least_one=True)
        skipped = [s["index"] for s in pred.skipped_slices]
        any_j = list(pred.labels).index("any")
        # what the model itself gives the skipped slices (before the guard sets them to 0)
        raw = (predictor.predict_series(series, input_guards=False).slice_probs[skipped, any_j] if skipped
               else np.zeros(0))
        row = {"set": set_name, "scan": path.name, "n_slices": series.n_slices, "skipped": skipped,
               "max_p_any_skipped": float(pred.slice_probs[skipped, any_j].max()) if skipped else None,
               "cnn_p_any_skipped": [round(float(v), 4) for v in raw],
               "scan_p_any": round(float(pred.scan_probs[any_j]), 4), "scan_call": pred.scan_call,
               "not_assessable": pred.not_assessable,
               "contrast": (pred.guards or {}).get("contrast"),
               "in_training_data": (pred.provenance or {}).get("in_training_data"),
               "flagged": [e.index for e in evidence],
               "overlay_pixels_outside_head": sum(_overlay_outside(e) for e in evidence),
               "seconds": round(time.perf_counter() - t, 1), "guard_seconds": round(pred.timing_s["guards"], 2)}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("scan", "skipped", "scan_call", "in_training_data",
                                              "overlay_pixels_outside_head")}), file=sys.stderr)
    rsna = [r for r in rows if r["set"] == "rsna-series"]
    summary = {
        "model": {"name": predictor.identity.name, "version": predictor.identity.version},
        "rsna_series_headless_slices": sum(len(r["skipped"]) for r in rsna),
        "rsna_series_headless_max_p_any": max((r["max_p_any_skipped"] or 0.0) for r in rsna),
        "rsna_series_headless_cnn_p_any_before_guard": {
            "max": max((max(r["cnn_p_any_skipped"], default=0.0)) for r in rsna),
            "mean": round(float(np.mean([v for r in rsna for v in r["cnn_p_any_skipped"]] or [0.0])), 4)},
        "rsna_series_in_training_data": sum(bool(r["in_training_data"]) for r in rsna),
        "not_assessable": [r["scan"] for r in rows if r["scan_call"] == "not_assessable"],
        "overlay_pixels_outside_head": sum(r["overlay_pixels_outside_head"] for r in rows),
        "flagged_slices_checked": sum(len(r["flagged"]) for r in rows),
        "command": "python benchmarks/guards_predict.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread",
        "wall_s": round(time.perf_counter() - t0, 1),
        "series": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "guards_predict.json" if args.model == "default" else f"guards_predict_{Path(args.model).name}.json"
    (args.out / name).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "series"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
