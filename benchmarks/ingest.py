"""Ingest throughput: ``ichd.io.read_ct`` against SimpleITK and a plain pydicom decode loop, in one run.

Usage::

    python benchmarks/ingest.py [SERIES_FOLDER] [--repeats 5] [--workers 2] [--json out.json]
    python benchmarks/ingest.py --vs-sitk [--repeats 5] [--json out.json]   # ichd vs SimpleITK, both series

``--vs-sitk``: only ``sitk`` and ``ichd``, on the 34-slice JPEG-LS rsna-series ``ID_7518324893`` and the 238-slice
CQ500 series, reported as the median of the paired ratios (the target of issue 23: ichd at least 1.2x as fast),
without the memory monitor (``--no-memory``: it reads ``/proc/PID/smaps`` every 10 ms, which slows the watched
process, the more the more it allocates).

Default folder: the 238-slice JPEG-lossless CQ500 series in ``$ICHD_DATA`` (``../shared/data``). Every measurement
runs in a fresh child process (so peak memory is per measurement), modes interleaved, after one warm-up pass that
puts the files in the page cache. Modes:

* ``plain``: ``for f in files: ds = pydicom.dcmread(f); ds.pixel_array * slope + intercept`` (float32), stacked —
  what a script without ichd does, single-threaded;
* ``sitk``: SimpleITK's ``ImageSeriesReader`` (GDCM) on the folder's series file names, then
  ``GetArrayFromImage`` — the tool users pick instead (it applies the rescale, but none of ichd's checks: no
  corrupted-intercept fix, padding, tilt, gap or duplicate handling, no warnings); ITK's default thread count;
* ``ichd``: ``read_ct(folder, workers=W)`` — the default (process pool);
* ``ichd-thread``: the same read with a thread pool; ``ichd-serial``: ``workers=1``.

Reported: slices/s (median and best of the repeats); CPU time per slice (process + decoding workers); the speed-up
of ``ichd`` over ``plain`` (medians and best runs); and peak memory above the level before the read, divided by
the float32 volume's size: for the whole process tree as PSS (proportional set size, so the shared-memory volume
that worker processes fill is counted once), sampled every 10 ms by a separate monitor process, and for the main
process alone as peak RSS (``ru_maxrss``); plus the largest peak RSS of one decoding worker.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("plain", "sitk", "ichd", "ichd-thread", "ichd-serial")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (the decoding workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _tree_pss_mb(pid: int) -> float:
    """Proportional set size of ``pid`` and all its children, MB (shared pages split between their users)."""
    import psutil

    total = 0
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def _monitor(pid: int) -> None:
    """Sample the PSS of ``pid``'s process tree every 10 ms; "mark" on stdin sets the baseline, "stop" reports."""
    import select

    base = peak = _tree_pss_mb(pid)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.01)
        if ready:
            line = sys.stdin.readline().strip()
            if line == "mark":
                base = peak = _tree_pss_mb(pid)
                print("ok", flush=True)
            else:
                print(json.dumps({"base_pss_mb": base, "peak_pss_mb": max(peak, _tree_pss_mb(pid))}), flush=True)
                return
        else:
            peak = max(peak, _tree_pss_mb(pid))


