"""``ichd explain``: evidence maps for every positive finding (overlay PNGs, scan montages, maps as data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ichd.cli.guard_help import ALLOW_CONTRAST_HELP
from ichd.cli.inputs import CTInputOptions, ct_input_options


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to ``app``."""

    @app.command("explain")
    @ct_input_options("window", "strict", "allow_secondary_capture", "independent", "workers", "series")
    def explain(
        input_path: Annotated[Path, typer.Argument(
            metavar="INPUT",
            help="CT input: a DICOM file, folder or zip; a NIfTI file; a CT-ICH root or patient folder; or a folder "
                 "of windowed PNG/JPG slices (then give --window).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one sub-folder per scan with "
                                                              "overlays/*.png, montage.png and explain.json.")],
        classes: Annotated[str | None, typer.Option(
            "--classes", "-c", help="Comma-separated classes to explain, names or abbreviations (e.g. any,subdural "
                                    "or IPH,SDH). Default: all six.")] = None,
        model: Annotated[str, typer.Option(
            "--model", "-m", help="Bundled model name, model bundle folder, or checkpoint .pt file; the maps "
                                  "explain its slice CNN.")] = "default",
        method: Annotated[str | None, typer.Option(
            "--method", help="The map: lesion (the model's lesion map head: per-pixel hemorrhage probability, "
                             "trained on masks; the same map for every class), gradcam or gradcam++. Default: the "
                             "model's own (lesion when it has a lesion head, else gradcam).")] = None,
        save_maps: Annotated[bool, typer.Option(
            "--save-maps", help="Also write each finding's map at the input's resolution as "
                                "maps/slice_<i>_<class>.npy (float32, head-masked), to score against your own "
                                "masks or boxes; explain.json always records each map's peak and energy.")] = False,
        threshold: Annotated[float | None, typer.Option(
            "--threshold", help="Flag slices at or above this probability for every class (default: the model's "
                                "operating thresholds).")] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace results already in --out.")] = False,
        allow_contrast: Annotated[bool, typer.Option("--allow-contrast", help=ALLOW_CONTRAST_HELP)] = False,
        *,
        inputs: CTInputOptions,  # the options of @ct_input_options
    ) -> None:
        """Evidence-map overlays for every slice/class at or above the operating threshold, and a montage per scan.

        Slice probabilities come from the full predictor. The map is the model's own: its lesion map (per-pixel
        hemorrhage probability from a head trained on masks, the same for every class) when it has one, as the
        default model does, else Grad-CAM of its slice CNN (registry's layer); explain.json says which ("map"),
        and records each map's peak (row, column of the input slice) and energy.

        Overlays: brain window L40/W80, map where >= 0.2 of its maximum, colour bar, class, probability, slice.

        The input guards are those of ``ichd predict``: a scan it calls not assessable gets no finding and no
        overlay (explain.json says why); slices without head tissue are never flagged. See ``ichd predict --help``.

        Research use only; not a medical device.
        """
        from ichd.errors import InputError
        from ichd.explain.lesion import MAP_METHODS
        from ichd.explain.pipeline import explain_to_folder
        from ichd.inference.predictor import Predictor

        if method is not None and method not in MAP_METHODS:
            raise InputError(f"--method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
        wanted = [c for c in (classes or "").split(",") if c.strip()] or None
        all_series = inputs.read(input_path)  # before the model: bad input fails fast
        from ichd.models.bundled import model_for_input

        predictor = Predictor.load(model_for_input(model, windowed=inputs.window is not None), device=device)
        ident = predictor.identity
        indexes = explain_to_folder(all_series, predictor, out, classes=wanted, method=method, save_maps=save_maps,
                                    threshold=threshold, overwrite=overwrite, allow_contrast=allow_contrast,
                                    model_info={"name": ident.name, "version": ident.version,
                                                "sha256": ident.sha256})
        for idx in indexes:
            if idx.get("not_assessable_reason"):
                reason = idx["not_assessable_reason"]
                hint = " (--allow-contrast explains it anyway)" if reason == "contrast_enhanced" else ""
                typer.echo(f"scan {idx['scan_id']}: not assessable ({reason}): no finding explained{hint}", err=True)
                continue
            typer.echo(f"scan {idx['scan_id']}: {len(idx['findings'])} finding(s) on "
                       f"{len(idx['flagged_slices'])} of {idx['n_slices']} slices", err=True)
        typer.echo(f"wrote results to {out}", err=True)
