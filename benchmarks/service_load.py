"""Load test of ``ichd serve`` on loopback: many concurrent clients, real series, the default model.

Usage::

    python benchmarks/service_load.py [--clients 50] [--requests 500] [--uploads 30] [--rate 2.0]
                                      [--series ID_d479d9cbaa,ID_5f8484c3e0,ID_0ab5820b2a] [--model default]
                                      [--threads 1] [--json benchmarks/results/service_load/result.json]

Starts a real ``ichd serve`` subprocess (temporary data folder, a random token, a free loopback port, one worker,
``--threads`` torch threads) and runs :func:`ichd.testing.service_load.run_load` against it: ``--clients`` HTTP
clients share ``--requests`` requests, ``--uploads`` of them uploads of the rsna-series series (``$ICHD_DATA``, in
turn), the rest reads of job status, studies, the study list, done studies' ``prediction.json`` and slice PNGs,
started at ``--rate`` requests/s (the run lasts about requests / rate seconds, then waits for the jobs). Bounded:
at most ``--max-seconds`` of load and ``--job-timeout`` of waiting.

Checks that nothing was lost (every upload accepted, its job done, listed) or mixed up (each result carries its own
upload's SeriesInstanceUID and exactly its SOPInstanceUIDs; all studies of one series have identical
probabilities); prints p50/p95/max latency per request kind, throughput, job queue wait and run time, errors, the
load average before and after, and writes it all as JSON. Exit code 1 when anything was lost, mixed up or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

#: Three ~30-slice series (JPEG-LS, RLE, JPEG-LS) without duplicate positions.
DEFAULT_SERIES = ("ID_d479d9cbaa", "ID_5f8484c3e0", "ID_0ab5820b2a")


def main(argv: list[str] | None = None) -> int:
    from ichd.paths import data_dir
    from ichd.testing.server import ServeProcess
    from ichd.testing.service_load import LoadPlan, load_upload, run_load

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--uploads", type=int, default=30)
    ap.add_argument("--rate", type=float, default=2.0, help="requests started per second (0: as fast as possible)")
    ap.add_argument("--series", default=",".join(DEFAULT_SERIES), help="rsna-series folders to upload, in turn")
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    ap.add_argument("--max-seconds", type=float, default=480.0)
    ap.add_argument("--job-timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/service_load/result.json"))
    args = ap.parse_args(argv)

    root = data_dir() / "rsna-series" / "dicom"
    uploads = [load_upload(root / name) for name in args.series.split(",") if name]
    plan = LoadPlan(clients=args.clients, requests=args.requests, uploads=args.uploads,
                    rate_rps=args.rate or None, max_seconds=args.max_seconds, job_timeout_s=args.job_timeout,
                    seed=args.seed)
    token = secrets.token_urlsafe(24)
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ichd-load-") as tmp:
        server = ServeProcess(Path(tmp) / "data", model=args.model, token=token, threads=args.threads,
                              log_path=Path(tmp) / "serve.log")
        with server:
            boot_s = time.monotonic() - t0
            report = run_load(server.url, token, uploads, plan)
    wall = time.monotonic() - t0
    load_after = os.getloadavg()
    doc = {
        "command": "python benchmarks/service_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "service_start_s": round(boot_s, 1),
        "total_wall_s": round(wall, 1),
        "model": args.model, "service_threads": args.threads,
        **report.to_dict(),
    }
    print(report.summary())
    print(f"service start {boot_s:.1f} s; total wall {wall:.1f} s; load average before "
          f"{', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
