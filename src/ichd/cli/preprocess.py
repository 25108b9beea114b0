"""``ichd preprocess``: decode CT inputs once and write the preprocessed cache used for training and embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ichd.cli.inputs import CTInputOptions, ct_input_options


def register(app: typer.Typer) -> None:
    """Add the ``preprocess`` command to ``app``."""

    @app.command("preprocess")
    @ct_input_options("window", "strict", "allow_secondary_capture")
    def preprocess(
        paths: Annotated[list[Path], typer.Argument(
            metavar="INPUTS",
            help="CT inputs: a CT-ICH root (brain/ + bone/ JPG folders), DICOM files/folders/zips, NIfTI files, or "
                 "folders of windowed PNG/JPG slices (then give --window).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to create or resume (manifest.json, "
                                                              "slices.csv, series/<scan_id>.npy).")],
        size: int = typer.Option(256, "--size", help="Output slice size S in pixels (S x S)."),
        dtype: str = typer.Option("uint8", "--dtype",
                                  help="Cached pixel type: uint8 (0..255, compact) or float16 (0..1)."),
        workers: int | None = typer.Option(None, "--workers", "-j",
                                           help="Parallel worker processes, one input (a CT-ICH patient, a DICOM "
                                                "series, ...) each (default: min(4, CPUs); 1 = no pool, DICOM "
                                                "decoding then uses min(2, CPUs) workers)."),
        resize_mode: str = typer.Option("bilinear", "--resize-mode",
                                        help="Resize filter: bilinear (antialiased) or area."),
        crop: str = typer.Option("none", "--crop",
                                 help="Crop each slice to the head before resizing: 'none' (the whole slice, as "
                                      "the shipped models were trained) or 'head' (the square around the head on "
                                      "every slice of the series: table and air cut away, the same framing for "
                                      "every source; a model trained on such a cache crops the same way at "
                                      "inference)."),
        simulate_window: str | None = typer.Option(
            None, "--simulate-window", metavar="LEVEL,WIDTH",
            help="Reduce every slice to this 8-bit display window first (clipped and quantised as a windowed "
                 "PNG/JPG export keeps it, e.g. 40,80): a training cache that shows a model such inputs "
                 "(`data.augment_caches` of `ichd train frozen`). Default: the HU as read."),
        normalization: str = typer.Option("seed", "--normalization",
                                          help="Normalisation preset recorded for training/inference: "
                                               "seed, half or none (the cache itself is never normalised)."),
        patients: str | None = typer.Option(None, "--patients",
                                            help="CT-ICH only: comma-separated patient numbers to include "
                                                 "(e.g. 49,50,51); default all."),
        scheduler: str | None = typer.Option(
            None, "--scheduler",
            help="Run the work units as tasks on Dask (needs dask.distributed: the ichd extra 'dask'): a "
                 "scheduler address (tcp://HOST:PORT; the inputs and --out must be on a filesystem every worker "
                 "mounts at the same path) or 'local' for a local cluster. Default: the process pool of --workers."),
        dask_workers: int | None = typer.Option(
            None, "--dask-workers", min=1,
            help="Start a local Dask cluster of N one-thread worker processes (implies --scheduler local; "
                 "default with --scheduler local: --workers, else min(4, CPUs))."),
        verify: bool = typer.Option(
            False, "--verify",
            help="Before resuming, check the sha256 of every array already in the cache (default: their sizes, and "
                 "the sha256 of those an interrupted run left); a damaged one is built again."),
        *,
        inputs: CTInputOptions,  # the options of @ct_input_options
    ) -> None:
        """Window, resize and cache CT scans (resumable: re-running skips what is already cached; parallel over a
        process pool or a Dask cluster)."""
        from ichd.errors import InputError
        from ichd.io.images import parse_window
        from ichd.preprocessing.cache import build_cache
        from ichd.preprocessing.config import PreprocessConfig

        cfg = PreprocessConfig(image_size=size, cache_dtype=dtype, normalization=normalization,  # type: ignore[arg-type]
                               resize_mode=resize_mode, crop=crop,  # type: ignore[arg-type]
                               simulate_window=parse_window(simulate_window) if simulate_window else None)
        chosen = None
        if patients:
            try:
                chosen = [int(p) for p in patients.split(",") if p.strip()]
            except ValueError as e:
                raise InputError(f"--patients {patients!r} must be comma-separated numbers") from e
        summary = build_cache(paths, out, cfg, workers=workers, window=inputs.window_hu, patients=chosen,
                              strict=inputs.strict, allow_secondary_capture=inputs.allow_secondary_capture,
                              scheduler=scheduler, dask_workers=dask_workers, verify=verify)
        typer.echo(f"cache {summary.out}: wrote {summary.written} series ({summary.slices_written} slices), "
                   f"skipped {summary.skipped_inputs} input(s) already cached; now {summary.total_series} series, "
                   f"{summary.total_slices} slices; {summary.seconds:.1f} s")
        for where, msg in summary.empty:
            typer.secho(f"warning: skipped {where}: {msg}", err=True, fg="yellow")
        if summary.failed:
            for where, msg in summary.failed:
                typer.secho(f"failed: {where}: {msg}", err=True, fg="red")
            raise InputError(f"{len(summary.failed)} input(s) could not be preprocessed (see above); "
                             f"the rest is in the cache", hint="fix or remove them and run again to resume")
