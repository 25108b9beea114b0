"""Heads on frozen-encoder embeddings (``ichd train frozen``): cached embeddings, repeated patient CV, calibration.

The encoder (:class:`ichd.models.frozen.FrozenEncoderClassifier`) runs once per slice; its maps are pooled at
both depths and with both poolings and cached per encoder, input size and source cache (:func:`encoder_embeddings`;
the key also covers the preprocessing and every cached array's sha256, so a change of any of them makes a new
file). A run then fits small heads only, in seconds:

- the **slice head**: linear on the slice alone (it becomes the slice model's ``classifier``, so Grad-CAM and
  ``--independent`` single slices use it, and its out-of-fold probabilities are what the seed's stage 2 joins);
- the **main head**: :class:`~ichd.models.frozen.ContextHead` (linear or MLP over the slice and the mean of its
  ``context`` neighbours), the model's second stage.

Both learn all six labels with the RSNA weighted log loss (:class:`~ichd.training.losses.WeightedBCEWithLogits`)
plus an L2 penalty, missing labels masked. Features are standardised with the training rows' mean and SD (a
``none`` feature selector with ``standardize``, or PCA, travels with the head).

Cross-validation is by patient and repeated with several fold seeds (``data.fold_seeds``; the first may be fixed by
``data.folds_file``). Each fold model is **calibrated on its own training folds**: an inner patient CV of the
training part gives out-of-sample logits, on which a per-label logistic calibration (scale and bias,
:func:`ichd.training.calibration.fit_platt`; a bias is needed because ``optim.balance`` shifts it, which a
temperature alone, :func:`ichd.evaluation.calibration.fit_temperature`, cannot undo) is fitted; the fold model's held-out predictions are calibrated with
it, so the pooled OOF predictions of different fold models share one scale. The final model (every patient) is
calibrated the same way and the calibration is folded into its last linear layer.

Outputs under ``out/``: ``config.yaml``; per repeat ``r{i}/folds.csv``, ``r{i}/oof.csv`` (main head),
``r{i}/oof_slice.csv`` (slice head), with ``save_fold_models`` ``r0/fold{k}/{cnn,sequence}.pt``; ``oof.csv`` (repeat 0); ``embed_oof.npz`` (an
:class:`~ichd.inference.embed.EmbeddingTable` of the frozen features with repeat 0's out-of-fold slice-head
probabilities, the input of ``ichd train seq``); ``metrics.json``; with ``final`` ``final/cnn.pt`` (encoder +
calibrated slice head) and ``final/sequence.pt`` (selector + calibrated main head, with the slice model embedded).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError
from ichd.models.feature_selection import FeatureSelector, SelectorConfig
from ichd.models.frozen import ContextHeadConfig, FrozenEncoderConfig
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: Layout version of the per-encoder embedding files (bump when the pooling code changes).
EMBEDDING_CACHE_VERSION = 1
#: Pooled arrays each per-encoder embedding file holds.
POOLED_KEYS: tuple[str, ...] = ("head_avg", "head_max", "last_stage_avg", "last_stage_max")


@dataclass
class FrozenDataConfig:
    """Data of a frozen-encoder run.

    Attributes:
        cache: preprocessed cache (``ichd preprocess``) whose image size is the encoder config's input size.
        labels: label file(s), one per source (relative paths not found are looked up in ``$ICHD_DATA``).
        sources: source names of the label files.
        folds: patient folds per repeat.
        fold_seeds: one CV repeat per seed (stratified patient folds, :func:`ichd.data.folds.patient_folds`).
        folds_file: optional ``patient_id,fold`` CSV used for the first repeat instead of its seed (e.g. the
            default model's folds, for comparisons on the same split).
    """

    cache: str = "cache/multi-256"
    labels: str | list[str] = field(default_factory=lambda: ["ct-ich/labels.csv", "rsna-series/labels.csv"])
    sources: list[str] | None = field(default_factory=lambda: ["ct-ich", "rsna-series"])
    folds: int = 5
    fold_seeds: list[int] = field(default_factory=lambda: [42, 1, 2])
    folds_file: str | None = None
    #: loss weight of each source's slices (unnamed sources: 1), e.g. ``{rsna-series: 2.0}`` to give the few
    #: real-DICOM series more say than their share of slices
    source_weights: dict[str, float] | None = None
    #: further caches of the same slices rendered differently (``ichd preprocess --simulate-window L,W``: what a
    #: windowed PNG/JPG export keeps), whose rows are added to the *training* part of every fit (same patient, so
    #: the same fold); the held-out predictions, the calibration and the OOF files stay on ``cache``. Their own
    #: out-of-fold AUCs are reported in ``metrics.json`` (``augment``).
    augment_caches: list[str] = field(default_factory=list)
    #: loss weight of the augment caches' rows relative to the originals
    augment_weight: float = 1.0

    @property
    def label_files(self) -> list[str]:
        return [self.labels] if isinstance(self.labels, str) else list(self.labels)


@dataclass
class HeadOptimConfig:
    """How the heads are fitted.

    Attributes:
        l2: L2 penalty on the weights (not biases) added to the mean weighted log loss: ``l2 / 2 * ||W||^2``,
            the last layer's row of each label scaled by that label's loss weight, so that for a linear head
            ``l2 = 1 / (C * n)`` is, label by label, scikit-learn's ``LogisticRegression(C)`` on ``n`` rows.
        slice_l2: the same for the slice head.
        epochs / lr / batch_size: MLP heads (Adam); linear heads are fitted to convergence with L-BFGS.
        max_iter: L-BFGS iterations of linear heads.
        balance: weight each label's positives by n_negative / n_positive of the training rows (scikit-learn's
            ``class_weight="balanced"``); the calibration then restores the scale.
        seed: torch seed of every fit.
    """

    l2: float = 0.04
    slice_l2: float = 0.04
    epochs: int = 60
    lr: float = 1e-3
    batch_size: int = 256
    max_iter: int = 100
    balance: bool = True
    seed: int = 0


@dataclass
class FrozenTrainConfig:
    """Everything that defines one frozen-encoder run (``configs/frozen_*.yaml``)."""

    name: str = "frozen_lite0"
    data: FrozenDataConfig = field(default_factory=FrozenDataConfig)
    encoder: FrozenEncoderConfig = field(default_factory=FrozenEncoderConfig)
    head: ContextHeadConfig = field(default_factory=ContextHeadConfig)
    selector: SelectorConfig = field(default_factory=lambda: SelectorConfig(method="none", standardize=True))
    optim: HeadOptimConfig = field(default_factory=HeadOptimConfig)
    calibrate: bool = True
    inner_folds: int = 3
    final: bool = True
    scan_rule: str = "max"
    embeddings_dir: str = "cache/frozen-embeddings"
    embed_batch_size: int = 16
    out: str = "runs/frozen_lite0"
    device: str = "cpu"
    threads: int | None = None
    max_steps: int | None = None  # cap head-fitting iterations (quick checks)
    #: also write repeat 0's fold models (``r0/fold{k}/{cnn,sequence}.pt``), e.g. to predict other renderings of
    #: the held-out patients (benchmarks/windowed_png.py)
    save_fold_models: bool = False

    def __post_init__(self) -> None:
        if self.data.folds < 2 or not self.data.fold_seeds:
            raise ConfigError("data.folds must be >= 2 and data.fold_seeds must name at least one seed")
        if self.inner_folds < 2:
            raise ConfigError(f"inner_folds must be >= 2, got {self.inner_folds}")
        if self.optim.l2 < 0 or self.optim.slice_l2 < 0 or self.optim.epochs < 1 or self.optim.lr <= 0:
            raise ConfigError("optim needs l2 >= 0, slice_l2 >= 0, epochs >= 1 and lr > 0")
        from ichd.models.scan_rules import SCAN_RULES

        if self.scan_rule not in SCAN_RULES:
            from ichd.errors import did_you_mean

            raise ConfigError(f"scan_rule {self.scan_rule!r} is unknown; {did_you_mean(self.scan_rule, SCAN_RULES)}")


def load_frozen_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FrozenTrainConfig:
    """Load a :class:`FrozenTrainConfig` YAML file with dotted-key ``overrides``."""
    from ichd.config import load_config

    return load_config(FrozenTrainConfig, path, overrides)


# ----------------------------------------------------------------------------------------------------------
# the embedding cache
# ----------------------------------------------------------------------------------------------------------


def embedding_key(encoder: str, input_size: int, cache: Any, channels: str = "windows",
                  flip: bool = False) -> dict[str, Any]:
    """What an encoder's cached embeddings depend on: the encoder, its input size, channel mode and flip
    averaging, the source cache's preprocessing and image size, the exact arrays (their sha256) and the pooling
    code's version."""
    series = sorted((s["scan_id"], s.get("sha256", "")) for s in cache.manifest["series"])
    digest = hashlib.sha256(json.dumps(series).encode()).hexdigest()
    preprocess = cache.config.to_dict()
    if preprocess.get("crop", "none") == "none":
        preprocess.pop("crop", None)  # the key of caches made before the crop option existed stays valid
    if preprocess.get("simulate_window") is None:
        preprocess.pop("simulate_window", None)  # likewise
    key = {"version": EMBEDDING_CACHE_VERSION, "encoder": encoder, "input_size": int(input_size),
           "preprocess": preprocess, "arrays_sha256": digest}
    if channels != "windows":  # keys of the default mode stay as they were (existing caches remain valid)
        key["channels"] = channels
    if flip:  # likewise
        key["flip"] = True
    return key