def _child(mode: str, folder: str, workers: int, memory: bool = True) -> dict[str, Any]:
    """One measurement (runs in a fresh interpreter); ``memory``: with the PSS monitor (it reads the process's
    ``/proc/PID/smaps`` every 10 ms, which slows the read it watches: speed comparisons run without it)."""
    import numpy as np
    import pydicom
    import pydicom.pixels

    from ichd.io import read_ct
    from ichd.io.dicom import read_dicom
    from ichd.io.sources import folder_sources
    from ichd.utils.progress import set_progress_enabled

    set_progress_enabled(False)
    # imports are not timed: each mode's libraries are loaded before the clock starts (SimpleITK; for ichd the
    # imagecodecs plugin and pydicom's decoders), as in a service that reads series after series
    if mode == "sitk":
        import SimpleITK  # noqa: F401
    elif mode.startswith("ichd"):
        import imagecodecs  # noqa: F401

        from ichd.io.codecs import register

        register()
    files = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())
    monitor = None
    if memory:
        monitor = subprocess.Popen([sys.executable, __file__, "--monitor", str(os.getpid())], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)  # a process, not a thread: see start_method
        assert monitor.stdin is not None and monitor.stdout is not None
        monitor.stdin.write("mark\n")
        monitor.stdin.flush()
        monitor.stdout.readline()
    base_mb = _rss_mb()
    cpu0 = _cpu_s()

    t0 = time.perf_counter()
    if mode == "plain":
        slices = []
        for f in files:
            ds = pydicom.dcmread(f)
            slices.append(ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope)
                          + np.float32(ds.RescaleIntercept))
        volume = np.stack(slices)
        del slices
    elif mode == "sitk":
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
        volume = sitk.GetArrayFromImage(reader.Execute())
    elif mode == "ichd":
        (series,) = read_ct(folder, workers=workers)
        volume = series.hu
    elif mode == "ichd-thread":
        (series,) = read_dicom(folder_sources(Path(folder))[0], workers=workers, pool="thread").series
        volume = series.hu
    elif mode == "ichd-serial":
        (series,) = read_ct(folder, workers=1)
        volume = series.hu
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    pss = {"base_pss_mb": 0.0, "peak_pss_mb": 0.0}
    if monitor is not None:
        assert monitor.stdin is not None and monitor.stdout is not None
        monitor.stdin.write("stop\n")
        monitor.stdin.flush()
        pss = json.loads(monitor.stdout.readline())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # before reaping the monitor
    if monitor is not None:
        monitor.wait()
    volume_mb = volume.nbytes / 2**20
    return {
        "mode": mode, "slices": int(volume.shape[0]), "seconds": seconds, "slices_per_s": volume.shape[0] / seconds,
        "volume_mb": volume_mb, "rss_before_mb": base_mb, "peak_rss_mb": peak_mb,
        "peak_over_volume": (peak_mb - base_mb) / volume_mb,
        "tree_pss_extra_mb": pss["peak_pss_mb"] - pss["base_pss_mb"],
        "tree_pss_over_volume": (pss["peak_pss_mb"] - pss["base_pss_mb"]) / volume_mb,
        "worker_peak_rss_mb": worker_peak_mb, "cpu_s": cpu, "cpu_ms_per_slice": 1000 * cpu / volume.shape[0],
    }


def _measure(mode: str, folder: str, workers: int, memory: bool = True) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, folder, "--workers", str(workers),
           *([] if memory else ["--no-memory"])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="DICOM series folder (default: the CQ500 series in ICHD_DATA)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per mode (interleaved)")
    parser.add_argument("--workers", type=int, default=2, help="ichd decoding workers (default 2)")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {', '.join(MODES)} (plain and ichd are always run; sitk "
                             "needs SimpleITK, in the dev extra)")
    parser.add_argument("--vs-sitk", action="store_true",
                        help="ichd against SimpleITK only, on the 34-slice rsna-series and the 238-slice CQ500 series")
    parser.add_argument("--no-memory", action="store_true",
                        help="measure speed only, without the PSS monitor (which slows the read it watches); "
                             "implied by --vs-sitk")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--monitor", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.monitor:
        _monitor(args.monitor)
        return 0
    if args.child:
        print(json.dumps(_child(args.child, args.folder, args.workers, memory=not args.no_memory)))
        return 0

    from ichd.paths import data_dir

    cq500 = str(data_dir() / "cq500" / "CQ500-CT-0" / "series-6_4cc-sec-150cc-D3D-on")
    if args.vs_sitk:
        folders = [str(data_dir() / "rsna-series" / "dicom" / "ID_7518324893"), cq500]
        modes = ["sitk", "ichd"]
    else:
        folders = [args.folder or cq500]
        modes = [m for m in MODES if m in {"plain", "ichd", *args.modes.split(",")}]
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  host: {os.uname().nodename}  cpus: {os.cpu_count()}")
    results = {}
    memory = not (args.no_memory or args.vs_sitk)
    for folder in folders:
        results[folder] = _compare(folder, modes, args.repeats, args.workers, memory)
    if args.json:
        args.json.write_text(json.dumps(results if args.vs_sitk else results[folders[0]], indent=2))
    return 0


