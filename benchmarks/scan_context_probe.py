"""Does scan-level context help the frozen default's head? A scikit-learn probe on the cached embeddings.

For each CV repeat of a frozen-encoder run (its ``r{k}/folds.csv``), a logistic regression on "any" (standardised
features, C, balanced classes) over ``[slice, mean of 2 neighbours]`` and over ``[slice, mean of 2 neighbours, the
scan's mean embedding]``, out of fold; prints the OOF slice and scan (max) any-AUC per source. This is the probe
that led to ``head.scan_mean`` (docs/results.md, "The default model 3.3.0"); the shipped head is fitted by
``ichd train frozen`` with the RSNA loss over all six labels, not by this script.

    python benchmarks/scan_context_probe.py --run runs/frozen_default --C 0.002
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ichd.data.labels import label_matrix
    from ichd.evaluation.metrics import roc_auc
    from ichd.models.frozen import neighbour_mean, scan_mean_features
    from ichd.training.cnn import load_training_table
    from ichd.training.frozen import ScanRows, frozen_features, load_frozen_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/frozen_default.yaml", help="frozen run config (cache, encoder)")
    ap.add_argument("--run", type=Path, default=Path("runs/frozen_default"), help="run folder with r*/folds.csv")
    ap.add_argument("--C", type=float, default=0.002, help="inverse L2 strength of the logistic regression")
    args = ap.parse_args(argv)

    cfg = load_frozen_config(args.config)
    cache, labels = load_training_table(cfg)
    ids = labels.index.astype(str).tolist()
    x = frozen_features(cfg.encoder, cache, ids, cfg.embeddings_dir)
    y = label_matrix(labels, ids, allow_missing=True)[:, 0]
    patients = labels["patient_id"].astype(str).to_numpy()
    scans = labels["scan_id"].astype(str).to_numpy()
    source = labels["source"].astype(str).to_numpy()
    groups = ScanRows.from_table(scans, labels["slice_index"].to_numpy()).groups
    neighbours = np.empty_like(x)
    scan_mean = np.empty_like(x)
    with torch.no_grad():  # the context head's own input features (context 2; no prior: every scan has slices)
        for g in groups:
            xs, n = torch.from_numpy(x[g])[None], torch.tensor([len(g)])
            neighbours[g] = neighbour_mean(xs, n, 2)[0].numpy()
            scan_mean[g] = scan_mean_features(xs, n)[0].numpy()
    variants = {"slice + neighbours": np.hstack([x, neighbours]),
                "+ scan mean": np.hstack([x, neighbours, scan_mean])}
    for folds_csv in sorted(args.run.glob("r*/folds.csv")):
        fold = pd.read_csv(folds_csv).set_index("patient_id")["fold"].reindex(patients).to_numpy()
        for name, feats in variants.items():
            score = np.full(len(y), np.nan)
            for k in np.unique(fold):
                train, test = (fold != k) & ~np.isnan(y), fold == k
                scaler = StandardScaler().fit(feats[train])
                model = LogisticRegression(C=args.C, class_weight="balanced", max_iter=300)
                model.fit(scaler.transform(feats[train]), y[train].astype(int))
                score[test] = model.decision_function(scaler.transform(feats[test]))
            per_scan = (pd.DataFrame({"scan": scans, "p": score, "y": y, "source": source})
                        .groupby("scan").agg(p=("p", "max"), y=("y", "max"), source=("source", "first")))
            cells = []
            for src in ("rsna-series", "ct-ich"):
                s, t = source == src, per_scan["source"] == src
                cells.append(f"{src} slice {roc_auc(y[s], score[s]):.3f} scan {roc_auc(per_scan.y[t], per_scan.p[t]):.3f}")
            cells.append(f"pooled slice {roc_auc(y, score):.3f} scan {roc_auc(per_scan.y, per_scan.p):.3f}")
            print(f"{folds_csv.parent.name} C={args.C:g} {name:20s} " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
