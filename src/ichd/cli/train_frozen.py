"""``ichd train frozen``: heads on a frozen pretrained encoder's cached embeddings, with repeated patient CV; and
``ichd train lesion-map``: the per-pixel lesion head of such a model, fitted on hemorrhage masks.

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


@train_app.command("lesion-map")
def train_lesion_map_cmd(
    cnn: Annotated[Path, typer.Option("--cnn", help="The frozen-encoder slice model to extend: a cnn.pt (e.g. "
                                      "runs/frozen_default/final/cnn.pt).")],
    masks: Annotated[Path | None, typer.Option("--masks", help="Masked slices in the hu-slices layout: labels.csv (file, "
                                        "mask, patient, ctich_slice, labels), dicom/*.dcm in HU, masks/*.png; "
                                        "default $ICHD_DATA/hu-slices.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: cnn.pt (the model with its lesion head), "
                                      "lopo_maps.npz, metrics.json.")] = Path("runs/lesion_map"),
    c: Annotated[float, typer.Option("--C", help="Inverse L2 strength of the per-pixel logistic regression.")] = 0.01,
    lopo: Annotated[bool, typer.Option("--lopo/--no-lopo", help="Also write leave-one-patient-out maps of every "
                                       "slice (to measure the maps out of sample).")] = True,
    negatives_from: Annotated[Path | None, typer.Option(
        "--negatives-from", exists=True, dir_okay=False, help="The model's training config (e.g. configs/frozen_default.yaml): random head "
        "cells of every slice its labels call bleed-free ('any' = 0) become negatives too, so that the map also "
        "stays low on slices without hemorrhage. Its cache must be the model's input.")] = None,
    negative_cells: Annotated[int, typer.Option("--negative-cells", min=1,
                                                help="Head cells drawn from each bleed-free slice.")] = 48,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished run in OUT.")] = False,
) -> None:
    """Fit the lesion map head of a frozen-encoder model on hemorrhage masks: a logistic regression per pixel over
    the frozen encoder's multi-stage maps and the input windows on a 64 x 64 grid. The model's evidence map
    (`ichd explain`, reports, viewer) becomes this map; its slice and scan outputs do not change."""
    from ichd.explain.localization import read_masked_slices
    from ichd.paths import data_dir
    from ichd.training.lesion_map import LesionMapTrainConfig, MaskedCT, train_lesion_map

    root = masks if masks is not None else data_dir() / "hu-slices"
    items = [MaskedCT(s.name, s.patient_id, s.hu, s.mask, tuple(s.series.spacing_mm[1:]))  # type: ignore[arg-type]
             for s in read_masked_slices(root)]
    m = train_lesion_map(cnn, items, out, LesionMapTrainConfig(C=c), overwrite=overwrite, lopo=lopo,
                         negatives_from=negatives_from, negative_cells=negative_cells)
    typer.echo(f"lesion map head fitted on {m['slices']} slices of {m['patients']} patients in "
               f"{m['wall_seconds']:.0f} s -> {out / 'cnn.pt'}" + (f", {out / 'lopo_maps.npz'}" if lopo else ""))
    if "negatives" in m:
        typer.echo(f"  with {m['negatives']['rows']} bleed-free cells of {m['negatives']['patients']} patients as "
                   "negatives")


def register(app: typer.Typer) -> None:
    """Nothing to do: importing this module added ``ichd train frozen`` to the ``train`` group."""
