"""``ichd predict``: a CT study in; per-slice and per-scan subtype probabilities, evidence and reports out."""

from __future__ import annotations

from pathlib import Path

import typer

from ichd.cli.guard_help import ALLOW_CONTRAST_HELP, NO_SLABS_HELP
from ichd.cli.inputs import CTInputOptions, ct_input_options


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to ``app``."""

    @app.command("predict")
    @ct_input_options("window", "strict", "allow_secondary_capture", "independent", "workers", "series")
    def predict(
        input_path: Path | None = typer.Argument(
            None, metavar="INPUT",
            help="CT input: a DICOM file, folder or zip; a NIfTI file; a CT-ICH root or patient folder; or a folder "
                 "of windowed PNG/JPG slices (then give --window). Leave out with --demo."),
        demo: bool = typer.Option(False, "--demo", help="Predict the demo study shipped with ichd (no data needed)."),
        model: str = typer.Option("default", "--model", "-m",
                                  help="Bundled model name (`ichd models list`; 'default' is the shipped model, "
                                       "and for windowed PNG/JPG slices its variant trained on brain-window "
                                       "renderings too, 'default-windowed'), a model bundle "
                                       "folder, or a checkpoint .pt file."),
        out: Path | None = typer.Option(None, "--out", "-o",
                                        help="Output folder for prediction.json, report.html, dicom/ and "
                                             "submission.csv. Without it the JSON result is printed to stdout."),
        fmt: str | None = typer.Option(None, "--format", "-f",
                                       help="Comma-separated outputs (default json,html with --out; json "
                                            "without): json = prediction.json; html = report.html; dicom = "
                                            "dicom/ SR + Secondary Captures; rsna = submission.csv, the RSNA "
                                            "2019 Kaggle submission (ID,Label; six rows <SOPInstanceUID>_<subtype> "
                                            "per image, e.g. ID_000012eaf_any; all series in one file), which "
                                            "`ichd evaluate` reads back."),
        tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average over flips and shifts "
                                                      "(about 4x the CNN time)."),
        gradcam: bool = typer.Option(True, "--gradcam/--no-gradcam",
                                     help="Grad-CAM heat maps on the flagged slices in the HTML and DICOM outputs."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
        batch_size: int = typer.Option(16, "--batch-size", min=1,
                                       help="Slices per chunk through preprocessing and the CNN (bounds memory)."),
        allow_contrast: bool = typer.Option(False, "--allow-contrast", help=ALLOW_CONTRAST_HELP),
        no_slabs: bool = typer.Option(False, "--no-slabs", help=NO_SLABS_HELP),
        threads: int | None = typer.Option(None, "--threads", min=1,
                                           help="CPU threads for torch (default: torch's choice, one per core; on a "
                                                "machine busy with other jobs, 1 is often much faster)."),
        second_reader: str | None = typer.Option(
            None, "--second-reader",
            help="Also segment each series with a second reader: 'blast-ct' (BLAST-CT, an optional extra: pip "
                 "install -e \".[blast-ct]\"). Adds its lesion volumes in mL (IPH, extra-axial, IVH, oedema, "
                 "and IPH+EAH+IVH) to the JSON and HTML, and a DICOM SEG with --format dicom (DICOM input). "
                 "One model costs ~4 CPU-minutes per head CT (~2 min on 2 free cores); each further model as much."),
        blast_ct_models: Path | None = typer.Option(
            None, "--blast-ct-models", metavar="DIR",
            help="Folder of the BLAST-CT weights (model_1.pt, ...; nothing is downloaded). Default: $ICHD_BLAST_CT, "
                 "else models/blast-ct beside the data folder."),
        blast_ct_ensemble: str | None = typer.Option(
            None, "--blast-ct-ensemble", metavar="NAMES",
            help="Comma-separated weight files of --blast-ct-models to average (default model_1; e.g. "
                 "model_1,model_3,model_6: three times as long)."),
        *,
        inputs: CTInputOptions,  # the options of @ct_input_options
    ) -> None:
        """Predict intracranial hemorrhage subtypes for every series of INPUT (research use only).

        Writes a versioned JSON result (per-scan and per-slice probabilities, thresholds, warnings, timings), a
        self-contained HTML report with Grad-CAM evidence, and optionally DICOM SR + Secondary Capture objects and
        an RSNA 2019 submission CSV of the per-slice probabilities.

        Input guards: slices without head tissue are not scored (P = 0, listed as skipped_slices). The scan call
        is "not assessable" (no finding called, probabilities kept) for a contrast-enhanced series (see
        --allow-contrast), a localizer/scout image, an image larger than any head (not_head), non-axial slices
        (non_axial) and extreme noise (extreme_noise); a series covering under 10 cm along z (short_coverage) and
        a BodyPartExamined naming no part of the head (body_part) only get a warning. Thin-slice series (< 2.5 mm)
        are read as ~5 mm slabs (see --no-slabs). Results say when the input is part of the model's training
        data. Heat maps are drawn inside the head only. Details: docs/results.md, "Input guards".
        """
        from ichd.errors import InputError
        from ichd.inference.run import PredictOptions, parse_formats, run_predict
        from ichd.paths import package_resource

        if demo:
            if input_path is not None:
                raise InputError("give either INPUT or --demo, not both", hint="drop --demo to read your files")
            input_path = package_resource("resources", "demo")
            if not input_path.exists():
                raise InputError(f"the bundled demo study is missing ({input_path})",
                                 hint="reinstall ichd (scripts/install.sh)")
        if input_path is None:
            raise InputError("no INPUT given", hint="pass a DICOM/NIfTI/image path, or --demo (see ichd predict --help)")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        opts = PredictOptions(model=model, out=out, formats=parse_formats(fmt, has_out=out is not None), tta=tta,
                              gradcam=gradcam, series_uid=inputs.series, device=device, window=inputs.window,
                              independent=inputs.independent, allow_secondary_capture=inputs.allow_secondary_capture,
                              strict=inputs.strict, workers=inputs.workers, overwrite=overwrite,
                              batch_size=batch_size, allow_contrast=allow_contrast, slabs=not no_slabs, second_reader=second_reader,
                              blast_ct_models=blast_ct_models, blast_ct_ensemble=blast_ct_ensemble)
        result = run_predict(input_path, opts)
        if out is None:
            typer.echo(result.json_text, nl=False)
            return
        for r in result.results:
            pred = r.prediction
            calls = [lab for lab, v in pred.scan_positive.items() if v]
            verdict = ("positive: " + ", ".join(calls)) if calls else "negative"
            if pred.not_assessable:
                verdict = f"NOT ASSESSABLE ({pred.not_assessable})"
            if pred.skipped_slices:
                verdict += f"; {len(pred.skipped_slices)} slice(s) without head not scored"
            if (pred.provenance or {}).get("in_training_data"):
                verdict += "; input is in the model's training data"
            if r.second_reading is not None:
                verdict += f"; BLAST-CT hemorrhage {r.second_reading.hemorrhage_ml:.1f} mL"
            p_any = float(pred.scan_probs[list(pred.labels).index("any")])
            typer.echo(f"series {pred.series_instance_uid}: {pred.slice_probs.shape[0]} slices, "
                       f"any={p_any:.3f} -> {verdict}; {len(pred.warnings)} warning(s)", err=True)
        typer.echo(f"wrote {len(result.files)} file(s) to {out}", err=True)
