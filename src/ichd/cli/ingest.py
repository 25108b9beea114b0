"""``ichd ingest``: read CT inputs and report what was found (series, slices, spacing, tilt, gaps, warnings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def _human(summary: dict[str, Any]) -> str:
    """A few readable lines for one series summary."""
    sp = ", ".join("?" if v is None else f"{v:g}" for v in summary["spacing_mm"])
    hu = summary["hu"]
    lines = [
        f"series {summary['series_instance_uid']}  (study {summary['study_instance_uid']})",
        f"  source: {summary['source']} [{summary['source_kind']}]",
        f"  slices: {summary['n_slices']}  shape (z,y,x): {tuple(summary['shape'])}  spacing (z,y,x) mm: {sp}",
        (f"  tilt: {summary['tilt_deg']:g}°  gaps: {len(summary['gaps'])}  "
         f"duplicates: {len(summary['duplicates'])}  HU p1/median/p99: {hu['p1']}/{hu['median']}/{hu['p99']}"),
    ]
    lines += [f"  warning [{w['code']}]: {w['message']}" for w in summary["warnings"]]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the ``ingest`` command to ``app``."""

    @app.command("ingest")
    def ingest(
        paths: list[Path] = typer.Argument(
            None, show_default=False,
            help="CT inputs: DICOM folders (searched recursively), .zip archives or single/multi-frame DICOM files, "
                 "NIfTI volumes (.nii/.nii.gz), a CT-ICH root or patient folder (brain/bone JPGs), or folders of "
                 "windowed PNG/JPG slices (then give --window)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object {\"series\": [...]} on stdout "
                                                           "instead of the readable report."),
        window: str | None = typer.Option(None, "--window", metavar="LEVEL,WIDTH",
                                          help="Window the PNG/JPG slices were exported with, in HU (e.g. 40,120). "
                                               "Needed only for image folders."),
        strict: bool = typer.Option(False, "--strict", help="Stop at the first broken file (not DICOM, truncated, "
                                                            "missing/inconsistent tags, undecodable) instead of "
                                                            "skipping it with a warning."),
        allow_secondary_capture: bool = typer.Option(
            False, "--allow-secondary-capture",
            help="Read DICOM Secondary Capture images (Modality CT/OT) as CT in HU; by default they are skipped."),
        independent: bool = typer.Option(False, "--independent",
                                         help="Treat every image as an unrelated one-slice series."),
        workers: int | None = typer.Option(None, "--workers", "-j", min=1,
                                           help="DICOM decoding threads (default min(2, CPUs))."),
        demo: bool = typer.Option(False, "--demo", help="Read the bundled demo study (a CT-ICH patient, "
                                                        "CC BY 4.0) instead of PATHS."),
    ) -> None:
        """Read CT inputs and report each series found: UIDs, slice count, spacing, tilt, gaps, duplicates and
        warnings. Exit code 0 on success, 2 on bad input (one line on stderr saying what to do)."""
        from ichd.errors import InputError
        from ichd.io import read_ct
        from ichd.io.images import parse_window
        from ichd.io.summary import series_summary
        from ichd.paths import package_resource

        inputs = list(paths or [])
        if demo:
            if inputs:
                raise InputError("give either PATHS or --demo, not both", hint="drop --demo to read your files")
            inputs = [package_resource("resources", "demo")]
            if not inputs[0].exists():
                raise InputError(f"the bundled demo study is missing ({inputs[0]})",
                                 hint="reinstall ichd, or pass your own CT files")
        if not inputs:
            raise InputError("no input given", hint="pass a DICOM folder, zip, NIfTI file or image folder, "
                                                    "or --demo (see ichd ingest --help)")
        win = parse_window(window) if window is not None else None
        summaries: list[dict[str, Any]] = []
        for path in inputs:
            for series in read_ct(path, window=win, strict=strict, workers=workers, independent=independent,
                                  allow_secondary_capture=allow_secondary_capture):
                summary = series_summary(series)
                summary["input"] = str(path)
                summaries.append(summary)
        if as_json:
            typer.echo(json.dumps({"n_series": len(summaries), "series": summaries}, indent=2))
            return
        for summary in summaries:
            typer.echo(_human(summary))
        n_slices = sum(s["n_slices"] for s in summaries)
        typer.echo(f"{len(summaries)} series, {n_slices} slices from {len(inputs)} input(s)")