def _key_name(key: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    mode = ("-each" if key.get("channels") == "each_window" else "") + ("-flip" if key.get("flip") else "")
    return f"{key['encoder']}-{key['input_size']}{mode}-{h}.npz"


def encoder_embeddings(cache: Any, encoder: str, input_size: int, out_dir: str | Path, *,
                       batch_size: int = 16, device: Any = None, threads: int | None = None,
                       channels: str = "windows", flip: bool = False) -> dict[str, np.ndarray]:
    """Pooled maps of one frozen encoder for every slice of ``cache``, computed once and cached in ``out_dir``.

    Returns ``{"slice_id": (N,), "head_avg", "head_max", "last_stage_avg", "last_stage_max": (N, C)}`` in the
    cache's slice order; for ``channels="each_window"`` each array holds the three windows' blocks side by side
    (N, 3C), in window order; with ``flip`` each is the mean of the slice's and its mirror image's. The file
    name carries a hash of :func:`embedding_key`, so a different encoder, size,
    preprocessing or cache content never reuses it. Inputs are the cache's slices at its own size, resized by
    the model exactly as at inference.
    """
    import torch

    from ichd.models.frozen import EncoderSpec, FrozenEncoderClassifier
    from ichd.utils.files import atomic_path
    from ichd.utils.progress import progress_bar

    key = embedding_key(encoder, input_size, cache, channels, flip)
    out_dir = Path(out_dir)
    path = out_dir / _key_name(key)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) == key:
                return {k: z[k] for k in ("slice_id", *POOLED_KEYS)}
        log.warning("embedding file %s has another key; recomputing", path)
    if threads:
        torch.set_num_threads(int(threads))
    spec = EncoderSpec(encoder, input_size, channels, flip)  # type: ignore[arg-type]
    model = FrozenEncoderClassifier(FrozenEncoderConfig(encoders=[spec]), pretrained=True).eval()
    if device is not None:
        model = model.to(device)
    dev = next(model.parameters()).device
    slices = cache.slices
    parts: dict[str, list[np.ndarray]] = {k: [] for k in POOLED_KEYS}
    ids: list[str] = []
    t0 = time.perf_counter()
    bar = progress_bar(desc=f"embed {encoder}@{input_size}", total=len(slices), unit="slice")
    try:
        with torch.inference_mode():
            for scan_id in sorted(cache.scan_ids):
                table = cache.scan_slices(scan_id)
                idx = table["slice_index"].to_numpy(dtype=np.int64)
                arr = cache.array(scan_id)
                for start in range(0, len(idx), batch_size):
                    x = torch.from_numpy(np.array(arr[idx[start:start + batch_size]], copy=True)).to(dev)
                    pooled: dict[str, list[Any]] = {k: [] for k in POOLED_KEYS}
                    for view in model.views(model.normalize(x), spec):
                        mirrors = [view.flip(-1)] if spec.flip else []
                        maps = [model.encoder_maps(0, v) for v in (view, *mirrors)]
                        for depth in ("head", "last_stage"):
                            pools = [model.pool_map(m[depth], "avgmax") for m in maps]
                            pooled[f"{depth}_avg"].append(sum(p[0] for p in pools) / len(pools))
                            pooled[f"{depth}_max"].append(sum(p[1] for p in pools) / len(pools))
                    for k, v in pooled.items():
                        parts[k].append(torch.cat(v, dim=1).float().cpu().numpy())
                    bar.update(min(batch_size, len(idx) - start))
                ids.extend(table["slice_id"].astype(str))
    finally:
        bar.close()
    out = {"slice_id": np.asarray(ids, dtype=str), **{k: np.concatenate(v).astype(np.float32)
                                                      for k, v in parts.items()}}
    seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, key=np.asarray(json.dumps(key)), seconds=np.asarray(seconds), **out)
    log.info("embedded %d slices with %s@%d in %.0f s -> %s", len(ids), encoder, input_size, seconds, path)
    return out


