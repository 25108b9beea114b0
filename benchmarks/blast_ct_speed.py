"""Minutes per scan of the BLAST-CT second reader (``ichd.inference.second_reader``), issue 22 item 2.

Usage::

    python benchmarks/blast_ct_speed.py --scan ID_a61d046d72 --models model_1 --threads 2 --block 90
    python benchmarks/blast_ct_speed.py --summary          # the table of every run so far

Each run reads one rsna-series series with ichd (``read_ct``), segments it with :class:`BlastCT` and writes
``results/blast_ct_speed/<scan>-<models>-b<block>-t<threads>.json``: wall time of the segmentation (and of the
read), its CPU time, the machine's load average before and after (the machine is shared: the load is part of the result), the
volumes, the block counts, and - for ``model_1`` - the volumes BLAST-CT's own ``run_inference`` gave on the same
scan (``results/blast_ct_model1/scans/<scan>.json``, from ``peer_blast_ct.py``) and whether they are equal to
its 0.01 ml rounding. ``--block 30`` is BLAST-CT's own tiling (30^3 output voxels per 110^3 input patch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "blast_ct_speed"
REFERENCE = HERE / "results" / "blast_ct_model1" / "scans"


def run(args: argparse.Namespace) -> int:
    from ichd.inference.second_reader import BlastCT, parse_models
    from ichd.io import read_ct
    from ichd.paths import data_dir
    from ichd.utils.files import atomic_write_text

    models = parse_models(args.models)
    load_before = os.getloadavg()
    t = time.perf_counter()
    (series,) = read_ct(data_dir() / "rsna-series" / "dicom" / args.scan)
    read_s = time.perf_counter() - t
    reader = BlastCT(args.models_dir, models, threads=args.threads, block=args.block,
                     channels_last=not args.no_channels_last)
    cpu0 = time.process_time()
    result = reader.segment(series)
    cpu_s = time.process_time() - cpu0
    load_after = os.getloadavg()
    record = {
        "scan_id": args.scan, "slices": series.n_slices, "spacing_mm": [float(s) for s in series.spacing_mm],
        "models": list(models), "threads": args.threads, "block": args.block,
        "channels_last": not args.no_channels_last,
        "minutes_segment": result.seconds / 60, "seconds_read": read_s,
        # CPU time of the process during the segmentation: on a shared machine the wall time depends on the other
        # jobs; CPU minutes / threads is what the wall time would be with the threads to itself
        "cpu_minutes_segment": cpu_s / 60,
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "volumes_ml": {k: round(v, 2) for k, v in result.volumes_ml.items()},
        "hemorrhage_ml": round(result.hemorrhage_ml, 2), "settings": result.settings,
    }
    ref = REFERENCE / f"{args.scan}.json"
    if models == ("model_1",) and ref.is_file():
        reference = json.loads(ref.read_text())
        record["reference_volumes_ml"] = reference["volumes_ml"]
        record["reference_minutes"] = reference["minutes_total"]
        record["reference_threads"] = reference["threads"]
        record["equal_to_reference"] = all(abs(record["volumes_ml"][k] - reference["volumes_ml"][k]) < 0.005
                                           for k in reference["volumes_ml"])
    name = (f"{args.scan}-{'+'.join(models)}-b{args.block}-t{args.threads}"
            f"{'-nocl' if args.no_channels_last else ''}.json")
    atomic_write_text(OUT / name, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


def summary() -> int:
    rows = [r for r in (json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))) if "scan_id" in r]
    print("| scan | slices | models | block | threads | wall minutes | CPU minutes | load before/after (1 min) | "
          "equal to BLAST-CT's run_inference | date |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eq = r.get("equal_to_reference")
        print(f"| {r['scan_id']} | {r['slices']} | {'+'.join(r['models'])} | {r['block']} | {r['threads']} | "
              f"{r['minutes_segment']:.2f} | {r.get('cpu_minutes_segment', float('nan')):.2f} | "
              f"{r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f} | "
              f"{'—' if eq is None else ('yes' if eq else 'no')} | {r['date']} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", help="rsna-series scan id (folder under rsna-series/dicom)")
    p.add_argument("--models", default="model_1", help="comma-separated weight files (default model_1)")
    p.add_argument("--models-dir", type=Path, default=None, help="weights folder (default: ICHD_BLAST_CT or "
                                                                  "<ICHD_DATA>/../models/blast-ct)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block", type=int, default=90, help="output block edge, a multiple of 30 (30 = BLAST-CT's)")
    p.add_argument("--no-channels-last", action="store_true", help="torch's default memory layout (slower)")
    p.add_argument("--summary", action="store_true", help="print the table of the runs so far")
    args = p.parse_args(argv)
    if args.summary:
        return summary()
    if not args.scan:
        p.error("--scan is required")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
