"""The LRCN paper's baselines (Qiu et al.): PCA to 200 components of the raw pixels of the three windows at
128 x 128 px, then a logistic regression or a random forest of "any" (hemorrhage yes/no).

Cross-validated on the same patient folds and written in the same layout as the slice-CNN runs
(:mod:`ichd.training.cnn`), so the same evaluation reads them::

    OUT/folds.csv, OUT/fold{K}/config.yaml, OUT/fold{K}/model.joblib (the fitted scikit-learn pipeline),
    OUT/fold{K}/metrics.json, OUT/fold{K}/oof.csv

PCA and classifier are fitted on the training folds' slices only. A standard scaler between PCA and the classifier
puts the components on one scale (the paper does not say; it only helps the logistic regression converge). The
models predict "any" alone; the subtype columns of ``oof.csv`` are the training prevalence (as for every binary
model in ichd, :func:`ichd.training.variants.any_only_probs`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.experiments.config import BaselineConfig
from ichd.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class BaselineFold:
    """What :func:`run_baseline_fold` produced."""

    fold: int
    out_dir: Path
    oof_csv: Path
    metrics: dict[str, Any]


def pixel_matrix(cache: Any, slice_ids: list[str], image_size: int) -> np.ndarray:
    """(n, 3 * S * S) float32 in [0, 1]: each slice's windows resized (area) to ``image_size``, flattened."""
    from ichd.preprocessing.pipeline import from_cache_dtype
    from ichd.preprocessing.resize import resize_slices

    table = cache.slices.loc[slice_ids]
    out = np.empty((len(slice_ids), 3 * image_size * image_size), dtype=np.float32)
    position = {s: i for i, s in enumerate(slice_ids)}
    for scan_id, rows in table.groupby("scan_id", sort=False):
        idx = rows["slice_index"].to_numpy(dtype=np.int64)
        x = from_cache_dtype(np.asarray(cache.array(str(scan_id))[idx]))
        if x.shape[-1] != image_size:
            x = resize_slices(x, image_size, mode="area")
        for sid, img in zip(rows.index.astype(str), x):
            out[position[sid]] = img.reshape(-1)
    return out


def make_pipeline(cfg: BaselineConfig, n_samples: int, n_features: int) -> tuple[Any, int]:
    """``(unfitted scikit-learn pipeline, PCA components used)``; components are capped at what the training
    data allows (fewer slices than 200 in small runs)."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(cfg.components, n_samples - 1, n_features)
    if k < 1:
        raise InputError(f"the PCA baseline needs at least 2 training slices, got {n_samples}")
    if cfg.classifier == "logreg":
        clf: Any = LogisticRegression(max_iter=cfg.max_iter, random_state=cfg.seed)
    else:
        clf = RandomForestClassifier(n_estimators=cfg.n_estimators, random_state=cfg.seed, n_jobs=1)
    steps = [("pca", PCA(n_components=k, svd_solver="randomized", random_state=cfg.seed)),
             ("scale", StandardScaler()), ("clf", clf)]
    return Pipeline(steps), k


def count_parameters(pipeline: Any) -> int:
    """Learned numbers: PCA components and mean, scaler, and the classifier's coefficients or tree nodes."""
    pca, scale, clf = (pipeline.named_steps[k] for k in ("pca", "scale", "clf"))
    n = int(pca.components_.size + pca.mean_.size + scale.mean_.size + scale.scale_.size)
    if hasattr(clf, "coef_"):
        return n + int(clf.coef_.size + clf.intercept_.size)
    return n + int(sum(t.tree_.node_count for t in clf.estimators_))


def run_baseline_fold(cfg: BaselineConfig, cache: Any, labels: Any, folds: Any, fold: int, out: Path,
                      data_settings: dict[str, Any]) -> BaselineFold:
    """Fit on every fold but ``fold``, predict ``fold``; write the fold's files (module docstring)."""
    import joblib

    from ichd.config import save_config
    from ichd.data.folds import split_fold
    from ichd.evaluation.metrics import CumulativeMetrics
    from ichd.training.cnn import fold_dir_name, predictions_frame
    from ichd.training.variants import any_only_probs, label_prevalence
    from ichd.utils.files import atomic_path, atomic_write_text

    t0 = time.perf_counter()
    fold_dir = out / fold_dir_name(fold)
    train_df, val_df = split_fold(labels, folds, fold)
    train_df = train_df[train_df["any"].notna()]  # slices without an "any" label cannot be fitted
    x_train = pixel_matrix(cache, list(train_df.index.astype(str)), cfg.image_size)
    y_train = train_df["any"].to_numpy(dtype=np.int64)
    if len(set(y_train.tolist())) < 2:
        raise InputError(f"fold {fold}: the training slices hold only one class of 'any'",
                         hint="use more patients (both classes are needed to fit a classifier)")
    pipeline, k = make_pipeline(cfg, len(y_train), x_train.shape[1])
    tf = time.perf_counter()
    pipeline.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - tf
    del x_train
    x_val = pixel_matrix(cache, list(val_df.index.astype(str)), cfg.image_size)
    tp = time.perf_counter()
    p_any = pipeline.predict_proba(x_val)[:, list(pipeline.classes_).index(1)]
    predict_seconds = time.perf_counter() - tp
    probs = any_only_probs(np.zeros((len(val_df), len(LABELS)), np.float32), label_prevalence(train_df))
    probs[:, 0] = p_any
    frame = predictions_frame(val_df, probs, fold)
    acc = CumulativeMetrics()
    acc.update(probs, val_df[list(LABELS)].to_numpy(np.float64), val_df["scan_id"].astype(str).tolist())
    explained = float(pipeline.named_steps["pca"].explained_variance_ratio_.sum())
    metrics = {"fold": fold, "model": f"pca{k}+{cfg.classifier}", "kind": "pca_baseline", "finished": True,
               "image_size": cfg.image_size, "pca_components": k, "pca_explained_variance": explained,
               "train_slices": len(train_df), "val_slices": len(val_df),
               "val_patients": sorted(val_df["patient_id"].astype(str).unique().tolist()),
               "fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
               "parameters": count_parameters(pipeline), "wall_seconds": time.perf_counter() - t0,
               "oof": {f"val/{key}": float(v) for key, v in acc.compute().items()}}
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, fold_dir / "config.yaml")
    atomic_write_text(fold_dir / "data.json", json.dumps(data_settings, indent=2))
    with atomic_path(fold_dir / "model.joblib") as tmp:
        joblib.dump(pipeline, tmp)
    oof_csv = fold_dir / "oof.csv"
    atomic_write_text(oof_csv, frame.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(fold_dir / "metrics.json", json.dumps(_finite(metrics), indent=2))
    log.info("baseline fold %d: PCA %d (%.0f%% variance) + %s, %d train / %d validation slices, fit %.1f s", fold,
             k, 100 * explained, cfg.classifier, len(train_df), len(val_df), fit_seconds)
    return BaselineFold(fold=fold, out_dir=fold_dir, oof_csv=oof_csv, metrics=metrics)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
