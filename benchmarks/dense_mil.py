"""A dense slice classifier on the frozen encoder's cell features, trained from slice labels (issue 20 probe).

The frozen default pools the encoder's last map over the whole slice, so a small bleed is one part in hundreds of
its embedding. The lesion map (issue 22) reads the same encoder *per cell* (blocks 2, 4, 10 and the input windows,
``FrozenEncoderClassifier.lesion_features``); refitted with bleed-free slices as negatives it already ranks slices
(``benchmarks/lesion_features.py``). This probe learns the per-cell scorer from the slice labels themselves, as
multiple-instance learning: a cell scorer (linear, or a small MLP) gives every head cell six logits, the slice's
logits are the mean of its top-k head cells per label, and the RSNA weighted log loss on the slice labels trains
it (missing labels masked). Every prediction is out of fold on the default model's repeat-0 folds, and is also
stacked with the shipped head's OOF "any" (a logistic regression fitted on the other folds).

Stages (cell features cached in ``--features``, ~1.2 GB float16 at a 32 x 32 grid)::

    python benchmarks/dense_mil.py extract --features cache/dense-cells/lite0-256-g32
    python benchmarks/dense_mil.py cv --features cache/dense-cells/lite0-256-g32 --out benchmarks/results/dense_mil
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ichd.utils.runinfo import RunInfo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["extract", "cv"])
    ap.add_argument("--config", default="configs/cnn_multi_256.yaml", help="cache + label files")
    ap.add_argument("--cnn", default="runs/frozen_default/final/cnn.pt", help="frozen-encoder slice model")
    ap.add_argument("--run", default="runs/frozen_default/r0", help="CV run: folds.csv, oof.csv")
    ap.add_argument("--features", default="cache/dense-cells/lite0-256-g32")
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/dense_mil")
    ap.add_argument("--hidden", type=int, default=0, help="0: linear cell scorer; else an MLP with this width")
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="name of this variant in the results")
    return ap.parse_args(argv)


def extract(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from ichd.models.checkpoint import load_checkpoint
    from ichd.training.cnn import load_training_table
    from ichd.training.config import load_cnn_config
    from ichd.training.lesion_map import LesionMapTrainConfig, attach_lesion_map, cell_mask, window_head_mask
    from ichd.utils.progress import progress

    cache, labels = load_training_table(load_cnn_config(args.config))
    ids = labels.index.astype(str).tolist()
    model = load_checkpoint(args.cnn).model.eval()
    if model.lesion_head is None:
        attach_lesion_map(model, LesionMapTrainConfig())
    out = Path(args.features)
    out.mkdir(parents=True, exist_ok=True)
    g = args.grid
    feats = None
    head = np.zeros((len(ids), g * g), bool)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in progress(range(0, len(ids), 32), desc="cell features", unit="batch"):
            chunk = ids[start:start + 32]
            imgs = np.stack([cache.slice_image(i) for i in chunk])
            f = model.lesion_features(torch.from_numpy(imgs))
            f = F.adaptive_avg_pool2d(f, (g, g)).flatten(2).transpose(1, 2).numpy().astype(np.float16)
            if feats is None:
                feats = np.lib.format.open_memmap(out / "cells.npy", mode="w+", dtype=np.float16,
                                                  shape=(len(ids), g * g, f.shape[-1]))
            feats[start:start + len(chunk)] = f
            for j, img in enumerate(imgs):
                head[start + j] = cell_mask(window_head_mask(img, cache.config.windows), g).ravel()
    assert feats is not None
    feats.flush()
    np.save(out / "head.npy", head)
    (out / "meta.json").write_text(json.dumps({"ids": ids, "grid": g, "cnn": args.cnn, "cache": str(cache.root),
                                               "seconds": round(time.perf_counter() - t0, 1)}) + "\n")


def train_fold(x: np.ndarray, head: np.ndarray, y: np.ndarray, args: argparse.Namespace):
    """Fit the cell scorer on rows of ``x`` (N, G*G, F) float16; returns (mean, std, module)."""
    import torch

    from ichd.constants import LABEL_WEIGHTS

    torch.manual_seed(args.seed)
    cells = x[head] if head.any() else x.reshape(-1, x.shape[-1])
    sub = cells[np.random.default_rng(args.seed).choice(len(cells), size=min(len(cells), 200_000), replace=False)]
    mean = sub.mean(0)
    std = sub.std(0) + 1e-6
    f = x.shape[-1]
    n_out = len(LABEL_WEIGHTS)
    net = (torch.nn.Linear(f, n_out) if args.hidden <= 0 else
           torch.nn.Sequential(torch.nn.Linear(f, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, n_out)))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.l2)
    w = torch.tensor(LABEL_WEIGHTS, dtype=torch.float32)
    yt = torch.from_numpy(y.astype(np.float32))
    known = ~torch.isnan(yt)
    yt = torch.nan_to_num(yt)
    pos = (yt * known).sum(0)
    neg = ((1 - yt) * known).sum(0)
    pos_weight = (neg / pos.clamp_min(1)).clamp(max=20.0)
    mt, st = torch.from_numpy(mean), torch.from_numpy(std)
    ht = torch.from_numpy(head)
    n = len(x)
    for _ in range(args.epochs):
        perm = torch.randperm(n)
        for b in range(0, n, args.batch):
            idx = perm[b:b + args.batch]
            logits = slice_logits(net, torch.from_numpy(x[idx.numpy()]), ht[idx], mt, st, args.topk)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt[idx], reduction="none",
                                                                        pos_weight=pos_weight)
            loss = (loss * known[idx] * w).sum() / (known[idx] * w).sum().clamp_min(1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mean, std, net


def slice_logits(net, xb, hb, mean, std, k: int):
    import torch

    z = net((xb - mean) / std)  # (B, cells, 6)
    z = z.masked_fill(~hb[..., None], -1e4)
    kk = min(k, z.shape[1])
    top = z.topk(kk, dim=1).values  # (B, k, 6)
    has = hb.any(1)[:, None]
    out = top.mean(1)
    return torch.where(has, out, torch.full_like(out, -8.0))  # no head: "no bleed"


def predict(net, x, head, mean, std, k: int) -> np.ndarray:
    import torch

    out = []
    mt, st = torch.from_numpy(mean), torch.from_numpy(std)
    with torch.no_grad():
        for b in range(0, len(x), 256):
            out.append(slice_logits(net, torch.from_numpy(np.ascontiguousarray(x[b:b + 256])),
                                    torch.from_numpy(head[b:b + 256]), mt, st, k).numpy())
    return np.concatenate(out)


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """:func:`ichd.evaluation.metrics.roc_auc` (missing labels dropped), rounded; None without both classes."""
    from ichd.evaluation.metrics import roc_auc

    v = roc_auc(y, s)
    return None if np.isnan(v) else round(v, 4)


def cv(args: argparse.Namespace, info: RunInfo) -> None:
    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ichd.constants import LABELS
    from ichd.training.cnn import load_training_table
    from ichd.training.config import load_cnn_config

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    src = Path(args.features)
    meta = json.loads((src / "meta.json").read_text())
    x = np.load(src / "cells.npy", mmap_mode="r")
    x = np.asarray(x, dtype=np.float32)  # into memory: ~2.4 GB, converted once
    head = np.load(src / "head.npy")
    _, labels = load_training_table(load_cnn_config(args.config))
    labels = labels.loc[meta["ids"]]
    y = labels[list(LABELS)].to_numpy(float)
    folds = pd.read_csv(Path(args.run) / "folds.csv")
    fold_of = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int), strict=True))
    fold = labels["patient_id"].astype(str).map(fold_of).to_numpy()
    logits = np.zeros_like(y)
    for k in sorted(set(fold)):
        tr, te = fold != k, fold == k
        mean, std, net = train_fold(x[tr], head[tr], y[tr], args)
        logits[te] = predict(net, x[te], head[te], mean, std, args.topk)
        print(f"fold {k}: {time.perf_counter() - t0:.0f} s", flush=True)
    df = labels[["scan_id", "patient_id", "source"]].copy()
    df["y"] = y[:, 0]
    df["dense"] = logits[:, 0]
    df["fold"] = fold
    shipped = pd.read_csv(Path(args.run) / "oof.csv", usecols=["slice_id", "any"]).set_index("slice_id")["any"]
    df["shipped"] = shipped.reindex(df.index).to_numpy()
    eps = 1e-6
    sl = np.log(np.clip(df["shipped"], eps, 1 - eps) / np.clip(1 - df["shipped"], eps, 1))
    # the dense score with its neighbours' (mean of 2 each side), as the shipped head uses context
    df["dense_ctx"] = df.groupby("scan_id")["dense"].transform(
        lambda s: s.rolling(5, center=True, min_periods=1).mean()).to_numpy()
    sx = np.column_stack([sl, df["dense"], df["dense_ctx"]])
    stack = np.full(len(df), np.nan)
    known = ~np.isnan(df["y"].to_numpy())
    for k in sorted(set(fold)):
        te = fold == k
        tr = ~te & known
        sc = StandardScaler().fit(sx[tr])
        lr = LogisticRegression(max_iter=1000).fit(sc.transform(sx[tr]), df["y"].to_numpy()[tr])
        stack[te] = lr.predict_proba(sc.transform(sx[te]))[:, 1]
    df["stack"] = stack
    table = {}
    for name in ("shipped", "dense", "dense_ctx", "stack"):
        table[name] = {}
        for g in ("rsna-series", "ct-ich"):
            sub = df[df["source"] == g]
            scan = sub.groupby("scan_id").agg(y=("y", "max"), s=(name, "max"))
            per_fold = [auc(s["y"].to_numpy(float), s[name].to_numpy(float)) for _, s in sub.groupby("fold")]
            per_fold = [a for a in per_fold if a is not None]
            table[name][g] = {"slice_auc": auc(sub["y"].to_numpy(float), sub[name].to_numpy(float)),
                              "slice_auc_fold_mean": round(float(np.mean(per_fold)), 4) if per_fold else None,
                              "scan_auc_max": auc(scan["y"].to_numpy(float), scan["s"].to_numpy(float))}
    sub_auc = {lab: auc(y[:, i], logits[:, i]) for i, lab in enumerate(LABELS)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"h{args.hidden}_k{args.topk}"
    res = {**info.finish(threads=args.threads), "args": vars(args),
           "results": table, "pooled_slice_auc_per_label": sub_auc}
    (out / f"metrics_{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    df[["scan_id", "patient_id", "source", "fold", "y", "dense", "stack"]].to_csv(out / f"oof_{tag}.csv")
    for name, row in table.items():
        print(f"{name:10s}", "  ".join(f"{g}: {v['slice_auc']} (folds {v['slice_auc_fold_mean']}) / scan "
                                       f"{v['scan_auc_max']}" for g, v in row.items()))
    print("per label:", sub_auc)


def main(argv: list[str] | None = None) -> int:
    info = RunInfo.start("benchmarks/dense_mil.py", argv)
    args = parse_args(argv)
    extract(args) if args.stage == "extract" else cv(args, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
