"""End-to-end latency with a real Orthanc: from Orthanc's store request to ichd's SR stored back in Orthanc.

Usage::

    python benchmarks/pacs_latency.py [SERIES_FOLDER ...] [--model default] [--idle-timeout 2] [--json out.json]

Default series: the 34-slice JPEG-LS rsna-series ``ID_7518324893`` and the 238-slice JPEG-lossless CQ500 series in
``$ICHD_DATA``. For each: a fresh Orthanc on loopback (the configuration of docs/pacs.md, ``ichd.testing.orthanc``)
and a fresh ``ichd listen --forward`` back to it (the model loaded before the clock starts), the series stored into
Orthanc (not timed), then ``POST /modalities/ichd/store`` (synchronous) and the clock runs until the SR is in
Orthanc's study. Reported apart: the series-completion wait (from the end of Orthanc's send to the job being
queued: ``--idle-timeout`` plus up to a quarter of it for the completion loop) and the latency without it, split
into send, queue, analysis and forward. Times of the job come from ichd's job store (same clock).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ichd.testing.orthanc import find_orthanc, orthanc_config, pacs_ready_copy, running_orthanc
from ichd.testing.server import free_port, wait_until


def _job(data: Path) -> dict[str, Any] | None:
    db = data / "ichd.sqlite"
    if not db.is_file():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT created_at, started_at, finished_at, status FROM jobs").fetchone()
        return dict(row) if row else None
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


def measure(folder: Path, *, model: str, idle_timeout: float, root: Path) -> dict[str, Any]:
    exe = find_orthanc()
    if exe is None:
        raise SystemExit("Orthanc is not installed (apt-get install orthanc)")
    files = pacs_ready_copy(folder, root / "series")
    http_port, dicom_port, ichd_port = free_port(), free_port(), free_port()
    config = orthanc_config(root, http_port=http_port, dicom_port=dicom_port, ichd_port=ichd_port)
    data = root / "ichd-data"
    log_path = root / "listener.log"
    with running_orthanc(exe, config, root) as pacs, open(log_path, "w") as log:
        listener = subprocess.Popen(
            [sys.executable, "-m", "ichd", "listen", "--aet", "ICHD", "--port", str(ichd_port), "--data-dir",
             str(data), "--idle-timeout", str(idle_timeout), "--forward", f"ORTHANC@127.0.0.1:{dicom_port}",
             "--allow-aet", "ORTHANC", "--model", model],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        try:
            def ready() -> bool:  # printed once the model is loaded
                if listener.poll() is not None:
                    raise SystemExit(log_path.read_text())
                return "ichd listen: DICOM node" in log_path.read_text()

            wait_until("ichd listen to load its model", ready, timeout=300, every=0.5)
            series_id = study_id = ""
            for p in files:
                stored = pacs.post("/instances", p.read_bytes())
                series_id, study_id = stored["ParentSeries"], stored["ParentStudy"]
            t0 = time.time()
            sent = pacs.post("/modalities/ichd/store", {"Resources": [series_id], "Synchronous": True})
            t_sent = time.time()

            def sr() -> bool:
                return any(s["MainDicomTags"].get("Modality") == "SR"
                           for s in pacs.get(f"/studies/{study_id}/series?expand"))

            wait_until("the SR in Orthanc", sr, timeout=1800, every=0.1)
            t_sr = time.time()
            job = wait_until("the job record", lambda: _job(data), timeout=30)
        finally:
            listener.terminate()
            listener.wait(timeout=60)
    wait = job["created_at"] - t_sent
    return {
        "series": str(folder), "slices": len(files), "stored_by_orthanc": sent["InstancesCount"],
        "failed": sent["FailedInstancesCount"], "job_status": job["status"], "idle_timeout_s": idle_timeout,
        "completion_wait_s": wait, "latency_without_wait_s": (t_sr - t0) - wait, "latency_total_s": t_sr - t0,
        "send_s": t_sent - t0, "queued_to_started_s": job["started_at"] - job["created_at"],
        "analysis_s": job["finished_at"] - job["started_at"], "forward_s": t_sr - job["finished_at"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="series folders (default: the two named above)")
    parser.add_argument("--model", default="default", help="model for ichd listen (default: default)")
    parser.add_argument("--idle-timeout", type=float, default=2.0, help="ichd listen --idle-timeout (s)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)

    from ichd.paths import data_dir

    folders = args.folders or [data_dir() / "rsna-series" / "dicom" / "ID_7518324893",
                               data_dir() / "cq500" / "CQ500-CT-0" / "series-6_4cc-sec-150cc-D3D-on"]
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  host: {os.uname().nodename}  cpus: {os.cpu_count()}  "
          f"load: {os.getloadavg()[0]:.2f}")
    results = []
    for folder in folders:
        with tempfile.TemporaryDirectory(prefix="ichd-pacs-") as tmp:
            r = measure(folder, model=args.model, idle_timeout=args.idle_timeout, root=Path(tmp))
        r["load_after"] = os.getloadavg()[0]
        results.append(r)
        print(f"{Path(r['series']).name}: {r['slices']} slices, job {r['job_status']}: "
              f"{r['latency_without_wait_s']:.1f} s without the completion wait "
              f"(send {r['send_s']:.1f}, queue {r['queued_to_started_s']:.1f}, analysis {r['analysis_s']:.1f}, "
              f"forward {r['forward_s']:.1f}); completion wait {r['completion_wait_s']:.1f} s "
              f"(--idle-timeout {r['idle_timeout_s']:g}); total {r['latency_total_s']:.1f} s; "
              f"load after {r['load_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
