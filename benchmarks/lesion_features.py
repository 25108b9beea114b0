"""Can the lesion map say *whether* a slice bleeds, not only where? (issue 20 method probe, issue 22's map)

The lesion map head (issue 22, ``ichd train lesion-map``) is a per-pixel logistic regression over the frozen
encoder's maps, fitted on the 26 masked real-HU slices (16 CT-ICH patients). On bleeding slices its peak lands on
the bleed 77 % of the time, but it never saw a slice without blood. This probe refits it per CV fold and asks
whether its map, summarised inside the head (the largest cell probability, the means of the top 4 / 16 / 64 cells,
the fraction of head cells above 0.5), ranks slices by hemorrhage:

* ``--negatives 0``: the head fitted on the masks only (as shipped);
* ``--negatives N``: plus N random head cells of every training slice labelled "any" = 0 as negatives
  (:func:`ichd.training.lesion_map.negative_rows`): the slice labels say those cells hold no blood.

Every number is out of fold: the default model's CV folds (``--run``/folds.csv, repeat 0) decide, for each fold,
which patients' masks and negative slices the head is fitted on, and the held-out fold's slices are mapped by that
head. Reported per source: the summaries alone as slice scores, the default's own OOF "any" (``oof_slice.csv``,
the slice head without context), and ``stack``: a logistic regression over [that OOF logit, the summaries] fitted
on the other folds. The masked slices are scored by the same fold heads (pointing game, out of sample).

Usage (from the repository root; the summaries are cached in ``--out``/summaries_neg{N}.npz)::

    python benchmarks/lesion_features.py --negatives 48 --out benchmarks/results/lesion_features
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ichd.utils.runinfo import RunInfo

SUMMARIES = ("max", "top4", "top16", "top64", "frac50")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/cnn_multi_256.yaml", help="cache + label files")
    ap.add_argument("--cnn", default="runs/frozen_default/final/cnn.pt", help="frozen-encoder slice model")
    ap.add_argument("--run", default="runs/frozen_default/r0", help="CV run: folds.csv and oof_slice.csv")
    ap.add_argument("--negatives", type=int, default=48, help="negative cells per 'any' = 0 slice (0: masks only)")
    ap.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the per-pixel regression")
    ap.add_argument("--out", default="benchmarks/results/lesion_features")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def summaries(prob: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(len(SUMMARIES),) of one flattened map kept to its head cells."""
    v = np.sort(prob[head])[::-1]
    if not len(v):
        return np.zeros(len(SUMMARIES), np.float32)
    return np.array([v[0], v[:4].mean(), v[:16].mean(), v[:64].mean(), (v > 0.5).mean()], np.float32)


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """:func:`ichd.evaluation.metrics.roc_auc` (missing labels dropped), rounded; None without both classes."""
    from ichd.evaluation.metrics import roc_auc

    v = roc_auc(y, s)
    return None if np.isnan(v) else round(v, 4)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ichd.explain.localization import pointing_game, read_masked_slices
    from ichd.explain.pipeline import map_to_image
    from ichd.models.checkpoint import load_checkpoint
    from ichd.paths import data_dir
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.preprocessing.head_mask import head_mask
    from ichd.training.cnn import load_training_table
    from ichd.training.config import load_cnn_config
    from ichd.training.lesion_map import (
        LesionMapTrainConfig,
        MaskedCT,
        attach_lesion_map,
        cell_mask,
        fit_lesion_head,
        negative_rows,
        slice_rows,
        window_head_mask,
    )
    from ichd.utils.files import atomic_write_text
    from ichd.utils.progress import progress

    info = RunInfo.start("benchmarks/lesion_features.py", argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cache, labels = load_training_table(load_cnn_config(args.config))
    labels = labels.reset_index()
    folds = pd.read_csv(Path(args.run) / "folds.csv")
    fold_of = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int), strict=True))
    labels["fold"] = labels["patient_id"].astype(str).map(fold_of)
    cfg = LesionMapTrainConfig(C=args.C)
    ckpt = load_checkpoint(args.cnn)
    model = ckpt.model.eval()
    attach_lesion_map(model, cfg)
    preprocess = PreprocessConfig.from_dict(ckpt.preprocess)
    masked = read_masked_slices(data_dir() / "hu-slices")
    items = [MaskedCT(s.name, s.patient_id, s.hu, s.mask, tuple(s.series.spacing_mm[1:])) for s in masked]
    mask_rows = [slice_rows(model, preprocess, it) for it in items]
    neg_x = np.zeros((0, 1), np.float32)
    neg_fold = np.zeros(0, np.int64)
    if args.negatives:
        neg = labels[labels["any"] == 0]
        neg_x, owner = negative_rows(model, cache, neg["slice_id"].tolist(), cells=args.negatives, seed=args.seed,
                                     batch_size=args.batch_size)
        neg_fold = neg["fold"].to_numpy()[owner]
    fit_s = time.perf_counter() - t0
    heads = {}
    for k in sorted(set(fold_of.values())):
        rows = [r for r, it in zip(mask_rows, items, strict=True) if fold_of.get(it.patient_id) != k]
        heads[k] = fit_lesion_head(rows, cfg, neg_x[neg_fold != k] if len(neg_x) else None)

    def prob_map(feats: np.ndarray, k: int) -> np.ndarray:  # (F, G*G) -> (G*G,)
        mean, std, coef, b = heads[k]
        z = ((feats.T - mean) / std) @ coef + b
        return 1.0 / (1.0 + np.exp(-z))

    # the held-out fold's slices through that fold's head
    g = cfg.grid
    ids = labels["slice_id"].tolist()
    fold_arr = labels["fold"].to_numpy()
    summ = np.zeros((len(ids), len(SUMMARIES)), np.float32)
    with torch.inference_mode():
        for start in progress(range(0, len(ids), args.batch_size), desc="lesion maps (out of fold)", unit="batch"):
            chunk = ids[start:start + args.batch_size]
            imgs = np.stack([cache.slice_image(i) for i in chunk])
            feats = model.lesion_features(torch.from_numpy(imgs)).numpy()
            for j, img in enumerate(imgs):
                p = prob_map(feats[j].reshape(feats.shape[1], -1), int(fold_arr[start + j]))
                summ[start + j] = summaries(p, cell_mask(window_head_mask(img, cache.config.windows), g).ravel())
    np.savez_compressed(out / f"summaries_neg{args.negatives}.npz", ids=np.array(ids), feats=summ)
    # pointing game of the fold heads on the masked slices (each slice mapped by the head of its patient's fold)
    hits = []
    for s, r, it in zip(masked, mask_rows, items, strict=True):
        p = prob_map(r[0].T, fold_of[it.patient_id]).reshape(g, g)
        up = torch.nn.functional.interpolate(torch.from_numpy(p.astype(np.float32))[None, None],
                                             size=(cache.image_size, cache.image_size), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        img = map_to_image(up, s.mask.shape) * head_mask(s.hu)
        hits.append(bool(pointing_game(img, s.mask)))

    df = labels[["slice_id", "scan_id", "patient_id", "source", "fold"]].assign(y=labels["any"].to_numpy(float))
    df = df.join(pd.DataFrame(summ, columns=list(SUMMARIES)))
    oof = pd.read_csv(Path(args.run) / "oof_slice.csv", usecols=["slice_id", "any"])
    df = df.merge(oof, on="slice_id")
    mask_patients = {it.patient_id for it in items}
    eps = 1e-6
    logit = np.log(np.clip(df["any"], eps, 1 - eps) / np.clip(1 - df["any"], eps, 1))
    stack_x = np.column_stack([logit, df[list(SUMMARIES)].to_numpy()])
    stack = np.full(len(df), np.nan)
    known = ~df["y"].isna().to_numpy()
    for k in sorted(df["fold"].unique()):
        te = (df["fold"] == k).to_numpy()
        tr = ~te & known
        sc = StandardScaler().fit(stack_x[tr])
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(sc.transform(stack_x[tr]), df["y"].to_numpy()[tr])
        stack[te] = lr.predict_proba(sc.transform(stack_x[te]))[:, 1]
    df["stack"] = stack
    groups = {"rsna-series": df["source"] == "rsna-series", "ct-ich": df["source"] == "ct-ich",
              "ct-ich without the mask patients": (df["source"] == "ct-ich") & ~df["patient_id"].isin(mask_patients)}
    scores = {"default OOF any (slice head)": "any", **{f"map_{s}": s for s in SUMMARIES},
              "stack (OOF any + map)": "stack"}
    table: dict[str, dict[str, dict[str, object]]] = {}
    for name, col in scores.items():
        table[name] = {}
        for gname, sel in groups.items():
            sub = df[sel.to_numpy()]
            scan = sub.groupby("scan_id").agg(y=("y", "max"), s=(col, "max"))
            table[name][gname] = {"slice_auc": auc(sub["y"].to_numpy(float), sub[col].to_numpy(float)),
                                  "scan_auc_max": auc(scan["y"].to_numpy(float), scan["s"].to_numpy(float)),
                                  "slices": len(sub), "scans": len(scan)}
    result = {**info.finish(threads=args.threads),
              "negatives_per_slice": args.negatives, "negative_rows": len(neg_x), "C": args.C,
              "fit_seconds": round(fit_s, 1),
              "pointing_game_fold_heads": {"hits": int(sum(hits)), "slices": len(hits)},
              "cnn": args.cnn, "run": args.run, "results": table}
    atomic_write_text(out / f"metrics_neg{args.negatives}.json", json.dumps(result, indent=2) + "\n")
    print(f"pointing game (fold heads): {sum(hits)}/{len(hits)}")
    for name, row in table.items():
        print(f"{name:30s}", "  ".join(f"{k}: {v['slice_auc']}/{v['scan_auc_max']}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
