"""``ichd ingest``: read CT inputs and report what was found (series, slices, spacing, tilt, gaps, warnings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ichd.cli.inputs import CTInputOptions, ct_input_options


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
    @ct_input_options("window", "strict", "allow_secondary_capture", "independent", "workers", "series")
    def ingest(
        paths: list[Path] = typer.Argument(
            None, show_default=False,
            help="CT inputs: DICOM folders (searched recursively), .zip archives or single/multi-frame DICOM files, "
                 "NIfTI volumes (.nii/.nii.gz), a CT-ICH root or patient folder (brain/bone JPGs), or folders of "
                 "windowed PNG/JPG slices (then give --window)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object {\"series\": [...]} on stdout "
                                                           "instead of the readable report."),
        demo: bool = typer.Option(False, "--demo", help="Read the bundled demo study (a CT-ICH patient, "
                                                        "CC BY 4.0) instead of PATHS."),
        *,
        inputs: CTInputOptions,  # the options of @ct_input_options
    ) -> None:
        """Read CT inputs and report each series found: UIDs, slice count, spacing, tilt, gaps, duplicates and
        warnings. Exit code 0 on success, 2 on bad input (one line on stderr saying what to do)."""
        from ichd.errors import InputError
        from ichd.io.summary import series_summary
        from ichd.paths import package_resource

        given = list(paths or [])
        if demo:
            if given:
                raise InputError("give either PATHS or --demo, not both", hint="drop --demo to read your files")
            given = [package_resource("resources", "demo")]
            if not given[0].exists():
                raise InputError(f"the bundled demo study is missing ({given[0]})",
                                 hint="reinstall ichd, or pass your own CT files")
        if not given:
            raise InputError("no input given", hint="pass a DICOM folder, zip, NIfTI file or image folder, "
                                                    "or --demo (see ichd ingest --help)")
        summaries: list[dict[str, Any]] = []
        for path, series in inputs.read_each(given):
            summary = series_summary(series)
            summary["input"] = str(path)
            summaries.append(summary)
        if as_json:
            typer.echo(json.dumps({"n_series": len(summaries), "series": summaries}, indent=2))
            return
        for summary in summaries:
            typer.echo(_human(summary))
        n_slices = sum(s["n_slices"] for s in summaries)
        typer.echo(f"{len(summaries)} series, {n_slices} slices from {len(given)} input(s)")
