"""``ichd evaluate``: score predictions against labels and write metrics.json plus a Markdown/HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HELP = """Evaluate predictions against labels: RSNA weighted log loss, per-subtype slice- and scan-level metrics
at three operating points, 95% patient-bootstrap intervals, calibration, ROC/PR plots, optional readers.

PREDICTIONS: an ichd predictions CSV (slice_id, scan_id, patient_id, slice_index, fold + one column per label),
predict JSON file(s) or a folder of them, or an RSNA submission CSV (ID_<SOPInstanceUID>_<subtype>,Label).
LABELS: CT-ICH labels.csv, RSNA stage_2_train.csv, rsna-series labels.csv or an ichd labels CSV; several files
(one per data source) are read as one table, and --source picks one source's slices. Slices with missing labels
are left out of every metric (the report says how many).

Choosing a model on few positive series: with a `fold` column the report gives per-fold AUCs (mean, SD, min, max
over folds, positives per fold) beside the pooled OOF AUC; with several label files, results per source (AUC with a
patient-bootstrap interval within each source); with scan ids, the scan any-AUC of every scan rule (max,
consecutive, topk_mean, smoothed_max, and the model's own scan output when given). --repeat adds further CV
repeats of the same model (other fold seeds): per-repeat pooled AUC, mean +- SD across repeats and the per-fold
AUCs over all repeats x folds; all other numbers come from PREDICTIONS (the first repeat) alone. An ichd CSV with
a `calibrated` column (e.g. "temperature") is reported as calibrated.

Operating points (slice and scan level, each chosen on its own predictions): 0.5, Youden, sensitivity >=
--sensitivity, and "policy": "any" at --sensitivity, subtypes at specificity >= --subtype-specificity; policy is
what a model bundle ships (its slice-level points serve single-slice input, `ichd predict --independent`). At every
point a subtype is called only when "any" is (subtype consistency); the report gives the extra subtype rate:
the fraction of scans called with a subtype their labels lack.

Writes OUT/metrics.json, OUT/thresholds.json, OUT/report.md, OUT/report.html (self-contained) and OUT/plots/.
"""


def evaluate_command(
    predictions: Annotated[Path, typer.Argument(metavar="PREDICTIONS", help="Predictions: ichd CSV, predict JSON file/folder, or RSNA "
                                                     "submission CSV.")],
    labels: Annotated[list[Path], typer.Argument(metavar="LABELS...", help="Labels: CT-ICH labels.csv, RSNA "
                                                      "stage_2_train.csv, rsna-series labels.csv or ichd labels "
                                                      "CSV; several files = one per data source.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must be empty or new unless "
                                                          "--overwrite).")],
    source: Annotated[str | None, typer.Option(
        "--source", help="With several label files: evaluate only this source's slices (the name of the folder "
        "holding its label file, e.g. rsna-series).")] = None,
    partial_scans: Annotated[bool, typer.Option(
        "--partial-scans", help="Evaluate a scan on its predicted slices when some of its labelled slices have no "
        "prediction (e.g. slices ingest dropped as duplicate positions); an error still when such a slice holds "
        "the scan's only positive label.")] = False,
    scans: Annotated[Path | None, typer.Option(
        "--scans", help="CSV slice_id,scan_id[,patient_id] giving scan (and patient) membership when the inputs "
        "do not carry it. Without any scan membership only slice-level metrics are reported.")] = None,
    scan_predictions: Annotated[Path | None, typer.Option(
        "--scan-predictions", help="CSV scan_id + one probability column per label: the model's own scan "
        "output (e.g. oof_scans.csv of 'ichd train seq'), used as scan score instead of the maximum slice "
        "probability.")] = None,
    thresholds_from: Annotated[Path | None, typer.Option(
        "--thresholds-from", help="Choose the Youden and fixed-sensitivity thresholds on these VALIDATION "
        "predictions (or take them from a thresholds.json of an earlier evaluation) and apply them unchanged "
        "here. Without it they are chosen on the evaluated data (optimistic; the report says so).")] = None,
    thresholds_labels: Annotated[Path | None, typer.Option(
        "--thresholds-labels", help="Labels for the --thresholds-from predictions (default: LABELS).")] = None,
    sensitivity: Annotated[float, typer.Option(
        "--sensitivity", help="Target sensitivity of the fixed-sensitivity operating point (and of \"any\" in the "
        "policy point).")] = 0.95,
    subtype_specificity: Annotated[float, typer.Option(
        "--subtype-specificity", help="Specificity at which the policy point sets each subtype's threshold "
        "(\"any\" stays at --sensitivity); 0 puts the subtypes at their Youden point instead.")] = 0.9,
    repeat: Annotated[list[Path] | None, typer.Option(
        "--repeat", metavar="FILE", help="OOF predictions of another cross-validation repeat of the same model "
        "(same slices, another fold seed); repeatable. Adds per-repeat pooled AUCs, their mean +- SD and the "
        "per-fold AUCs over all repeats x folds; every other number comes from PREDICTIONS.")] = None,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Bootstrap replicates for the 95% intervals (resampling patients); 0 turns "
        "intervals off.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap (same seed, same intervals).")] = 0,
    bins: Annotated[int, typer.Option("--bins", help="Equal-width bins of the reliability diagrams and "
                                                     "ECE.")] = 10,
    readers: Annotated[Path | None, typer.Option(
        "--readers", help="Reader study to compare with at scan level: CQ500 reads.csv or a CSV "
        "scan_id,reader,<label columns> (0/1). Case names must equal scan or patient ids.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow writing into a non-empty OUT "
                                                                "folder.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the figures (faster; the report then has "
                                                              "tables only).")] = False,
) -> None:
    from ichd.evaluation.report import evaluate_files

    if bins < 1:
        raise typer.BadParameter("--bins must be >= 1")
    ev, paths = evaluate_files(predictions, labels if len(labels) > 1 else labels[0], out, source=source,
                               partial_scans=partial_scans, scans=scans, scan_predictions=scan_predictions,
                               thresholds_from=thresholds_from,
                               thresholds_labels=thresholds_labels, sensitivity=sensitivity, n_boot=bootstrap,
                               seed=seed, n_bins=bins, readers=readers, overwrite=overwrite,
                               plots=not no_plots, subtype_specificity=subtype_specificity,
                               repeats=list(repeat or []))
    m = ev.metrics
    w = m["rsna_weighted_log_loss"]
    ci = w.get("overall_ci95")
    ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""
    typer.echo(f"weighted log loss {w['overall']:.4f}{ci_text} over {m['counts']['slices']} slices")
    for level in ("slice", "scan"):
        if m[level] is None:
            continue
        aucs = ", ".join(f"{lab} {_fmt(e['auc'])}" for lab, e in m[level]["classes"].items())
        typer.echo(f"{level} AUC: {aucs}")
        spread = ((m.get("fold_spread") or {}).get(level) or {}).get("any")
        if spread and spread["n"]:
            sd = "" if spread["sd"] is None else f" +- {spread['sd']:.3f}"
            typer.echo(f"{level} any-AUC over {spread['n']} folds: {_fmt(spread['mean'])}{sd} "
                       f"(min {_fmt(spread['min'])}, max {_fmt(spread['max'])})")
    if m["scan"] is not None:
        extra = m["scan"]["extra_subtype"]["policy"]
        typer.echo(f"scans with a subtype their labels lack (policy point): {extra['n_with_extra']} of "
                   f"{extra['n']}")
    if m.get("repeats"):
        across = m["repeats"]["across_repeats"]["slice"]["any"]
        sd = "" if across["sd"] is None else f" +- {across['sd']:.3f}"
        typer.echo(f"slice any-AUC over {m['repeats']['n_repeats']} CV repeats: {_fmt(across['mean'])}{sd}")
    for note in m["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"report: {paths['report_html']}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def register(app: typer.Typer) -> None:
    """Add ``ichd evaluate`` to the application."""
    app.command("evaluate", help=HELP, no_args_is_help=True)(evaluate_command)