def frozen_features(cfg: FrozenEncoderConfig, cache: Any, slice_ids: list[str], out_dir: str | Path, *,
                    batch_size: int = 16, device: Any = None, threads: int | None = None) -> np.ndarray:
    """The embedding ``FrozenEncoderClassifier(cfg).forward_features`` gives each of ``slice_ids`` (rows in that
    order), assembled from the per-encoder cache. The cache's image size must be the config's input size."""
    size = int(cache.image_size)
    if size != cfg.input_size:
        raise InputError(f"cache {str(cache.root)!r} holds {size} px slices but the encoder config needs "
                         f"{cfg.input_size} px (its largest encoder size)",
                         hint=f"build a cache with `ichd preprocess ... --size {cfg.input_size}`")
    blocks = []
    for spec in cfg.encoders:
        emb = encoder_embeddings(cache, spec.name, spec.input_size, out_dir, batch_size=batch_size, device=device,
                                 threads=threads, channels=spec.channels, flip=spec.flip)
        pos = {s: i for i, s in enumerate(emb["slice_id"].tolist())}
        missing = [s for s in slice_ids if s not in pos]
        if missing:
            raise InputError(f"{len(missing)} slice(s) are not in cache {str(cache.root)!r}, e.g. {missing[0]!r}")
        rows = np.asarray([pos[s] for s in slice_ids], dtype=np.int64)
        avg = emb[f"{cfg.depth}_avg"][rows].reshape(len(rows), spec.views, -1)
        mx = emb[f"{cfg.depth}_max"][rows].reshape(len(rows), spec.views, -1)
        for v in range(spec.views):  # forward_features' order: per view, [avg, max]
            blocks.append(avg[:, v])
            if cfg.pool == "avgmax":
                blocks.append(mx[:, v])
    return np.concatenate(blocks, axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# fitting heads
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ScanRows:
    """Rows of a slice table grouped by scan (each group in slice order), for neighbour context."""

    groups: list[np.ndarray]

    @classmethod
    def from_table(cls, scan_ids: np.ndarray, slice_index: np.ndarray) -> ScanRows:
        from ichd.data.labels import scan_row_groups

        return cls(scan_row_groups(scan_ids, slice_index))

    def subset(self, rows: np.ndarray) -> ScanRows:
        """The groups restricted to ``rows`` (whole scans: a patient's scans are never split)."""
        keep = np.zeros(max((int(g.max()) for g in self.groups), default=-1) + 1, dtype=bool)
        keep[rows] = True
        return ScanRows([g for g in self.groups if keep[g].all()])


def head_inputs(head: Any, x: np.ndarray, scans: ScanRows) -> tuple[np.ndarray, np.ndarray]:
    """The head's input rows (M, F') for every row of every scan in ``scans``, and those rows' indices."""
    import torch

    with torch.no_grad():
        parts = [head.inputs(torch.from_numpy(x[g])[None], torch.tensor([len(g)]))[0].numpy() for g in scans.groups]
    return np.concatenate(parts).astype(np.float32), np.concatenate(scans.groups)


def _balance_weights(y: np.ndarray, enabled: bool) -> np.ndarray:
    """Per-label positive weight n_neg / n_pos on the known rows (1 where disabled or undefined)."""
    w = np.ones(y.shape[1], dtype=np.float32)
    if not enabled:
        return w
    for c in range(y.shape[1]):
        known = ~np.isnan(y[:, c])
        pos = float(np.nansum(y[known, c]))
        neg = float(known.sum()) - pos
        if pos > 0 and neg > 0:
            w[c] = neg / pos
    return w


def _loss(logits: Any, y: Any, pos_weight: Any, class_w: Any, row_w: Any = None) -> Any:
    """Mean weighted BCE over known labels with per-label positive weights and optional per-row weights (the
    RSNA weights across labels)."""
    import torch
    from torch.nn import functional as F

    known = ~torch.isnan(y)
    t = torch.where(known, y, torch.zeros_like(y))
    weight = torch.where(t > 0.5, pos_weight.expand_as(t), torch.ones_like(t)) * known
    if row_w is not None:
        weight = weight * row_w[:, None]
    per = F.binary_cross_entropy_with_logits(logits, t, reduction="none") * weight
    per_class = per.sum(0) / weight.sum(0).clamp(min=1e-6)
    w = class_w * (known.sum(0) > 0)
    return (per_class * w).sum() / w.sum().clamp(min=1e-12)


def fit_head(x: np.ndarray, y: np.ndarray, scans: ScanRows, head_cfg: ContextHeadConfig,
             selector_cfg: SelectorConfig, optim: HeadOptimConfig, *, l2: float | None = None,
             max_steps: int | None = None, row_weight: np.ndarray | None = None) -> tuple[FeatureSelector, Any]:
    """Fit a selector on the rows of ``scans`` and a :class:`~ichd.models.frozen.ContextHead` on them.

    ``y`` (N, 6) with NaN for missing labels (masked); ``row_weight`` (N,) optional loss weight per row (e.g. per
    data source). Returns ``(selector, head)`` (head in eval mode).
    """
    import torch

    from ichd.constants import LABEL_WEIGHTS
    from ichd.models.frozen import ContextHead

    rows = np.concatenate(scans.groups)
    selector = FeatureSelector(selector_cfg).fit(x[rows])
    xs = np.zeros((x.shape[0], selector.out_features), dtype=np.float32)
    xs[rows] = selector.transform(x[rows])
    torch.manual_seed(optim.seed)
    head = ContextHead(selector.out_features, head_cfg)
    if head_cfg.scan_mean:  # what a one-slice input sees as its scan: the mean over the training scans
        head.scan_prior.copy_(torch.from_numpy(np.mean([xs[g].mean(axis=0) for g in scans.groups], axis=0)))
    inp, order = head_inputs(head, xs, scans)
    xt, yt = torch.from_numpy(inp), torch.from_numpy(y[order].astype(np.float32))
    pos_w = torch.from_numpy(_balance_weights(y[order], optim.balance))
    rw = None if row_weight is None else torch.from_numpy(np.asarray(row_weight, dtype=np.float32)[order])
    class_w = torch.as_tensor(LABEL_WEIGHTS, dtype=torch.float32)
    lam = optim.l2 if l2 is None else l2
    weights = [p for n, p in head.net.named_parameters() if n.endswith("weight")]
    # The loss weighs label c by w_c / sum(w); the output rows of the last layer get the same factor in the
    # penalty, so every label sees l2 = 1 / (C n) as a per-label logistic regression with that C would.
    row_scale = (class_w / class_w.sum())[:, None]

    def penalty() -> Any:
        total = 0.5 * lam * sum((w ** 2).sum() for w in weights[:-1])
        return total + 0.5 * lam * (row_scale * weights[-1] ** 2).sum()

    def objective() -> Any:
        return _loss(head.net(head.drop(xt)), yt, pos_w, class_w, rw) + penalty()

    if head_cfg.kind == "linear" and head_cfg.dropout == 0.0:
        opt = torch.optim.LBFGS(head.net.parameters(), lr=1.0, max_iter=max_steps or optim.max_iter,
                                history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

        def closure() -> Any:
            opt.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        head.train()
        opt.step(closure)
    else:
        opt = torch.optim.Adam(head.net.parameters(), lr=optim.lr)
        gen = torch.Generator().manual_seed(optim.seed)
        steps = 0
        head.train()
        for _ in range(optim.epochs):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), optim.batch_size):
                b = perm[i:i + optim.batch_size]
                opt.zero_grad()
                loss = _loss(head.net(head.drop(xt[b])), yt[b], pos_w, class_w,
                             None if rw is None else rw[b]) + penalty()
                loss.backward()
                opt.step()
                steps += 1
                if max_steps and steps >= max_steps:
                    break
            if max_steps and steps >= max_steps:
                break
    head.eval()
    return selector, head