def _compare(folder: str, modes: list[str], repeats: int, workers: int, memory: bool) -> dict[str, Any]:
    """Run ``modes`` on ``folder`` ``repeats`` times, interleaved, print the table; the measurements."""
    for p in Path(folder).rglob("*"):  # warm the page cache so every mode reads from memory
        if p.is_file():
            p.read_bytes()
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    t0 = time.perf_counter()
    for _ in range(repeats):
        for mode in modes:
            runs[mode].append(_measure(mode, folder, workers, memory))
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    print(f"folder: {folder}")
    print(f"cpus: {os.cpu_count()}  workers: {workers}  repeats: {repeats}  total wall: {wall:.1f} s  "
          f"load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f}")
    print(f"{'mode':<12} {'slices':>6} {'median sl/s':>12} {'best sl/s':>10} {'CPU ms/slice':>13} "
          f"{'tree PSS +MB':>13} {'/volume':>8} {'main RSS +MB':>13} {'worker MB':>10}")
    summary: dict[str, dict[str, float]] = {}
    for mode in modes:
        rs = runs[mode]
        med = statistics.median(r["slices_per_s"] for r in rs)
        best = max(r["slices_per_s"] for r in rs)
        over = statistics.median(r["peak_over_volume"] for r in rs)
        extra = statistics.median(r["peak_rss_mb"] - r["rss_before_mb"] for r in rs)
        worker = max(r["worker_peak_rss_mb"] for r in rs)
        cpu = statistics.median(r["cpu_ms_per_slice"] for r in rs)
        pss_extra = statistics.median(r["tree_pss_extra_mb"] for r in rs)
        pss_over = statistics.median(r["tree_pss_over_volume"] for r in rs)
        summary[mode] = {"median_slices_per_s": med, "best_slices_per_s": best, "cpu_ms_per_slice": cpu,
                         "tree_pss_over_volume": pss_over, "main_rss_over_volume": over}
        print(f"{mode:<12} {rs[0]['slices']:>6} {med:>12.1f} {best:>10.1f} {cpu:>13.1f} {pss_extra:>13.0f} "
              f"{pss_over:>8.2f} {extra:>13.0f} {worker:>10.0f}")
    print(f"volume: {runs['ichd'][0]['volume_mb']:.0f} MB float32")
    out: dict[str, Any] = {"folder": folder, "runs": runs, "summary": summary, "wall_s": wall,
                           "load_before": load_before, "load_after": load_after}
    if "plain" in runs:
        speedup = summary["ichd"]["median_slices_per_s"] / summary["plain"]["median_slices_per_s"]
        best_speedup = summary["ichd"]["best_slices_per_s"] / summary["plain"]["best_slices_per_s"]
        print(f"speed-up of ichd over the plain loop: {speedup:.2f}x (medians), {best_speedup:.2f}x (best runs)")
        out.update(speedup_median=speedup, speedup_best=best_speedup)
    vs_sitk: dict[str, float] = {}
    if "sitk" in runs:
        # paired ratios: each repeat ran every mode back to back, so the ratio of one repeat shares its load
        for mode in (m for m in modes if m.startswith("ichd")):
            ratios = [s_run["seconds"] / i_run["seconds"] for s_run, i_run in zip(runs["sitk"], runs[mode], strict=True)]
            vs_sitk[mode] = statistics.median(ratios)
            print(f"{mode} vs SimpleITK: {vs_sitk[mode]:.2f}x as fast (median of {len(ratios)} paired repeats; "
                  f"range {min(ratios):.2f}-{max(ratios):.2f})")
    out["vs_sitk"] = vs_sitk
    return out


if __name__ == "__main__":
    sys.exit(main())
