"""Preprocessing throughput on Dask: 1 vs 2 workers of a ``LocalCluster``, steady state (cluster started and
warmed first) and end to end (``ichd preprocess --dask-workers N``, cluster start/stop included), with the process
pool (``--workers N``) as reference; runs interleaved, each twice. Input: the 20 rsna-series series (676 slices kept).

    python benchmarks/preprocess_dask.py [--out /tmp/ichd-dask-bench]

Prints one line per run with the load average before and after (see docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _warm() -> bool:
    import torch  # noqa: F401

    import ichd.io.dicom
    import ichd.preprocessing.pipeline  # noqa: F401
    return True


def steady(src: str, out: Path, n: int) -> str:
    from distributed import Client, LocalCluster

    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig

    shutil.rmtree(out, ignore_errors=True)
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            Client(c) as client:
        client.run(_warm)
        before = _load()
        s = build_cache([src], out, PreprocessConfig(image_size=256), scheduler=c.scheduler_address)
    return (f"steady dask_workers={n} slices={s.slices_written} s={s.seconds:.1f} "
            f"slices/s={s.slices_written / s.seconds:.1f} load {before} -> {_load()}")


def cli(src: str, out: Path, flag: str, n: int) -> str:
    shutil.rmtree(out, ignore_errors=True)
    before = _load()
    t = time.perf_counter()
    subprocess.run(["ichd", "-q", "preprocess", src, "--out", str(out), "--size", "256", flag, str(n)],
                   capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return f"cli {flag}={n} wall={wall:.1f}s slices/s={676 / wall:.1f} load {before} -> {_load()}"


def main() -> int:
    from ichd.paths import data_dir
    from ichd.utils.progress import set_progress_enabled

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ichd-dask-bench"), help="scratch folder for the caches")
    args = ap.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    set_progress_enabled(False)
    src = str((data_dir() / "rsna-series" / "dicom").resolve())
    for rep in (1, 2):
        for n in (1, 2):
            print(steady(src, args.out / f"steady{n}_{rep}", n), flush=True)
        for n in (1, 2):
            print(cli(src, args.out / f"cli{n}_{rep}", "--dask-workers", n), flush=True)
            print(cli(src, args.out / f"pool{n}_{rep}", "--workers", n), flush=True)
    shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
