"""``ichd train frozen``: heads on a frozen pretrained encoder's cached embeddings, with repeated patient CV.

The command is added to :data:`ichd.cli.train.train_app` when this module is imported (``train_frozen`` comes
after ``train`` in :data:`ichd.cli.main.COMMAND_MODULES`); :func:`register` has nothing left to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ichd.cli.train import _parse_overrides, train_app


@train_app.command("frozen")
def train_frozen_cmd(
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="Frozen-encoder config YAML (e.g. configs/frozen_lite0.yaml).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: `out` in the config)."
                                             )] = None,
    final: Annotated[bool | None, typer.Option("--final/--no-final",
                                               help="Also fit on every patient -> OUT/final/{cnn,sequence}.pt "
                                                    "(default: `final` in the config).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results of a finished run in OUT "
                                            "(refused otherwise).")] = False,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value, KEY=VALUE with a dotted key (repeatable), e.g. "
                      "--set head.kind=mlp --set 'data.fold_seeds=[42]'.")] = None,
) -> None:
    """Embed every cached slice once with the frozen encoder(s) (cached in `embeddings_dir`, reused while the
    encoder, size, preprocessing and cache are unchanged), then fit the slice head and the neighbour-context head
    per patient fold and CV repeat, each calibrated on an inner CV of its training folds. Writes OOF predictions
    per repeat (OUT/r{i}/oof.csv; OUT/oof.csv is repeat 0), OUT/embed_oof.npz for `ichd train seq`, and
    OUT/metrics.json (pooled, per fold, per source)."""
    from ichd.training.frozen import load_frozen_config, train_frozen

    extra = _parse_overrides(overrides)
    if out is not None:
        extra["out"] = str(out)
    if final is not None:
        extra["final"] = final
    cfg = load_frozen_config(config, extra)
    m = train_frozen(cfg, overwrite=overwrite)

    def f(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "n/a"

    typer.echo(f"{m['name']}: {m['encoder']}, {m['n_features']} features, head {m['head']}; "
               f"embedding {m['embed_seconds']:.0f} s, CV {m['cv_seconds']:.0f} s")
    for i, rep in enumerate(m["repeats"]):
        p = rep["pooled"]
        folds = [r["auc/any"] for r in rep["per_fold"] if isinstance(r.get("auc/any"), float)]
        spread = f"; per-fold mean {sum(folds) / len(folds):.4f}" if folds else ""
        typer.echo(f"  repeat {i} (seed {rep['seed']}): slice any-AUC {f(p['auc/any'])}, scan {f(p['scan/auc/any'])}, "
                   f"weighted log loss {f(p['weighted_log_loss'])}{spread}")
        for src, s in (rep.get("per_source") or {}).items():
            typer.echo(f"    {src:<12} slice any-AUC {f(s['auc/any'])}, scan {f(s['scan/auc/any'])}")
    typer.echo(f"wrote {cfg.out}/oof.csv, {cfg.out}/metrics.json" + (f", {cfg.out}/final/" if cfg.final else ""))


def register(app: typer.Typer) -> None:
    """Nothing to do: importing this module added ``ichd train frozen`` to the ``train`` group."""
