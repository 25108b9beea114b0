"""The floor a fine-tuned model must beat: frozen ImageNet EfficientNet-Lite0 features + logistic regression.

Features: ``forward_features`` of the registry model ``efficientnet_lite0`` with its offline ImageNet weights, no
fine-tuning, on ichd's three windows at the cache's size (256 px), one 1280-d vector per slice. Classifier: one
scikit-learn ``LogisticRegression`` per label (default C = 1, L2) on standardised features, fitted on slices with
a known label. Two probes:

* ``ctich_only``: fitted on every CT-ICH slice, evaluated on every rsna-series slice (real scanner DICOM) — the
  reference row of issue 11 (slice any-AUC 0.834 there);
* ``cv``: fitted on the training patients of each fold of a CV run (``--folds``: its ``folds.csv``, the same
  patient split as the fine-tuned CNN), predicting the held-out patients — out-of-fold predictions, pooled and per
  source, directly comparable with the CNN's ``cv_metrics.json``.

Usage (from the repository root; the features are cached in ``--out``/features.npz)::

    python benchmarks/linear_probe.py --config configs/cnn_multi_256.yaml --folds runs/cnn_multi_256/folds.csv \\
        --out benchmarks/results/linear_probe
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
    ap.add_argument("--config", default="configs/cnn_multi_256.yaml", help="training config (cache + labels)")
    ap.add_argument("--folds", default="runs/cnn_multi_256/folds.csv", help="folds.csv of the CNN's CV run")
    ap.add_argument("--out", default="benchmarks/results/linear_probe")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regressions")
    return ap.parse_args(argv)


def extract(cache, slice_ids: list[str], batch_size: int) -> np.ndarray:
    import torch

    from ichd.data.datasets import SliceDataset
    from ichd.models import create_model
    from ichd.utils.progress import progress

    model = create_model("efficientnet_lite0", pretrained=True, input_size=int(cache.image_size)).eval()
    ds = SliceDataset(cache, slice_ids)
    feats = []
    with torch.inference_mode():
        for start in progress(range(0, len(ds), batch_size), desc="features", unit="batch"):
            x = torch.stack([ds[i]["image"] for i in range(start, min(start + batch_size, len(ds)))])
            feats.append(model.forward_features(x).numpy().astype(np.float32))
    return np.concatenate(feats)


def fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, c: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.zeros((len(x_te), y_tr.shape[1]))
    for k in range(y_tr.shape[1]):
        known = ~np.isnan(y_tr[:, k])
        y = y_tr[known, k]
        if y.min() == y.max():  # a label without positives in the training part (epidural in rsna-series)
            out[:, k] = float(y.mean())
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        clf.fit(x_tr[known], y)
        out[:, k] = clf.predict_proba(x_te)[:, 1]
    return out


def summarize(y: np.ndarray, p: np.ndarray, scans: list[str]) -> dict[str, float]:
    from ichd.evaluation.metrics import CumulativeMetrics

    acc = CumulativeMetrics()
    acc.update(np.clip(p, 1e-6, 1 - 1e-6), y, scans)
    m = acc.compute()
    return {k: m[k] for k in ("weighted_log_loss", "auc/any", "mean_auc", "scan/auc/any", "n", "scan/n")}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    from ichd.constants import LABELS
    from ichd.data.labels import label_matrix
    from ichd.training.cnn import load_training_table
    from ichd.training.config import load_cnn_config

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = RunInfo.start("benchmarks/linear_probe.py", argv)
    t0 = time.time()
    cfg = load_cnn_config(args.config)
    cache, labels = load_training_table(cfg)
    ids = labels.index.astype(str).tolist()
    fpath = out / "features.npz"
    if fpath.is_file() and list(np.load(fpath, allow_pickle=False)["slice_id"]) == ids:
        feats = np.load(fpath)["features"]
    else:
        feats = extract(cache, ids, args.batch_size)
        np.savez_compressed(fpath, features=feats, slice_id=np.asarray(ids))
    t_feat = time.time() - t0
    y = label_matrix(labels, ids, allow_missing=True)
    source = labels["source"].astype(str).to_numpy()
    scans = labels["scan_id"].astype(str).tolist()

    results: dict[str, object] = {}
    tr, te = source == "ct-ich", source == "rsna-series"
    p = fit_predict(feats[tr], y[tr], feats[te], args.C)
    results["ctich_only"] = {"train": "ct-ich (all 82 patients)", "test": "rsna-series (20 series)",
                             "rsna-series": summarize(y[te], p, [s for s, k in zip(scans, te) if k])}

    folds = pd.read_csv(args.folds, dtype={"patient_id": str}).set_index("patient_id")["fold"]
    fold = labels["patient_id"].astype(str).map(folds).to_numpy()
    if np.isnan(fold.astype(float)).any():
        raise SystemExit(f"{args.folds} does not cover every patient of the training table")
    oof = np.zeros_like(y)
    for k in sorted(set(fold.tolist())):
        val = fold == k
        oof[val] = fit_predict(feats[~val], y[~val], feats[val], args.C)
    cv = {"pooled": summarize(y, oof, scans)}
    for name in sorted(set(source)):
        rows = source == name
        cv[name] = summarize(y[rows], oof[rows], [s for s, k in zip(scans, rows) if k])
    results["cv"] = cv
    frame = labels[["scan_id", "patient_id", "slice_index", "source"]].copy()
    frame["fold"] = fold
    for c, lab in enumerate(LABELS):
        frame[lab] = oof[:, c]
    frame.to_csv(out / "oof.csv", float_format="%.6g")
    results["meta"] = info.finish(config=args.config, folds=args.folds, C=args.C, feature_seconds=round(t_feat, 1))
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
