"""Grad-CAM localization check on the 26 real-HU CT-ICH slices with hemorrhage masks (``hu-slices/``).

For every slice, the CT-ICH fold model whose held-out fold contains the slice's patient (out-of-fold: the model
never saw that patient) computes Grad-CAM maps for "any" and for each subtype the slice is labelled with, on the
layer the model registry names. Each map is mapped back onto the 512 x 512 matrix and scored against the mask:

* pointing game: the map's peak lies inside the mask dilated by ``--tolerance`` px (5);
* energy fraction: share of the map's mass inside the mask;
* chance levels of a uniform map over the head, for reading both numbers.

Means come with seeded patient-level bootstrap 95 % CIs. The sanity check of Adebayo et al. (2018) re-runs the
"any" maps on copies of each model with randomised weights (cascading from the classifier down, and full) and
reports the SSIM between real and randomised maps (well below 1 = the maps depend on what the model learned).
The masks do not separate subtypes, so a subtype's map is scored against the union mask of the slice.

Usage (from the repository root)::

    python benchmarks/localization.py --runs runs/cnn_ctich --out benchmarks/results/localization

Writes ``per_slice.csv``, ``randomization.csv``, ``summary.json``, ``summary.md`` and a few example PNGs (brain
window, heat map, cyan mask outline, white + at the map's peak) under ``--out``; prints the markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

#: Cascading randomisation stages: fraction of parameterised layers re-initialised, counted from the output.
CASCADE = (("classifier only", None), ("top 25%", 0.25), ("top 50%", 0.5), ("full (100%)", 1.0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs/cnn_ctich"),
                   help="CV run folder with folds.csv and fold<K>/<checkpoint>")
    p.add_argument("--checkpoint", default="final.pt",
                   help="checkpoint file name(s) inside each fold folder, comma-separated: the first that exists "
                        "is used (e.g. final.pt,last.pt while training is still running)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip (and report) slices whose fold has no checkpoint yet instead of failing")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/localization"), help="output folder")
    p.add_argument("--methods", default="gradcam,gradcam++", help="comma-separated; the first is the primary one")
    p.add_argument("--thresholds", default="default",
                   help="bundled model (name or folder) whose operating thresholds decide which slices count as "
                        "flagged; 'none' uses each fold checkpoint's own (0.5 when it stores none)")
    p.add_argument("--tolerance", type=int, default=5, help="pointing-game tolerance in pixels (512 matrix)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and randomisation seed")
    p.add_argument("--examples", type=int, default=6,
                   help="example slices to draw (hits and misses of the primary method), one PNG per method")
    p.add_argument("--example-slices", default=None,
                   help="comma-separated slice names to draw instead (e.g. 094_24,051_31)")
    p.add_argument("--layer", default=None,
                   help="DIAGNOSTIC ONLY: Grad-CAM on this dotted layer instead of the registry's gradcam_layer "
                        "(e.g. backbone.net._blocks.10, the stride-16 stage of EfficientNet-Lite0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    return p.parse_args(argv)


def fold_models(runs: Path, checkpoints: list[str], patients: set[str], *, allow_missing: bool
                ) -> dict[str, tuple[int, Path, int | None]]:
    """patient id -> (fold, checkpoint path, epoch) of the model that held the patient out.

    The held-out patients stored in the checkpoint (``extra["val_patients"]``) are checked against
    ``folds.csv``. Patients whose fold has none of ``checkpoints`` are left out when ``allow_missing``.
    """
    import pandas as pd

    from ichd.errors import InputError
    from ichd.models.checkpoint import read_checkpoint

    folds = pd.read_csv(runs / "folds.csv")
    fold_of = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int), strict=True))
    lost = sorted(patients - set(fold_of))
    if lost:
        raise InputError(f"{runs / 'folds.csv'} has no fold for {lost}")
    out: dict[str, tuple[int, Path, int | None]] = {}
    checked: dict[int, tuple[Path, int | None, set[str]] | None] = {}
    for pid in sorted(patients):
        k = fold_of[pid]
        if k not in checked:
            found = [runs / f"fold{k}" / name for name in checkpoints if (runs / f"fold{k}" / name).is_file()]
            if not found:
                if not allow_missing:
                    raise InputError(f"no {' or '.join(checkpoints)} in {runs / f'fold{k}'}",
                                     hint="wait for the fold to finish, or pass --allow-missing")
                checked[k] = None
            else:
                raw = read_checkpoint(found[0])
                val = set(map(str, (raw.get("extra") or {}).get("val_patients") or []))
                checked[k] = (found[0], raw.get("epoch"), val)
        entry = checked[k]
        if entry is None:
            continue
        path, epoch, val = entry
        if val and pid not in val:
            raise InputError(f"{path} does not list {pid} among its held-out patients")
        out[pid] = (k, path, epoch)
    return out


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    from ichd.constants import LABELS
    from ichd.explain.gradcam import GradCAM
    from ichd.explain.localization import (
        bootstrap_means,
        chance_levels,
        energy_fraction,
        head_region,
        map_ssim,
        parameterised_layers,
        peak,
        pointing_game,
        randomized_copy,
        read_masked_slices,
    )
    from ichd.explain.pipeline import map_to_image
    from ichd.inference.predictor import Predictor
    from ichd.paths import data_dir
    from ichd.utils.files import atomic_path, atomic_write_text

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    all_slices = read_masked_slices(data_dir() / "hu-slices")
    models = fold_models(args.runs, [c.strip() for c in args.checkpoint.split(",") if c.strip()],
                         {s.patient_id for s in all_slices}, allow_missing=args.allow_missing)
    slices = [s for s in all_slices if s.patient_id in models]
    skipped = sorted(s.name for s in all_slices if s.patient_id not in models)
    predictors: dict[int, Predictor] = {}
    op_thresholds: dict[str, float] | None = None
    if args.thresholds != "none":
        from ichd.models.bundled import get_bundled, read_bundle

        bundle = read_bundle(Path(args.thresholds)) if Path(args.thresholds).is_dir() else get_bundled(args.thresholds)
        op_thresholds = {c: float(bundle.thresholds[c]) for c in LABELS}
    rows: list[dict[str, Any]] = []
    rand_rows: list[dict[str, Any]] = []
    maps_for_examples: dict[tuple[str, str, str], np.ndarray] = {}
    for s in slices:
        k, path, _epoch = models[s.patient_id]
        if k not in predictors:
            predictors[k] = Predictor.load(path, device=args.device)
        pr = predictors[k]
        x = pr.model_inputs(s.series)
        classes = ["any"] + [c for c in LABELS[1:] if s.labels[c]]
        head = head_region(s.hu)
        chance_hit, chance_energy = chance_levels(s.mask, head, tolerance_px=args.tolerance)
        from scipy.ndimage import distance_transform_edt

        dist_to_mask = distance_transform_edt(~s.mask)
        real_any = None
        for method in methods:
            res = GradCAM(pr.cnn, args.layer, method=method).compute(x, classes)
            probs = res.probabilities[0]
            for j, c in enumerate(classes):
                cam = map_to_image(res.maps[0, j], s.mask.shape)
                p = peak(cam)
                rows.append({
                    "slice": s.name, "patient_id": s.patient_id, "ctich_slice": s.ctich_slice, "fold_model": k,
                    "checkpoint": str(path), "method": method, "class": c,
                    "probability": round(float(probs[LABELS.index(c)]), 4),
                    "threshold": (op_thresholds or pr.thresholds)[c],
                    "flagged": int(float(probs[LABELS.index(c)]) >= (op_thresholds or pr.thresholds)[c]),
                    "hit": int(pointing_game(cam, s.mask, tolerance_px=args.tolerance)),
                    "energy_fraction": round(energy_fraction(cam, s.mask), 4),
                    "chance_hit": round(chance_hit, 4), "chance_energy": round(chance_energy, 4),
                    "peak_row": p[0] if p else -1, "peak_col": p[1] if p else -1,
                    "peak_to_mask_px": round(float(dist_to_mask[p]), 1) if p else float("nan"),
                    "peak_in_head": int(bool(head[p])) if p else 0,
                    "mask_pixels": int(s.mask.sum()), "map_resolution": res.raw.shape[-1],
                })
                maps_for_examples[(s.name, method, c)] = cam
                if method == methods[0] and c == "any":
                    real_any = cam
        # Sanity check: the primary method's "any" map on randomised copies of the same model.
        assert real_any is not None
        n_layers = len(parameterised_layers(pr.cnn))
        for label, frac in CASCADE:
            if frac is None:
                model = randomized_copy(pr.cnn, mode="cascading", fraction=1.0 / n_layers, seed=args.seed)
            else:
                model = randomized_copy(pr.cnn, mode="cascading" if frac < 1 else "full", fraction=frac,
                                        seed=args.seed)
            rcam = map_to_image(GradCAM(model, args.layer, method=methods[0])(x, "any")[0], s.mask.shape)
            rand_rows.append({"slice": s.name, "patient_id": s.patient_id, "fold_model": k, "randomization": label,
                              "ssim": round(map_ssim(real_any, rcam), 4),
                              "hit": int(pointing_game(rcam, s.mask, tolerance_px=args.tolerance)),
                              "energy_fraction": round(energy_fraction(rcam, s.mask), 4)})
    df = pd.DataFrame(rows)
    rdf = pd.DataFrame(rand_rows)

    summary: dict[str, Any] = {"localization": {}, "randomization": {}}
    for method in methods:
        summary["localization"][method] = {}
        for c in LABELS:
            sub = df[(df["method"] == method) & (df["class"] == c)]
            if sub.empty:
                continue
            est = bootstrap_means({key: sub[key].to_numpy() for key in
                                   ("hit", "energy_fraction", "chance_hit", "chance_energy", "peak_in_head")},
                                  sub["patient_id"].tolist(), n_boot=args.n_boot, seed=args.seed)
            summary["localization"][method][c] = {key: e.to_dict() for key, e in est.items()}
            # The maps a reader would actually see: slices the model flags for this class.
            flagged = sub[sub["flagged"] == 1]
            if not flagged.empty:
                fest = bootstrap_means({"hit": flagged["hit"].to_numpy(),
                                        "energy_fraction": flagged["energy_fraction"].to_numpy()},
                                       flagged["patient_id"].tolist(), n_boot=args.n_boot, seed=args.seed)
                summary["localization"][method][c]["flagged"] = {key: e.to_dict() for key, e in fest.items()}
    for label, _ in CASCADE:
        sub = rdf[rdf["randomization"] == label]
        est = bootstrap_means({key: sub[key].to_numpy() for key in ("ssim", "hit", "energy_fraction")},
                              sub["patient_id"].tolist(), n_boot=args.n_boot, seed=args.seed)
        summary["randomization"][label] = {key: e.to_dict() for key, e in est.items()}

    wall = time.perf_counter() - t0
    command = "python benchmarks/localization.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    summary["meta"] = {
        "command": command.strip(), "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()}-core, torch threads {args.threads}, device {args.device}",
        "wall_s": round(wall, 1), "n_slices": len(slices), "n_patients": len({s.patient_id for s in slices}),
        "tolerance_px": args.tolerance, "n_boot": args.n_boot, "seed": args.seed, "methods": methods,
        "gradcam_layer": {str(k): args.layer or p.cnn.default_cfg.get("gradcam_layer")
                          for k, p in sorted(predictors.items())},
        "layer_source": "override (--layer, diagnostic)" if args.layer else "model registry (default_cfg)",
        "model": {str(k): p.identity.name for k, p in sorted(predictors.items())},
        "checkpoints": {str(k): {"path": str(path), "epoch": epoch}
                        for k, path, epoch in sorted({v for v in models.values()})},
        "skipped_slices": skipped,
        "flag_thresholds": f"bundle {args.thresholds!r}" if op_thresholds else "each checkpoint's own",
        "map_resolution": int(df["map_resolution"].iloc[0]),
        "ctich_masks": "none in the data (README: the CT-ICH copy has no *_HGE_Seg masks)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "per_slice.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(args.out / "randomization.csv") as tmp:
        rdf.to_csv(tmp, index=False)
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2))
    md = markdown(summary)
    atomic_write_text(args.out / "summary.md", md)
    write_examples(args, slices, df, maps_for_examples, methods)
    print(md)
    return 0


def _ci(e: dict[str, Any], pct: bool = False) -> str:
    f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.2f}")
    return f"{f(e['mean'])} [{f(e['ci_low'])}, {f(e['ci_high'])}]"


def _flagged(est: dict[str, Any]) -> str:
    if "flagged" not in est:
        return "0"
    return f"{est['flagged']['hit']['n']}, {_ci(est['flagged']['hit'], True)}"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (what goes into docs/results.md)."""
    meta = summary["meta"]
    lines = [(f"Command: `{meta['command']}` — {meta['date_utc']}, {meta['machine']}, wall {meta['wall_s']} s. "
             f"{meta['n_slices']} slices / {meta['n_patients']} patients; maps on "
             f"`{', '.join(sorted(set(meta['gradcam_layer'].values())))}` ({meta['layer_source']}) "
             f"({meta['map_resolution']}x{meta['map_resolution']} before upsampling); tolerance "
             f"{meta['tolerance_px']} px; 95% patient-level bootstrap CIs ({meta['n_boot']} reps, seed {meta['seed']})."),
             ""]
    ck = "; ".join(f"fold{k}: {v['path']} (epoch {v['epoch']})" for k, v in meta["checkpoints"].items())
    lines += [f"Out-of-fold models: {ck}.", ""]
    if meta["skipped_slices"]:
        lines += [f"Skipped (fold model not available yet): {', '.join(meta['skipped_slices'])}.", ""]
    for method, per_class in summary["localization"].items():
        lines += [f"**{method}** (out-of-fold models)", "",
                  ("| class | slices (patients) | pointing game | chance | energy in mask | chance "
                  "| flagged by the model: n, pointing game | peak inside the head |"),
                  "|---|---|---|---|---|---|---|---|"]
        for c, est in per_class.items():
            lines.append(f"| {c} | {est['hit']['n']} ({est['hit']['n_patients']}) | {_ci(est['hit'], True)} | "
                         f"{100 * est['chance_hit']['mean']:.0f}% | {_ci(est['energy_fraction'])} | "
                         f"{est['chance_energy']['mean']:.2f} | {_flagged(est)} | "
                         f"{100 * est['peak_in_head']['mean']:.0f}% |")
        lines.append("")
    lines += [("**Randomisation sanity check** (Adebayo et al. 2018; 'any' maps, "
              f"{next(iter(summary['localization']))}): SSIM real vs randomised, and localization of the randomised maps"),
              "", "| weights re-initialised | SSIM | pointing game | energy in mask |", "|---|---|---|---|"]
    for label, est in summary["randomization"].items():
        lines.append(f"| {label} | {_ci(est['ssim'])} | {_ci(est['hit'], True)} | {_ci(est['energy_fraction'])} |")
    return "\n".join(lines) + "\n"


