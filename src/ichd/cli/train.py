"""``ichd train``: the training command group.

``ichd train cnn`` trains the slice CNN on one cross-validation fold (or on all patients); ``ichd train
merge`` pools the folds' out-of-fold predictions. Other modules add commands to :data:`train_app` (e.g.
``ichd train seq`` in :mod:`ichd.cli.train_seq`, which decorates ``train_app.command("seq")`` at import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: The ``train`` sub-application; other cli modules register their commands on it.
train_app = typer.Typer(help="Train models (slice CNN, sequence model) and pool cross-validation results.",
                        no_args_is_help=True)


def _parse_overrides(items: list[str] | None) -> dict[str, object]:
    """``["optim.batch_size=16", ...]`` -> ``{"optim.batch_size": 16}`` (values parsed as YAML)."""
    import yaml

    from ichd.errors import ConfigError

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE (e.g. optim.batch_size=16)")
        out[key.strip()] = yaml.safe_load(value)
    return out


@train_app.command("cnn")
def train_cnn_cmd(
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="Training config YAML (e.g. configs/cnn_ctich.yaml).")],
    fold: Annotated[str, typer.Option("--fold", "-f",
                                      help="Validation fold 0..K-1 (train on the others), or 'all' for the final "
                                           "fit on every patient (no validation).")] = "0",
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="Run folder (default: `out` in the config); fold{K}/ is "
                                                  "written inside.")] = None,
    restart: Annotated[bool, typer.Option("--restart",
                                          help="Ignore an existing fold{K}/last.pt and train this fold from "
                                               "scratch.")] = False,
    overrides: Annotated[list[str] | None, typer.Option("--set",
                                                        help="Override a config value, KEY=VALUE with a dotted "
                                                             "key (repeatable), e.g. --set optim.batch_size=16."
                                                        )] = None,
) -> None:
    """Train the slice CNN on one patient-level fold; resumes after a kill from fold{K}/last.pt."""
    from ichd.errors import ConfigError
    from ichd.training.cnn import FOLD_ALL, train_cnn
    from ichd.training.config import load_cnn_config

    cfg = load_cnn_config(config, _parse_overrides(overrides))
    if fold == FOLD_ALL:
        which: int | str = FOLD_ALL
    else:
        try:
            which = int(fold)
        except ValueError:
            raise ConfigError(f"--fold {fold!r} must be a fold number or {FOLD_ALL!r}") from None
    result = train_cnn(cfg, which, out=out, restart=restart)
    m = result.metrics
    summary = ", ".join(f"{k}={m[k]:.4f}" for k in ("val/weighted_log_loss", "val/auc/any", "val/scan/auc/any")
                        if isinstance(m.get(k), float))
    typer.echo(f"fold {result.fold}: {result.final_checkpoint} ({result.seconds:.0f} s){'; ' + summary if summary else ''}")
    if result.oof_csv is not None:
        typer.echo(f"out-of-fold predictions: {result.oof_csv}")


@train_app.command("partial")
def train_partial_cmd(
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="Partial fine-tuning config YAML (e.g. configs/partial_ft_lite0.yaml)."
                                         )],
    folds: Annotated[str, typer.Option("--folds",
                                       help="Comma-separated folds to train (e.g. 0,2), or 'all' (default): every "
                                            "fold, then the merged OOF (oof.csv, cv_metrics.json).")] = "all",
    final_fit: Annotated[bool, typer.Option("--final-fit",
                                            help="Also train on every patient (fold{all}/final.pt).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: `out` in the config).")
                   ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config value, KEY=VALUE with a "
                                                                      "dotted key (repeatable).")] = None,
) -> None:
    """Partial fine-tuning: freeze the first blocks of an EfficientNet-Lite, cache their maps once per slice,
    and train the last blocks + head on the cached maps (flips and shifts of the maps) for every fold."""
    from ichd.errors import ConfigError
    from ichd.training.partial import load_partial_config, train_partial

    cfg = load_partial_config(config, _parse_overrides(overrides))
    which: list[int] | None = None
    if folds != "all":
        try:
            which = [int(f) for f in folds.split(",") if f.strip()]
        except ValueError:
            raise ConfigError(f"--folds {folds!r} must be 'all' or fold numbers like 0,2") from None
    doc = train_partial(cfg, which, out=out, final_fit=final_fit)
    run = Path(out if out is not None else cfg.out)
    if doc:
        pooled = doc["pooled"]
        typer.echo(f"{doc['n_slices']} slices: weighted log loss {pooled['weighted_log_loss']:.4f}, slice any-AUC "
                   f"{pooled.get('auc/any', float('nan')):.4f}, scan any-AUC {pooled.get('scan/auc/any', float('nan')):.4f}")
        typer.echo(f"wrote {run / 'oof.csv'} and {run / 'cv_metrics.json'}")
    else:
        typer.echo(f"trained fold(s) {folds} in {run}; merge once every fold has oof.csv (ichd train partial "
                   "trains the missing ones with --folds)")


@train_app.command("merge")
def merge_cmd(
    out: Annotated[Path, typer.Argument(help="Run folder holding fold0/ .. fold{K-1}/ (each with oof.csv).")],
) -> None:
    """Pool the folds' out-of-fold predictions into OUT/oof.csv and OUT/cv_metrics.json."""
    from ichd.constants import LABELS
    from ichd.training.cnn import merge_folds

    doc = merge_folds(out)
    pooled = doc["pooled"]
    typer.echo(f"{doc['n_slices']} slices, {doc['n_scans']} scans; weighted log loss "
               f"{pooled['weighted_log_loss']:.4f}")
    for lab in LABELS:
        auc = pooled.get(f"auc/{lab}")
        scan = pooled.get(f"scan/auc/{lab}")
        typer.echo(f"  {lab:<17} slice AUC {auc if auc is None else f'{auc:.4f}'}   scan AUC "
                   f"{scan if scan is None else f'{scan:.4f}'}")
    typer.echo(f"wrote {Path(out) / 'oof.csv'} and {Path(out) / 'cv_metrics.json'}")


def register(app: typer.Typer) -> None:
    """Add the ``train`` command group to ``app``."""
    app.add_typer(train_app, name="train")
