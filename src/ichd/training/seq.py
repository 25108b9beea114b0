"""Sequence-model training (``ichd train seq``): feature selection + BiLSTM over CNN embeddings, with patient CV.

Input is an embedding table written by ``ichd embed`` in out-of-fold mode: every slice's embedding and CNN
probabilities come from the fold CNN that did not train on that patient, and the table records that fold. For
CV fold ``k`` the feature selector and the sequence model are fitted on the rows of every other fold and
predict fold ``k``; so the sequence CV uses exactly the CNN's patient folds. The ``weight_*`` selectors use the
classifier weights of fold ``k``'s CNN, whose training patients are exactly the sequence model's.

Each scan is one sequence (slices inferior -> superior, never truncated); a batch of ``batch_scans`` scans is
padded and the model packs it. The loss is the RSNA weighted log loss
(:class:`ichd.training.losses.WeightedBCEWithLogits`) over every real slice of the batch. ``seeds`` trains one
model per seed and averages their probabilities (checkpoints are written for every seed).

Outputs under ``out/``: ``config.yaml``, ``fold{k}/seed{s}.pt`` (model + selector + CNN provenance),
``oof.csv`` (ichd predictions CSV), ``oof_scans.csv`` (scan probabilities under ``scan_rule``),
``metrics.json``; with ``final: true`` also ``final/model.pt`` trained on every patient.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError
from ichd.models.feature_selection import WEIGHT_METHODS, FeatureSelector, SelectorConfig
from ichd.models.scan_rules import RADNET_MIN_RUN, SCAN_RULES, scan_probabilities
from ichd.models.sequence import SeqModelConfig
from ichd.training.variants import ANY_ONLY_WEIGHTS, any_only_probs
from ichd.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class SeqOptimConfig:
    """Optimisation. Seed defaults: Adam, lr 1e-4, 4 epochs, one scan per step."""

    epochs: int = 4
    lr: float = 1e-4
    batch_scans: int = 1
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max gradient norm (None = no clipping)
    seeds: list[int] = field(default_factory=lambda: [0])  # one model per seed; probabilities averaged
    #: Early stopping on an inner validation split of the *training* patients (0 = off, train all epochs):
    #: the model of the epoch with the lowest inner-validation loss is kept.
    val_fraction: float = 0.0
    patience: int = 3  # epochs without improvement before stopping (with val_fraction > 0)
    max_steps: int | None = None  # stop each model after this many optimizer steps (quick checks); None = no cap


@dataclass
class SeqTrainConfig:
    """Everything that defines one sequence-model run (``configs/seq_*.yaml``).

    Attributes:
        embeddings: ``.npz`` written by ``ichd embed`` (OOF mode for cross-validation).
        labels: labels file read by :func:`ichd.data.labels.read_labels` (CT-ICH ``labels.csv``, RSNA csv or
            an ichd labels CSV), or a list of them (one per data source); relative paths not found from the
            working directory are looked up in ``$ICHD_DATA``. Missing labels are masked.
        folds: CV folds to run (None = every fold in the table; [] = none, e.g. only ``final``).
        final: also train on every patient -> ``final/model.pt``.
        cnn_checkpoint: CNN checkpoint embedded in the final model (the CNN to run at inference; its classifier
            weights drive the ``weight_*`` selectors of the final model). Empty: no CNN embedded.
        scan_rule: ``max`` or ``consecutive`` (RADnet: >= ``min_run`` consecutive positive slices).
    """

    name: str = "seq"
    embeddings: str = "runs/embed_ctich/oof.npz"
    labels: str | list[str] = "ct-ich/labels.csv"  # one file, or one per data source
    out: str = "runs/seq_ctich"
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    model: SeqModelConfig = field(default_factory=SeqModelConfig)
    optim: SeqOptimConfig = field(default_factory=SeqOptimConfig)
    folds: list[int] | None = None
    final: bool = False
    cnn_checkpoint: str = ""
    scan_rule: Literal["max", "consecutive"] = "max"
    min_run: int = RADNET_MIN_RUN
    device: str = "auto"
    threads: int | None = None
    save_checkpoints: bool = True
    #: "all": the six labels; "any": a binary model (LRCN), trained on "any" alone, its subtype outputs replaced by
    #: the training prevalence (as ichd.training.variants does for the CNN).
    targets: Literal["all", "any"] = "all"

    def __post_init__(self) -> None:
        o = self.optim
        if o.epochs < 1 or o.lr <= 0 or o.batch_scans < 1 or not o.seeds:
            raise ConfigError("optim needs epochs >= 1, lr > 0, batch_scans >= 1 and at least one seed")
        if not 0.0 <= o.val_fraction < 0.5 or o.patience < 1:
            raise ConfigError(f"optim.val_fraction must be in [0, 0.5) and patience >= 1, got {o.val_fraction}, "
                              f"{o.patience}")
        if self.scan_rule not in SCAN_RULES:
            raise ConfigError(f"scan_rule must be one of {SCAN_RULES}, got {self.scan_rule!r}")
        if self.min_run < 1:
            raise ConfigError(f"min_run must be >= 1, got {self.min_run}")
        if o.max_steps is not None and o.max_steps < 1:
            raise ConfigError(f"optim.max_steps must be >= 1 (or null), got {o.max_steps}")


def load_seq_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SeqTrainConfig:
    """Load a :class:`SeqTrainConfig` YAML file with dotted-key ``overrides``."""
    from ichd.config import load_config

    return load_config(SeqTrainConfig, path, overrides)


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ScanBatchData:
    """Scans as lists of per-slice arrays (features after selection, CNN probs, labels), in one order."""

    features: list[np.ndarray]
    probs: list[np.ndarray]
    labels: list[np.ndarray] | None
    rows: list[np.ndarray]  # table row indices of each scan, slice order
    patients: list[str]

    def take(self, idx: Any) -> ScanBatchData:
        """The scans at positions ``idx``."""
        pick = [int(i) for i in idx]
        return ScanBatchData([self.features[i] for i in pick], [self.probs[i] for i in pick],
                             None if self.labels is None else [self.labels[i] for i in pick],
                             [self.rows[i] for i in pick], [self.patients[i] for i in pick])


def align_labels(table: Any, labels_path: str | list[str]) -> np.ndarray:
    """Labels (N, 6) for the table's slice ids, in table order; slices absent from the label file(s) are an
    :class:`InputError`. Several files (one per data source) are read as one table; missing labels stay ``NaN``
    (masked by the loss and the metrics)."""
    from ichd.data.labels import label_matrix, read_label_sources, read_labels
    from ichd.training.cnn import resolve_labels_path

    files = [labels_path] if isinstance(labels_path, str) else list(labels_path)
    table_labels = (read_labels(resolve_labels_path(files[0])) if len(files) == 1
                    else read_label_sources([resolve_labels_path(f) for f in files]))
    return label_matrix(table_labels, table.slice_id.tolist(), allow_missing=True)


def _scan_data(table: Any, groups: list[np.ndarray], feats: np.ndarray | None,
               labels: np.ndarray | None) -> ScanBatchData:
    return ScanBatchData(features=[feats[g] if feats is not None else np.zeros((len(g), 0), np.float32)
                                   for g in groups],
                         probs=[table.probs[g].astype(np.float32) for g in groups],
                         labels=None if labels is None else [labels[g] for g in groups], rows=groups,
                         patients=[str(table.patient_id[g[0]]) for g in groups])


def _pad(arrays: list[np.ndarray]):  # -> torch.Tensor (B, T, F)
    import torch

    t = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), t, arrays[0].shape[1]), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------------------------
# training and prediction of one model
# ----------------------------------------------------------------------------------------------------------


def inner_split(data: ScanBatchData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scan positions (train, validation) with ``fraction`` of the *patients* held out (seeded)."""
    patients = sorted(set(data.patients))
    n_val = round(fraction * len(patients))
    if fraction > 0 and (n_val < 1 or n_val >= len(patients)):
        raise InputError(f"cannot hold out {fraction:.0%} of {len(patients)} training patients for early stopping",
                         hint="set optim.val_fraction: 0 for small data")
    held = set(np.random.default_rng(seed + 1_000_003).permutation(patients)[:n_val].tolist())
    is_val = np.array([p in held for p in data.patients])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _batches(data: ScanBatchData, idx: np.ndarray, batch: int, use_features: bool, device: Any, *,
             labels: bool = True):
    import torch

    for i in range(0, len(idx), batch):
        part = idx[i:i + batch]
        lengths = torch.tensor([data.rows[j].shape[0] for j in part])
        probs = _pad([data.probs[j] for j in part]).to(device)
        feats = _pad([data.features[j] for j in part]).to(device) if use_features else None
        target = _pad([data.labels[j] for j in part]).to(device) if labels and data.labels is not None else None
        yield feats, probs, lengths, target


