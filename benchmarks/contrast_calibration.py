"""Calibrate the contrast check and count the slices without a head, on every shared set.

For every scan under ``$ICHD_DATA`` (default ``../shared/data``) read with :func:`ichd.io.read_ct`: every CT-ICH
patient (HU rebuilt from the brain/bone JPG windows), the 20 rsna-series series, the 10 rsna-samples slices, the
26 hu-slices, both CQ500 series (CQ500-CT-0: 150 cc contrast, must be caught) and the edge cases, it writes

* the contrast measure (:func:`ichd.preprocessing.contrast.measure_contrast`: enhanced slice fraction, median
  enhanced area, 130-700 HU fraction, 99.5th HU percentile, whether it is flagged; single slices never flag) and
* the head-mask result (:func:`ichd.preprocessing.head_mask.head_mask`: slices without a head, their indices)

to ``OUT/contrast_measures.csv`` and ``OUT/summary.json`` (margin between the largest non-contrast value and the
threshold, counts, wall time). No model is run.

Usage (from the repository root; about 4 minutes on the 2-core VM)::

    NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 python benchmarks/contrast_calibration.py \\
        --out benchmarks/results/contrast
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Scans known to be contrast-enhanced (the rest of the shared data is non-contrast CT).
CONTRAST_SCANS = {"CQ500-CT-0"}


def _inputs(data: Path) -> Iterator[tuple[str, str, Path]]:
    """(set, scan name, path) of every scan to measure."""
    yield "ct-ich", "ct-ich", data / "ct-ich"  # one read gives every patient as its own series
    for p in sorted((data / "rsna-series" / "dicom").iterdir()):
        yield "rsna-series", p.name, p
    for p in sorted((data / "rsna-samples").glob("*.dcm")):
        yield "rsna-samples", p.stem, p
    for p in sorted((data / "hu-slices" / "dicom").glob("*.dcm")):
        yield "hu-slices", p.stem, p
    for p in sorted((data / "cq500").glob("CQ500-CT-*")):
        yield "cq500", p.name, p
    yield "edge-cases", "ge-tilt", data / "edge-cases" / "ge-tilt"
    for p in sorted((data / "edge-cases" / "pydicom-693").glob("*.dcm")):
        yield "edge-cases", p.stem, p


def main(argv: list[str] | None = None) -> int:
    from ichd.io.reader import read_ct
    from ichd.paths import data_dir
    from ichd.preprocessing.contrast import (
        ENHANCED_SLICE_FRACTION_THRESHOLD,
        MIN_CRANIAL_SLICES,
        measure_contrast,
    )
    from ichd.preprocessing.head_mask import has_head, head_mask

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/contrast"))
    ap.add_argument("--data", type=Path, default=None, help="shared data folder (default: $ICHD_DATA)")
    args = ap.parse_args(argv)
    data = args.data or data_dir()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for set_name, scan, path in _inputs(data):
        for series in read_ct(path, allow_secondary_capture=True):
            name = series.series_instance_uid if set_name == "ct-ich" else scan
            spacing = series.spacing_mm[1:]
            masks = head_mask(series.hu, spacing)
            m = measure_contrast(series.hu, spacing, masks)
            headless = [int(i) for i in np.flatnonzero(~has_head(masks))]
            rows.append({"set": set_name, "scan": name, "n_slices": series.n_slices,
                         "slice_mm": round(float(series.spacing_mm[0]), 3),
                         "contrast_known": name in CONTRAST_SCANS, **m.to_dict(),
                         "n_headless": len(headless), "headless_slices": " ".join(map(str, headless))})
            print(f"{set_name:12s} {name:28s} frac={m.enhanced_slice_fraction:.3f} p99.5={m.p995_hu:7.1f} "
                  f"flag={m.flagged} headless={len(headless)}/{series.n_slices}", file=sys.stderr)
    wall = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "contrast_measures.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plain = [r for r in rows if not r["contrast_known"]]
    known = [r for r in rows if r["contrast_known"]]
    by_set: dict[str, dict[str, int]] = {}
    for r in rows:
        s = by_set.setdefault(r["set"], {"scans": 0, "flagged": 0, "slices": 0, "headless": 0})
        s["scans"] += 1
        s["flagged"] += int(r["flagged"])
        s["slices"] += r["n_slices"]
        s["headless"] += r["n_headless"]
    summary = {
        "threshold": ENHANCED_SLICE_FRACTION_THRESHOLD,
        "non_contrast_scans": len(plain),
        "non_contrast_flagged": sum(int(r["flagged"]) for r in plain),
        "non_contrast_max_fraction": max(r["enhanced_slice_fraction"] for r in plain),
        "non_contrast_max_fraction_3plus_slices": max(r["enhanced_slice_fraction"] for r in plain
                                                      if r["n_slices_measured"] >= MIN_CRANIAL_SLICES),
        "non_contrast_top5_3plus_slices": sorted(
            ((r["enhanced_slice_fraction"], r["scan"]) for r in plain if r["n_slices_measured"] >= MIN_CRANIAL_SLICES),
            reverse=True)[:5],
        "contrast_scans": {r["scan"]: {"enhanced_slice_fraction": r["enhanced_slice_fraction"], "flagged": r["flagged"]}
                           for r in known},
        "by_set": by_set,
        "command": "python benchmarks/contrast_calibration.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "wall_s": round(wall, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