def write_examples(args: argparse.Namespace, slices: list[Any], df: Any, maps: dict[tuple[str, str, str], np.ndarray],
                   methods: list[str]) -> None:
    """Overlays of the 'any' maps with the mask outline and the map's peak: a few hits and misses of the primary
    method (or ``--example-slices``), one PNG per method."""
    from ichd.explain.overlay import overlay_figure, save_figure

    sub = df[df["class"] == "any"].sort_values("slice")
    if args.example_slices:
        chosen = [n.strip() for n in args.example_slices.split(",") if n.strip()]
    else:
        prim = sub[sub["method"] == methods[0]]
        hits = prim[prim["hit"] == 1]["slice"].tolist()
        misses = prim[prim["hit"] == 0]["slice"].tolist()
        half = args.examples // 2
        chosen = (hits[:max(half, args.examples - len(misses))]
                  + misses[:max(half, args.examples - len(hits))])[:args.examples]
    by_name = {s.name: s for s in slices}
    for name in chosen:
        s = by_name[name]
        for method in methods:
            row = sub[(sub["slice"] == name) & (sub["method"] == method)].iloc[0]
            outcome = "hit" if row["hit"] else "miss"
            fig = overlay_figure(
                s.hu, maps[(name, method, "any")], class_name="any", probability=float(row["probability"]),
                subtitle=f"{method} — {name} ({s.patient_id}), out-of-fold model fold{row['fold_model']}; "
                         f"cyan: hemorrhage mask; +: map peak ({outcome})")
            for ax in fig.axes[:2]:
                ax.contour(s.mask, levels=[0.5], colors="cyan", linewidths=0.8)
            if row["peak_row"] >= 0:
                fig.axes[1].plot(row["peak_col"], row["peak_row"], marker="+", color="white", markersize=12, mew=2)
            save_figure(fig, args.out / "examples" / f"{name}_any_{method.replace('++', 'pp')}_{outcome}.png")


if __name__ == "__main__":
    sys.exit(main())
