"""``ichd train seq``: cross-validate the sequence model (feature selection + BiLSTM) on OOF CNN embeddings.

The command is added to :data:`ichd.cli.train.train_app` when this module is imported (``train_seq`` comes
after ``train`` in :data:`ichd.cli.main.COMMAND_MODULES`); :func:`register` has nothing left to do.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ichd.cli.train import _parse_overrides, train_app


@train_app.command("seq")
def train_seq_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Sequence config YAML (e.g. configs/seq_ctich.yaml)."),
    embeddings: Path | None = typer.Option(None, "--embeddings", "-e",
                                              help="Embedding .npz from `ichd embed` (default: `embeddings` in "
                                                   "the config)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: `out` in the config)."),
    fold: list[int] | None = typer.Option(None, "--fold", "-f",
                                             help="Run only this CV fold (repeatable); default every fold."),
    no_cv: bool = typer.Option(False, "--no-cv", help="Skip cross-validation (use with --final)."),
    final: bool | None = typer.Option(None, "--final/--no-final",
                                         help="Also train on every patient -> OUT/final/model.pt."),
    cnn_checkpoint: Path | None = typer.Option(None, "--cnn-checkpoint",
                                                  help="CNN checkpoint to embed in the final model (the CNN to "
                                                       "run at inference)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Patient-bootstrap replicates for the 95% intervals."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override a config value, KEY=VALUE with a "
                                                  "dotted key (repeatable), e.g. --set optim.epochs=30."),
) -> None:
    """Fit feature selector + sequence model per CNN fold (OOF predictions, metrics) and optionally a final model."""
    from ichd.errors import InputError
    from ichd.training.seq import load_seq_config, train_seq

    if bootstrap < 1:
        raise InputError(f"--bootstrap must be >= 1, got {bootstrap}")
    extra = _parse_overrides(overrides)
    if embeddings is not None:
        extra["embeddings"] = str(embeddings)
    if out is not None:
        extra["out"] = str(out)
    if no_cv:
        extra["folds"] = []
    elif fold:
        extra["folds"] = list(fold)
    if final is not None:
        extra["final"] = final
    if cnn_checkpoint is not None:
        extra["cnn_checkpoint"] = str(cnn_checkpoint)
    cfg = load_seq_config(config, extra)
    res = train_seq(cfg, n_boot=bootstrap)
    m = res.metrics
    if res.oof is not None:
        ci = m["ci95"]

        def fmt(key: str) -> str:
            lo, hi = ci.get(key, [None, None])
            band = f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
            return f"{key} {m[key]:.4f}{band}"

        typer.echo(f"{cfg.name}: {m['n_slices']} slices, {m['n_scans']} scans; "
                   + "; ".join(fmt(k) for k in ("weighted_log_loss", "slice_auc_any", "scan_auc_any")))
        typer.echo(f"out-of-fold predictions: {res.out / 'oof.csv'}")
    if res.final_checkpoint is not None:
        typer.echo(f"final model: {res.final_checkpoint}")
    typer.echo(f"done in {res.seconds:.0f} s")


def register(app: typer.Typer) -> None:
    """Nothing to do: importing this module added ``seq`` to the ``train`` group."""