def fit_sequence_model(data: ScanBatchData, feature_dim: int, model_cfg: SeqModelConfig, optim: SeqOptimConfig,
                       seed: int, device: Any, *, desc: str = "seq",
                       loss_weights: tuple[float, ...] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train one :class:`~ichd.models.sequence.SequenceModel` on ``data`` (with labels); ``loss_weights``
    replaces the RSNA class weights (e.g. "any" alone for a binary model).

    Returns ``(model in eval mode, info)``; ``info`` holds the epochs run, the kept epoch and the inner
    validation losses when early stopping is on (``optim.val_fraction > 0``).
    """
    import copy

    import torch

    from ichd.models.sequence import SequenceModel
    from ichd.training.losses import WeightedBCEWithLogits
    from ichd.utils.progress import progress_bar

    if data.labels is None or not data.rows:
        raise InputError("the sequence model needs labelled training scans")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = inner_split(data, optim.val_fraction, seed)
    model = SequenceModel(feature_dim, model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    loss_fn = (WeightedBCEWithLogits() if loss_weights is None else WeightedBCEWithLogits(loss_weights)).to(device)
    use_f = model_cfg.use_features
    steps = optim.epochs * ((len(train_idx) + optim.batch_scans - 1) // optim.batch_scans)
    bar = progress_bar(desc=desc, total=steps, unit="step")
    best_loss, best_epoch, best_state, val_losses = float("inf"), optim.epochs, None, []
    epoch = 0
    n_steps = 0
    try:
        for epoch in range(1, optim.epochs + 1):
            model.train()
            for feats, probs, lengths, target in _batches(data, rng.permutation(train_idx), optim.batch_scans,
                                                          use_f, device):
                if optim.max_steps is not None and n_steps >= optim.max_steps:
                    break
                n_steps += 1
                logits = model(feats, probs, lengths)
                mask = (torch.arange(logits.shape[1])[None, :] < lengths[:, None]).to(device)
                loss = loss_fn(logits[mask], target[mask])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if len(val_idx):
                model.eval()
                with torch.no_grad():
                    logit_list, target_list = [], []
                    for feats, probs, lengths, target in _batches(data, val_idx, 8, use_f, device):
                        logits = model(feats, probs, lengths)
                        mask = (torch.arange(logits.shape[1])[None, :] < lengths[:, None]).to(device)
                        logit_list.append(logits[mask])
                        target_list.append(target[mask])
                    val = float(loss_fn(torch.cat(logit_list), torch.cat(target_list)))
                val_losses.append(round(val, 6))
                if val < best_loss:
                    best_loss, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
                elif epoch - best_epoch >= optim.patience:
                    break
            if optim.max_steps is not None and n_steps >= optim.max_steps:
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    info = {"epochs_run": epoch, "best_epoch": best_epoch if len(val_idx) else epoch,
            "val_losses": val_losses, "n_train_scans": len(train_idx), "n_val_scans": len(val_idx)}
    return model.eval(), info


def predict_sequence_model(model: Any, data: ScanBatchData, device: Any, batch_scans: int = 8) -> list[np.ndarray]:
    """Per-scan slice probabilities (list of (z, 6) float32) in ``data`` order."""
    import torch

    model.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for feats, probs, lengths, _ in _batches(data, np.arange(len(data.rows)), batch_scans,
                                                 model.config.use_features, device, labels=False):
            p = torch.sigmoid(model(feats, probs, lengths)).cpu().numpy()
            out.extend(p[b, : int(lengths[b])].astype(np.float32) for b in range(len(lengths)))
    return out


# ----------------------------------------------------------------------------------------------------------
# cross-validation and the final model
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SeqRunResult:
    """What :func:`train_seq` produced."""

    out: Path
    oof: Any | None  # pandas DataFrame (ichd predictions CSV layout) or None when no fold ran
    oof_scans: Any | None
    metrics: dict[str, Any]
    checkpoints: list[Path]
    final_checkpoint: Path | None
    seconds: float


def _fit_selector(cfg: SeqTrainConfig, table: Any, rows: np.ndarray, head_weight: np.ndarray | None
                  ) -> FeatureSelector | None:
    if not cfg.model.use_features:
        return None
    if cfg.selector.method in WEIGHT_METHODS and head_weight is None:
        raise ConfigError(f"selector {cfg.selector.method!r} needs CNN classifier weights",
                          hint="for the final model set cnn_checkpoint; CV uses the fold CNNs' weights")
    return FeatureSelector(cfg.selector).fit(table.features[rows], head_weight=head_weight)


def _train_predict(cfg: SeqTrainConfig, table: Any, labels: np.ndarray, train_groups: list[np.ndarray],
                   test_groups: list[np.ndarray], head_weight: np.ndarray | None, device: Any, tag: str
                   ) -> tuple[FeatureSelector | None, list[Any], list[np.ndarray] | None, list[dict[str, Any]]]:
    """Fit selector + one model per seed on train scans; average the seeds' predictions on test scans."""
    train_rows = np.concatenate(train_groups)
    selector = _fit_selector(cfg, table, train_rows, head_weight)
    feats = selector.transform(table.features) if selector is not None else None
    dim = selector.out_features if selector is not None else 0
    train = _scan_data(table, train_groups, feats, labels)
    test = _scan_data(table, test_groups, feats, None) if test_groups else None
    models, preds, infos = [], None, []
    for seed in cfg.optim.seeds:
        model, info = fit_sequence_model(train, dim, cfg.model, cfg.optim, seed, device, desc=f"{tag} seed {seed}",
                                         loss_weights=ANY_ONLY_WEIGHTS if cfg.targets == "any" else None)
        models.append(model)
        infos.append({"seed": seed, **info})
        if test is not None:
            p = predict_sequence_model(model, test, device)
            preds = p if preds is None else [a + b for a, b in zip(preds, p)]
    if preds is not None:
        preds = [p / len(cfg.optim.seeds) for p in preds]
        if cfg.targets == "any":  # a binary model: the subtypes at the training prevalence
            prevalence = np.clip(np.nanmean(labels[train_rows], axis=0), 1e-4, 1 - 1e-4)
            preds = [any_only_probs(p, np.nan_to_num(prevalence, nan=1e-4)) for p in preds]
    return selector, models, preds, infos


def _save(path: Path, model: Any, selector: FeatureSelector | None, cfg: SeqTrainConfig, *, fold: Any,
          cnn: dict[str, Any], cnn_checkpoint: dict[str, Any] | None, metrics: dict[str, Any]) -> Path:
    from ichd.models.checkpoint import save_checkpoint
    from ichd.models.sequence import sequence_checkpoint_extra

    extra = sequence_checkpoint_extra(selector, scan_rule=cfg.scan_rule, min_run=cfg.min_run, cnn=cnn,
                                      cnn_checkpoint=cnn_checkpoint)
    return save_checkpoint(path, model, config=cfg, fold=fold, epoch=cfg.optim.epochs, metrics=metrics, extra=extra)


def evaluate_predictions(oof: Any, labels: Any, scans: Any, *, n_boot: int = 1000, seed: int = 0
                         ) -> dict[str, Any]:
    """Slice weighted log loss, slice and scan any-AUC, with patient-bootstrap 95% CIs.

    ``oof``: slice rows (``patient_id`` + LABELS probabilities); ``labels``: (N, 6) aligned with ``oof``;
    ``scans``: scan rows (``patient_id``, LABELS probabilities and ``y_<label>`` scan labels).
    """
    from ichd.evaluation.bootstrap import GroupIndex, bootstrap
    from ichd.evaluation.metrics import roc_auc, weighted_log_loss

    p = oof[list(LABELS)].to_numpy(dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    ps = scans[list(LABELS)].to_numpy(dtype=np.float64)
    ys = scans[[f"y_{c}" for c in LABELS]].to_numpy(dtype=np.float64)
    wll, per_class = weighted_log_loss(y, p, per_class=True)
    point = {"weighted_log_loss": float(wll), "slice_auc_any": float(roc_auc(y[:, 0], p[:, 0])),
             "scan_auc_any": float(roc_auc(ys[:, 0], ps[:, 0]))}
    slice_groups = GroupIndex(oof["patient_id"].astype(str).tolist())
    scan_groups = GroupIndex(scans["patient_id"].astype(str).tolist())
    scan_pos = np.array([scan_groups.position(n) for n in slice_groups.names])

    def stat(draw: np.ndarray) -> dict[str, float]:
        r = slice_groups.rows(draw)
        rs = scan_groups.rows(scan_pos[draw])
        return {"weighted_log_loss": float(weighted_log_loss(y[r], p[r])),
                "slice_auc_any": roc_auc(y[r, 0], p[r, 0]), "scan_auc_any": roc_auc(ys[rs, 0], ps[rs, 0])}

    ci = bootstrap(stat, slice_groups.n_groups, n_boot=n_boot, seed=seed, desc="bootstrap")
    return {**point, "per_class_log_loss": {c: float(v) for c, v in zip(LABELS, per_class)},
            "ci95": {k: v.to_list() for k, v in ci.items()}, "n_boot": n_boot,
            "n_slices": len(p), "n_scans": len(ps), "n_patients": int(slice_groups.n_groups)}


def predictions_frames(table: Any, groups: list[np.ndarray], preds: list[np.ndarray], labels: np.ndarray,
                       scan_rule: str, min_run: int) -> tuple[Any, Any]:
    """(slice predictions DataFrame in the ichd predictions-CSV layout, scan predictions DataFrame)."""
    import pandas as pd

    rows = np.concatenate(groups)
    probs = np.concatenate(preds)
    slices = pd.DataFrame({"slice_id": table.slice_id[rows], "scan_id": table.scan_id[rows],
                           "patient_id": table.patient_id[rows], "slice_index": table.slice_index[rows],
                           "fold": table.fold[rows]})
    for c, lab in enumerate(LABELS):
        slices[lab] = probs[:, c]
    scan_rows = []
    for g, p in zip(groups, preds):
        sp = scan_probabilities(p, scan_rule, min_run=min_run)
        ys = np.nan_to_num(np.fmax.reduce(labels[g], axis=0))  # missing slice labels (NaN) are skipped
        scan_rows.append({"scan_id": table.scan_id[g[0]], "patient_id": table.patient_id[g[0]],
                          "fold": int(table.fold[g[0]]), "n_slices": len(g),
                          **{lab: float(sp[c]) for c, lab in enumerate(LABELS)},
                          **{f"y_{lab}": int(ys[c]) for c, lab in enumerate(LABELS)}})
    return slices, pd.DataFrame(scan_rows)


def train_seq(cfg: SeqTrainConfig, *, table: Any | None = None, labels: np.ndarray | None = None,
              n_boot: int = 1000) -> SeqRunResult:
    """Cross-validate (and optionally fit a final) sequence model as configured; see the module docstring.

    ``table`` / ``labels`` may be passed in (benchmarks, tests) instead of being read from ``cfg``.
    """
    import torch

    from ichd.config import save_config
    from ichd.inference.embed import NO_FOLD, EmbeddingTable
    from ichd.utils.device import resolve_device
    from ichd.utils.files import atomic_write_text

    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if table is None:
        table = EmbeddingTable.load(cfg.embeddings)
    if labels is None:
        labels = align_labels(table, cfg.labels)
    if labels.shape != (len(table), len(LABELS)):
        raise InputError(f"labels have shape {labels.shape}, expected ({len(table)}, {len(LABELS)})")
    if cfg.save_checkpoints:
        save_config(cfg, out / "config.yaml")
    groups = table.scan_groups()
    scan_fold = np.array([int(table.fold[g[0]]) for g in groups])
    for g in groups:
        if len(set(table.fold[g].tolist())) != 1:
            raise InputError(f"scan {table.scan_id[g[0]]!r} has slices in several folds",
                             hint="the embedding table must be embedded per patient (ichd embed)")
    table_folds = sorted(set(scan_fold.tolist()) - {NO_FOLD})
    folds = table_folds if cfg.folds is None else list(cfg.folds)
    if (cfg.folds is None and not cfg.final and not table_folds) or (folds and NO_FOLD in scan_fold):
        raise InputError("cross-validation needs an out-of-fold embedding table (ichd embed --cnn-run ...)",
                         hint="or set folds: [] and final: true to train on everything")
    if not folds and not cfg.final:
        raise ConfigError("nothing to train: folds is empty and final is false")
    unknown = sorted(set(folds) - set(table_folds))
    if unknown:
        raise ConfigError(f"folds {unknown} are not in the embedding table (it has {table_folds})")
    cnn_meta = {"embedding_mode": table.meta.get("mode"), "model_name": table.meta.get("model_name"),
                "fold_checkpoints": table.meta.get("cnn", {}), "embeddings": str(cfg.embeddings)}

    checkpoints: list[Path] = []
    fold_groups: list[np.ndarray] = []
    fold_preds: list[np.ndarray] = []
    fold_seconds: dict[str, float] = {}
    fold_training: dict[str, list[dict[str, Any]]] = {}
    for k in folds:
        tk = time.perf_counter()
        train_groups = [g for g, f in zip(groups, scan_fold) if f != k]
        test_groups = [g for g, f in zip(groups, scan_fold) if f == k]
        selector, models, preds, infos = _train_predict(cfg, table, labels, train_groups, test_groups,
                                                        table.head_weight.get(k), device, f"fold {k}")
        fold_training[str(k)] = infos
        fold_groups.extend(test_groups)
        fold_preds.extend(preds or [])
        fold_seconds[str(k)] = round(time.perf_counter() - tk, 2)
        if cfg.save_checkpoints:
            for seed, model in zip(cfg.optim.seeds, models):
                checkpoints.append(_save(out / f"fold{k}" / f"seed{seed}.pt", model, selector, cfg, fold=k,
                                         cnn={**cnn_meta, "cnn_fold": k}, cnn_checkpoint=None, metrics={}))
        log.info("seq fold %s: %d train scans, %d test scans, %.1f s", k, len(train_groups), len(test_groups),
                 fold_seconds[str(k)])

    metrics: dict[str, Any] = {"name": cfg.name, "folds": folds, "fold_seconds": fold_seconds,
                               "fold_training": fold_training}
    oof = oof_scans = None
    if fold_groups:
        oof, oof_scans = predictions_frames(table, fold_groups, fold_preds, labels, cfg.scan_rule, cfg.min_run)
        y_oof = labels[np.concatenate(fold_groups)]
        metrics.update(evaluate_predictions(oof, y_oof, oof_scans, n_boot=n_boot))
        if cfg.save_checkpoints:
            from ichd.utils.files import atomic_path

            for frame, name in ((oof, "oof.csv"), (oof_scans, "oof_scans.csv")):
                with atomic_path(out / name) as tmp:
                    frame.to_csv(tmp, index=False, float_format="%.6g")

    final_path = None
    if cfg.final:
        tf = time.perf_counter()
        cnn_raw, head = None, None
        if cfg.cnn_checkpoint:
            from ichd.inference.embed import classifier_weight, sha256_file
            from ichd.models.checkpoint import load_checkpoint, read_checkpoint

            ckpt_path = Path(cfg.cnn_checkpoint)
            head = classifier_weight(load_checkpoint(ckpt_path).model)
            cnn_raw = {k: v for k, v in read_checkpoint(ckpt_path).items()
                       if k not in ("optimizer", "scheduler", "scaler", "rng", "step")}
            cnn_meta = {**cnn_meta, "deploy_checkpoint": str(cfg.cnn_checkpoint),
                        "deploy_sha256": sha256_file(ckpt_path)}
        final_cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, seeds=cfg.optim.seeds[:1]))
        selector, models, _, infos = _train_predict(final_cfg, table, labels, groups, [], head, device, "final")
        metrics["final_training"] = infos[0]
        final_path = _save(out / "final" / "model.pt", models[0], selector, cfg, fold="all",
                           cnn=cnn_meta, cnn_checkpoint=cnn_raw,
                           metrics={k: v for k, v in metrics.items() if k not in ("fold_seconds", "fold_training")})
        metrics["final_seconds"] = round(time.perf_counter() - tf, 2)

    seconds = time.perf_counter() - t0
    metrics["seconds"] = round(seconds, 2)
    if cfg.save_checkpoints:
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return SeqRunResult(out=out, oof=oof, oof_scans=oof_scans, metrics=metrics, checkpoints=checkpoints,
                        final_checkpoint=final_path, seconds=seconds)