def head_logits(selector: FeatureSelector, head: Any, x: np.ndarray, scans: ScanRows) -> tuple[np.ndarray, np.ndarray]:
    """Logits (M, 6) of ``head`` for every row of ``scans``, and the rows they belong to."""
    import torch

    out, rows = [], []
    with torch.no_grad():
        for g in scans.groups:
            f = torch.from_numpy(selector.transform(x[g]))[None]
            out.append(head(f, None, torch.tensor([len(g)]))[0].numpy())
            rows.append(g)
    return np.concatenate(out).astype(np.float64), np.concatenate(rows)


def _patient_split(patients: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict[str, int]:
    """Stratified patient folds of the given rows (any-positive patients spread over the folds)."""
    import pandas as pd

    from ichd.data.folds import patient_folds

    df = pd.DataFrame(y, columns=list(LABELS))
    df["patient_id"] = patients
    k = min(k, df["patient_id"].nunique())
    return {str(p): int(f) for p, f in patient_folds(df, k, seed).items()}


def fit_calibrated(x: np.ndarray, y: np.ndarray, patients: np.ndarray, scans: ScanRows, cfg: FrozenTrainConfig,
                   head_cfg: ContextHeadConfig, l2: float, seed: int,
                   row_weight: np.ndarray | None = None,
                   calib_rows: np.ndarray | None = None) -> tuple[FeatureSelector, Any, Any]:
    """A head fitted on the rows of ``scans`` plus its calibration, fitted on an inner patient CV of those rows
    (out-of-sample logits of models that did not see the patient). Returns ``(selector, head, calibration)``;
    the calibration is None when ``cfg.calibrate`` is off. ``calib_rows`` (N,) bool: the rows the calibration is
    fitted on (default: all; augmented renderings are trained on but not calibrated on)."""
    from ichd.training.calibration import fit_platt

    selector, head = fit_head(x, y, scans, head_cfg, cfg.selector, cfg.optim, l2=l2, max_steps=cfg.max_steps,
                              row_weight=row_weight)
    if not cfg.calibrate:
        return selector, head, None
    rows = np.concatenate(scans.groups)
    inner = _patient_split(patients[rows], y[rows], cfg.inner_folds, seed)
    logits = np.zeros((len(x), len(LABELS)))
    row_fold = np.asarray([inner[str(p)] for p in patients[rows]])
    for f in sorted(set(row_fold.tolist())):
        tr = scans.subset(rows[row_fold != f])
        te = scans.subset(rows[row_fold == f])
        s_i, h_i = fit_head(x, y, tr, head_cfg, cfg.selector, cfg.optim, l2=l2, max_steps=cfg.max_steps,
                            row_weight=row_weight)
        lg, r = head_logits(s_i, h_i, x, te)
        logits[r] = lg
    if calib_rows is not None:
        rows = rows[np.asarray(calib_rows, dtype=bool)[rows]]
    calib = fit_platt(logits[rows], y[rows])
    return selector, head, calib


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------


def _predictions_frame(labels: Any, rows: np.ndarray, probs: np.ndarray, fold: np.ndarray,
                       calibrated: bool) -> Any:
    """An ichd predictions CSV frame (+ ``source`` and ``calibrated``, which ``ichd evaluate`` reads)."""
    frame = labels.iloc[rows][["scan_id", "patient_id", "slice_index"]].copy()
    if "source" in labels.columns:
        frame["source"] = labels.iloc[rows]["source"].to_numpy()
    frame.insert(3, "fold", fold[rows])
    for c, lab in enumerate(LABELS):
        frame[lab] = probs[rows, c]
    frame["calibrated"] = "platt-inner-cv" if calibrated else "none"
    frame.index.name = "slice_id"
    return frame


def _summary(y: np.ndarray, p: np.ndarray, scans: np.ndarray) -> dict[str, float]:
    from ichd.evaluation.metrics import CumulativeMetrics

    acc = CumulativeMetrics()
    acc.update(np.clip(p, 1e-6, 1 - 1e-6), y, list(scans))
    m = acc.compute()
    keys = ("weighted_log_loss", "auc/any", "mean_auc", "scan/auc/any", "n", "scan/n")
    return {k: (None if m.get(k) is None or (isinstance(m.get(k), float) and np.isnan(m[k])) else m[k])
            for k in keys}


def train_frozen(cfg: FrozenTrainConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Run the repeated patient CV (and the final fit) of ``cfg``; see the module docstring. Returns metrics.

    A run folder that already holds a finished run (``metrics.json``) is refused unless ``overwrite``."""
    import torch

    from ichd.config import save_config
    from ichd.data.folds import folds_for_table, patient_folds, read_patient_folds
    from ichd.data.labels import label_matrix
    from ichd.training.calibration import apply_platt
    from ichd.training.cnn import load_training_table
    from ichd.utils.files import atomic_write_text

    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out)
    if (out / "metrics.json").is_file() and not overwrite:
        raise InputError(f"run folder {str(out)!r} already holds a finished run (metrics.json)",
                         hint="pass another --out, or --overwrite to replace its results")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    cache, labels = load_training_table(cfg)  # reads cfg.data.cache / label_files / sources
    ids = labels.index.astype(str).tolist()
    t = time.perf_counter()
    x = frozen_features(cfg.encoder, cache, ids, cfg.embeddings_dir, batch_size=cfg.embed_batch_size,
                        threads=cfg.threads)
    t_embed = time.perf_counter() - t
    y = label_matrix(labels, ids, allow_missing=True)
    patients = labels["patient_id"].astype(str).to_numpy()
    scan_ids = labels["scan_id"].astype(str).to_numpy()
    sources = labels["source"].astype(str).to_numpy() if "source" in labels.columns else None
    row_weight = source_row_weights(sources, cfg.data.source_weights)
    # augment caches: the same slices rendered otherwise, stacked below the originals (render j > 0); they only
    # ever join the training part of a fit
    aug = augment_features(cfg, ids)
    n, m = len(ids), 1 + len(aug)
    render = np.repeat(np.arange(m), n)
    if aug:
        x_fit = np.concatenate([x, *aug.values()])
        y_fit, p_fit = np.tile(y, (m, 1)), np.tile(patients, m)
        scan_fit = np.concatenate([scan_ids] + [np.asarray([f"{s}#{j}" for s in scan_ids]) for j in range(1, m)])
        base = row_weight if row_weight is not None else np.ones(n, dtype=np.float32)
        w_fit: np.ndarray | None = np.concatenate([base] + [base * np.float32(cfg.data.augment_weight)] * len(aug))
        calib_rows: np.ndarray | None = render == 0
    else:
        x_fit, y_fit, p_fit, scan_fit, w_fit, calib_rows = x, y, patients, scan_ids, row_weight, None
    all_scans = ScanRows.from_table(scan_fit, np.tile(labels["slice_index"].to_numpy(), m))
    slice_cfg = ContextHeadConfig(kind="linear", context=0)
    metrics: dict[str, Any] = {"name": cfg.name, "encoder": cfg.encoder.describe(), "n_features": int(x.shape[1]),
                               "head": f"{cfg.head.kind}, context {cfg.head.context}"
                               + (", scan mean" if cfg.head.scan_mean else ""), "repeats": []}
    t = time.perf_counter()
    first_slice_probs = first_fold = None
    for r, seed in enumerate(cfg.data.fold_seeds):
        rdir = out / f"r{r}"
        rdir.mkdir(exist_ok=True)
        if r == 0 and cfg.data.folds_file:
            folds = folds_for_table(labels, read_patient_folds(cfg.data.folds_file), cfg.data.folds,
                                    source=cfg.data.folds_file)
        else:
            folds = patient_folds(labels, cfg.data.folds, seed)
        folds.rename("fold").to_frame().to_csv(rdir / "folds.csv")
        fold = np.asarray([int(folds[p]) for p in patients])
        fold_fit = np.tile(fold, m)
        probs = np.full(y.shape, np.nan)
        slice_probs = np.full(y.shape, np.nan)
        aug_probs = {name: np.full(y.shape, np.nan) for name in aug}
        per_fold = []
        for k in sorted(set(fold.tolist())):
            tr = all_scans.subset(np.flatnonzero(fold_fit != k))
            te = all_scans.subset(np.flatnonzero((fold_fit == k) & (render == 0)))
            fits = []
            for head_cfg, l2, target in ((cfg.head, cfg.optim.l2, probs), (slice_cfg, cfg.optim.slice_l2, slice_probs)):
                fit = fit_calibrated(x_fit, y_fit, p_fit, tr, cfg, head_cfg, l2, seed + 1000 * (k + 1), w_fit,
                                     calib_rows)
                lg, rows = head_logits(fit[0], fit[1], x_fit, te)
                target[rows] = apply_platt(lg, fit[2])
                fits.append(fit)
            for j, name in enumerate(aug, start=1):  # the main head on the held-out patients' other rendering
                lg, rows = head_logits(fits[0][0], fits[0][1], x_fit,
                                       all_scans.subset(np.flatnonzero((fold_fit == k) & (render == j))))
                aug_probs[name][rows - j * n] = apply_platt(lg, fits[0][2])
            if r == 0 and cfg.save_fold_models:
                export_models(cfg, fits[1], fits[0], rdir / f"fold{k}", fold=k)
            te_rows = np.flatnonzero(fold == k)
            per_fold.append({"fold": k, "patients": len(set(patients[te_rows])),
                             **_summary(y[te_rows], probs[te_rows], scan_ids[te_rows])})
            log.info("repeat %d fold %d: slice any-AUC %s", r, k, per_fold[-1]["auc/any"])
        rows_all = np.arange(len(ids))
        frame = _predictions_frame(labels, rows_all, probs, fold, cfg.calibrate)
        frame.to_csv(rdir / "oof.csv", float_format="%.6g")
        _predictions_frame(labels, rows_all, slice_probs, fold, cfg.calibrate).to_csv(rdir / "oof_slice.csv", float_format="%.6g")
        rep: dict[str, Any] = {"seed": seed, "folds_file": cfg.data.folds_file if r == 0 else None,
                               "pooled": _summary(y, probs, scan_ids), "slice_head": _summary(y, slice_probs, scan_ids),
                               "per_fold": per_fold}
        if sources is not None:
            rep["per_source"] = {s: _summary(y[sources == s], probs[sources == s], scan_ids[sources == s])
                                 for s in sorted(set(sources))}
        if aug:
            rep["augment"] = {}
            for name, p_aug in aug_probs.items():
                entry: dict[str, Any] = {"pooled": _summary(y, p_aug, scan_ids)}
                if sources is not None:
                    entry["per_source"] = {s: _summary(y[sources == s], p_aug[sources == s], scan_ids[sources == s])
                                           for s in sorted(set(sources))}
                rep["augment"][name] = entry
        metrics["repeats"].append(rep)
        if r == 0:
            frame.to_csv(out / "oof.csv", float_format="%.6g")
            first_slice_probs, first_fold = slice_probs, fold
    metrics["cv_seconds"] = round(time.perf_counter() - t, 1)
    metrics["embed_seconds"] = round(t_embed, 1)
    _write_embedding_table(out / "embed_oof.npz", labels, x, first_slice_probs, first_fold, cfg)
    if cfg.final:
        t = time.perf_counter()
        write_final(cfg, x_fit, y_fit, p_fit, all_scans, out / "final", w_fit, calib_rows)
        metrics["final_seconds"] = round(time.perf_counter() - t, 1)
    metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


def _write_embedding_table(path: Path, labels: Any, x: np.ndarray, probs: np.ndarray | None, fold: np.ndarray | None,
                           cfg: FrozenTrainConfig) -> None:
    from ichd.inference.embed import EmbeddingTable

    if probs is None or fold is None:
        return
    table = EmbeddingTable(labels.index.astype(str).to_numpy(), labels["scan_id"].astype(str).to_numpy(),
                           labels["patient_id"].astype(str).to_numpy(),
                           labels["slice_index"].to_numpy(dtype=np.int64), fold.astype(np.int64),
                           x.astype(np.float32), np.nan_to_num(probs, nan=0.5).astype(np.float32), {},
                           {"mode": "oof", "model_name": "frozen_encoder", "encoder": cfg.encoder.describe(),
                            "probs": "out-of-fold calibrated slice-head probabilities (repeat 0)",
                            "cache": cfg.data.cache})
    table.sorted().save(path)


def augment_features(cfg: FrozenTrainConfig, slice_ids: list[str]) -> dict[str, np.ndarray]:
    """The frozen features of ``slice_ids`` in each of ``cfg.data.augment_caches`` (name -> (N, F), rows in
    ``slice_ids`` order). Each must hold every slice of the main cache at its image size and windows."""
    from ichd.preprocessing.cache import open_cache

    if not cfg.data.augment_weight > 0:
        raise ConfigError(f"data.augment_weight must be > 0, got {cfg.data.augment_weight}")
    main = open_cache(cfg.data.cache).config
    out: dict[str, np.ndarray] = {}
    for path in cfg.data.augment_caches:
        cache = open_cache(path)
        other = cache.config
        if other.image_size != main.image_size or other.windows != main.windows:
            raise ConfigError(f"augment cache {path!r} ({other.image_size} px, windows {other.windows}) does not "
                              f"match data.cache {cfg.data.cache!r} ({main.image_size} px, windows {main.windows})",
                              hint="build it with the same --size (and windows) as the main cache")
        if path in out or path == cfg.data.cache:
            raise ConfigError(f"data.augment_caches names {path!r} twice (or the main cache)")
        out[path] = frozen_features(cfg.encoder, cache, slice_ids, cfg.embeddings_dir,
                                    batch_size=cfg.embed_batch_size, threads=cfg.threads)
    return out


def source_row_weights(sources: np.ndarray | None, weights: dict[str, float] | None) -> np.ndarray | None:
    """Per-row loss weights from ``data.source_weights`` (None when not configured); an unknown source name in
    the config is a :class:`ConfigError` (with a suggestion)."""
    if not weights:
        return None
    if sources is None:
        raise ConfigError("data.source_weights needs data.sources (one name per label file)")
    known = sorted(set(sources.tolist()))
    for name, w in weights.items():
        if name not in known:
            from ichd.errors import did_you_mean

            raise ConfigError(f"data.source_weights names source {name!r}; {did_you_mean(name, known)}")
        if not w > 0:
            raise ConfigError(f"data.source_weights.{name} must be > 0, got {w}")
    return np.asarray([float(weights.get(s, 1.0)) for s in sources], dtype=np.float32)


def write_final(cfg: FrozenTrainConfig, x: np.ndarray, y: np.ndarray, patients: np.ndarray, scans: ScanRows,
                out: Path, row_weight: np.ndarray | None = None,
                calib_rows: np.ndarray | None = None) -> dict[str, Path]:
    """Fit both heads on every patient, calibrate them (inner CV, on ``calib_rows`` when given) and write them
    with :func:`export_models`."""
    slice_cfg = ContextHeadConfig(kind="linear", context=0)
    slice_fit = fit_calibrated(x, y, patients, scans, cfg, slice_cfg, cfg.optim.slice_l2, cfg.optim.seed,
                               row_weight, calib_rows)
    main_fit = fit_calibrated(x, y, patients, scans, cfg, cfg.head, cfg.optim.l2, cfg.optim.seed, row_weight,
                              calib_rows)
    return export_models(cfg, slice_fit, main_fit, out, fold="all")


def export_models(cfg: FrozenTrainConfig, slice_fit: tuple[FeatureSelector, Any, Any],
                  main_fit: tuple[FeatureSelector, Any, Any], out: Path, *, fold: int | str) -> dict[str, Path]:
    """Write ``out/cnn.pt`` (the encoder with the slice head as its classifier, standardisation and calibration
    folded into the weights) and ``out/sequence.pt`` (selector + calibrated main head, the slice model embedded).
    The heads' last layers are changed in place (the calibration is folded into them)."""
    import torch

    from ichd.models.checkpoint import read_checkpoint, save_checkpoint
    from ichd.models.frozen import FrozenEncoderClassifier
    from ichd.models.sequence import sequence_checkpoint_extra
    from ichd.preprocessing.cache import open_cache
    from ichd.training.calibration import fold_platt_into_linear

    out.mkdir(parents=True, exist_ok=True)
    preprocess = open_cache(cfg.data.cache).config
    sel, head, calib = slice_fit
    if sel.config.method != "none":
        raise ConfigError("the slice head is folded into the encoder's classifier; it needs selector method 'none'")
    model = FrozenEncoderClassifier(cfg.encoder, pretrained=True)
    lin = head.net
    if calib is not None:
        fold_platt_into_linear(lin, calib)
    # standardisation folded in: w' = w / sd, b' = b - w' . mean  (selector "none" + standardize)
    w = lin.weight.detach().numpy().astype(np.float64)
    b = lin.bias.detach().numpy().astype(np.float64)
    mean, sd = sel.out_mean, sel.out_std
    if mean is not None and sd is not None:
        w = w / sd[None, :]
        b = b - w @ mean
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(w.astype(np.float32)))
        model.classifier.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    cnn_path = save_checkpoint(out / "cnn.pt", model, config=cfg, preprocess=preprocess, fold=fold,
                               extra={"calibration": "platt (inner patient CV)" if calib is not None else "none"})
    sel2, head2, calib2 = main_fit
    if calib2 is not None:
        last = head2.net if cfg.head.kind == "linear" else head2.net[-1]
        fold_platt_into_linear(last, calib2)
    extra = sequence_checkpoint_extra(sel2, scan_rule=cfg.scan_rule, cnn={"model_name": "frozen_encoder",
                                      "encoder": cfg.encoder.describe(), "embedding": "frozen (same for every fold)"},
                                      cnn_checkpoint=read_checkpoint(cnn_path))
    seq_path = save_checkpoint(out / "sequence.pt", head2, config=cfg, fold=fold, extra=extra)
    return {"cnn": cnn_path, "sequence": seq_path}
