"""``ichd embed``: CNN embeddings + probabilities of every cached slice, the input of ``ichd train seq``."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Run a slice CNN over every slice of a preprocessed cache and write its embeddings and 6 probabilities.

Single model: --checkpoint CNN.pt. Out-of-fold (for training the sequence model): --cnn-run RUN, the folder of
`ichd train cnn` cross-validation; each patient is embedded by the fold model that did not train on it
(RUN/fold{K}/final.pt, fold assignment RUN/folds.csv), so the sequence model never learns from in-sample
features.

Writes one .npz (plain arrays: slice/scan/patient ids, slice_index, fold, features, probs, the CNNs' classifier
weights, provenance).
"""


def embed_command(
    cache: Path = typer.Argument(..., help="Cache folder written by `ichd preprocess` (same image size and windows "
                                          "as the CNN was trained on)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz file (e.g. runs/embed_ctich/oof.npz)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c",
                                              help="One CNN checkpoint embeds every slice (fold column = -1)."),
    cnn_run: Path | None = typer.Option(None, "--cnn-run",
                                           help="CNN cross-validation folder: out-of-fold embeddings."),
    folds: Path | None = typer.Option(None, "--folds", help="patient_id,fold CSV for --cnn-run "
                                         "(default RUN/folds.csv)."),
    checkpoint_name: str = typer.Option("final.pt", "--checkpoint-name",
                                        help="File name of each fold's checkpoint inside RUN/fold{K}/."),
    batch_size: int = typer.Option(32, "--batch-size", help="Slices per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads (default: torch's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT file."),
) -> None:
    from ichd.errors import InputError
    from ichd.inference.embed import NO_FOLD, embed_cache, read_fold_assignment, run_checkpoints

    if (checkpoint is None) == (cnn_run is None):
        raise InputError("give exactly one of --checkpoint (one model) or --cnn-run (out-of-fold)")
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} exists", hint="pass --overwrite to replace it")
    if out.suffix != ".npz":
        raise InputError(f"--out {str(out)!r} must end in .npz")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if cnn_run is not None:
        assignment = read_fold_assignment(folds or cnn_run / "folds.csv")
        table = embed_cache(cache, run_checkpoints(cnn_run, assignment, checkpoint_name),
                            patient_folds=assignment, batch_size=batch_size, device=device)
    else:
        if not checkpoint.is_file():  # type: ignore[union-attr]
            raise InputError(f"checkpoint {str(checkpoint)!r} not found")
        table = embed_cache(cache, {NO_FOLD: checkpoint}, batch_size=batch_size,  # type: ignore[dict-item]
                            device=device)
    table.save(out)
    typer.echo(f"embedded {len(table)} slices of {len(set(table.scan_id))} scans "
               f"({table.n_features} features, mode {table.meta['mode']}) in {table.meta['seconds']:.1f} s -> {out}")


def register(app: typer.Typer) -> None:
    """Add ``ichd embed`` to ``app``."""
    app.command("embed", help=HELP)(embed_command)
