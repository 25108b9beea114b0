"""The out-of-domain checks (issue 21 item 4) on every shared scan: none of the real head CTs may be called not
assessable except CQ500-CT-0 (contrast), and none may get an out-of-domain warning.

Runs :func:`ichd.inference.guards.series_guards` (head masks, contrast, out-of-domain measures: body extent, z
coverage, brain noise SD, acquisition plane, BodyPartExamined; no model) on the scans of
``benchmarks/contrast_calibration.py`` (every CT-ICH patient, the 20 rsna-series series, rsna-samples, hu-slices,
both CQ500 series, the edge cases) and writes per scan the measures, the warnings raised, the not-assessable reason
and the guards' seconds to ``OUT/ood_measures.csv``, and the counts, the largest/smallest measure of the head CTs
against each limit and the wall time to ``OUT/summary.json``.

Usage (from the repository root)::

    NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 python benchmarks/ood_guards.py --out benchmarks/results/ood
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contrast_calibration import CONTRAST_SCANS, _inputs

from ichd.utils.runinfo import RunInfo


def main(argv: list[str] | None = None) -> int:
    from ichd.inference import guards as g
    from ichd.io.reader import read_ct
    from ichd.paths import data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ood"))
    ap.add_argument("--data", type=Path, default=None, help="shared data folder (default: $ICHD_DATA)")
    args = ap.parse_args(argv)
    data = args.data or data_dir()
    info = RunInfo.start("benchmarks/ood_guards.py", argv)
    rows: list[dict[str, Any]] = []
    for set_name, scan, path in _inputs(data):
        for series in read_ct(path, allow_secondary_capture=True):
            name = series.series_instance_uid if set_name == "ct-ich" else scan
            res = g.series_guards(series)
            d = res.domain
            assert d is not None
            rows.append({"set": set_name, "scan": name, "n_slices": series.n_slices,
                         "slice_mm": round(float(series.spacing_mm[0]), 3),
                         "extent_mm": d.to_dict()["extent_mm"], "max_extent_mm": d.to_dict()["max_extent_mm"],
                         "z_coverage_mm": d.to_dict()["z_coverage_mm"], "noise_sd_hu": d.to_dict()["noise_sd_hu"],
                         "plane": d.acquisition_plane, "body_part": d.body_part or "",
                         "ood_warnings": " ".join(d.flags),
                         "not_assessable": res.not_assessable(allow_contrast=False) or "",
                         "guard_s": round(res.seconds, 3)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "ood_measures.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    heads = [r for r in rows if r["scan"] not in CONTRAST_SCANS]

    def vals(key: str) -> list[float]:
        return [float(r[key]) for r in heads if r[key] is not None]

    multi = [r for r in heads if r["n_slices"] > 1]
    summary = {
        "scans": len(rows), "head_ct_scans": len(heads),
        "head_ct_with_ood_warning": [r["scan"] for r in heads if r["ood_warnings"]],
        "head_ct_not_assessable": [r["scan"] for r in heads if r["not_assessable"]],
        "not_assessable": {r["scan"]: r["not_assessable"] for r in rows if r["not_assessable"]},
        "largest_extent_mm": max(vals("extent_mm")), "limit_extent_mm": g.MAX_HEAD_EXTENT_MM,
        "largest_noise_sd_hu": max(vals("noise_sd_hu")), "limit_noise_sd_hu": g.MAX_NOISE_SD_HU,
        "smallest_z_coverage_mm_multi_slice": min((float(r["z_coverage_mm"]) for r in multi
                                                   if r["z_coverage_mm"] is not None), default=None),
        "limit_z_coverage_mm": g.MIN_Z_COVERAGE_MM,
        "per_set": {s: {"scans": sum(r["set"] == s for r in rows),
                        "noise_sd_hu_median": float(np.nanmedian([float(r["noise_sd_hu"]) if r["noise_sd_hu"]
                                                                  is not None else np.nan
                                                                  for r in rows if r["set"] == s])),
                        "guard_s_median": float(np.median([r["guard_s"] for r in rows if r["set"] == s]))}
                    for s in dict.fromkeys(r["set"] for r in rows)},
        **info.finish(),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
