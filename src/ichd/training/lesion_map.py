"""The lesion map head of a frozen-encoder model (``ichd train lesion-map``), fitted on hemorrhage masks.

Grad-CAM of a frozen encoder's linear slice head points at the bleed no more often than chance (4-8 % on the 26
masked CT slices, docs/results.md, issue 22): the pooled head never had to know *where* the blood is. The masks
say it directly, so the evidence map is learned from them: :class:`~ichd.models.frozen.LesionMapHead`, a logistic
regression per pixel over the frozen encoder's multi-stage maps and the input windows on a coarse grid
(:meth:`~ichd.models.frozen.FrozenEncoderClassifier.lesion_features`).

- **Rows**: every grid cell inside the head (:func:`ichd.preprocessing.head_mask.head_mask` of the slice, on the
  model's grid); the label is whether at least half the cell lies in the mask.
- **Fit**: standardised features, scikit-learn's ``LogisticRegression(C, class_weight="balanced")``; the scaler
  and coefficients become the head's buffers and 1x1 convolution.
- **Out of sample**: :func:`lopo_lesion_maps` refits the head once per patient without that patient's slices and
  maps them, which is how the maps are measured (``benchmarks/evidence_maps.py``). The encoder is the frozen
  ImageNet one in every fold model, so the fold does not matter for the features.

The input of each slice is the model's own (:func:`ichd.preprocessing.pipeline.preprocess_hu` with the
checkpoint's preprocessing), so training and inference see the same pixels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichd.errors import ConfigError, InputError
from ichd.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class LesionMapTrainConfig:
    """How the lesion map head is fitted: blocks/grid/smooth of :class:`~ichd.models.frozen.LesionMapConfig`,
    the inverse L2 strength ``C`` of the per-pixel logistic regression, and its iteration cap."""

    blocks: tuple[int, ...] = (2, 4, 10)
    grid: int = 64
    smooth: int = 5
    C: float = 0.01
    max_iter: int = 300

    def __post_init__(self) -> None:
        if not self.C > 0 or self.max_iter < 1:
            raise ConfigError(f"lesion map C must be > 0 and max_iter >= 1, got {self.C}, {self.max_iter}")


@dataclass
class MaskedCT:
    """One training slice: HU (H, W), a boolean hemorrhage mask of the same shape, its patient, pixel spacing."""

    name: str
    patient_id: str
    hu: np.ndarray
    mask: np.ndarray
    pixel_spacing: tuple[float, float] | None = None


def _grid_mask(mask: np.ndarray, grid: int, box_side: int) -> np.ndarray:
    """``mask`` (H, W), padded to the model's square like the input, as cell fractions on a grid x grid map."""
    import torch
    import torch.nn.functional as F

    h, w = mask.shape
    sq = np.zeros((box_side, box_side), dtype=np.float32)
    top, left = (box_side - h) // 2, (box_side - w) // 2
    sq[top:top + h, left:left + w] = mask
    t = torch.from_numpy(sq)[None, None]
    return F.adaptive_avg_pool2d(t, (grid, grid))[0, 0].numpy()


def slice_rows(model: Any, preprocess: Any, item: MaskedCT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (G*G, F), label (G*G,) bool, in_head (G*G,) bool) of one slice on the model's grid."""
    import torch

    from ichd.preprocessing.head_mask import head_mask
    from ichd.preprocessing.pipeline import preprocess_hu

    cfg = model.lesion_config
    if item.hu.shape != item.mask.shape:
        raise InputError(f"{item.name}: mask shape {item.mask.shape} differs from the slice's {item.hu.shape}")
    if preprocess.crop != "none":
        raise ConfigError("lesion maps are trained on models without a crop to the head (crop: none)")
    x = torch.from_numpy(preprocess_hu(np.asarray(item.hu, dtype=np.float32)[None], preprocess))
    with torch.no_grad():
        feats = model.lesion_features(x)[0].numpy()  # (F, G, G)
    g = cfg.grid
    side = max(item.hu.shape)
    label = _grid_mask(item.mask.astype(np.float32), g, side) >= 0.5
    head = _grid_mask(head_mask(np.asarray(item.hu, dtype=np.float32), item.pixel_spacing).astype(np.float32),
                      g, side) >= 0.5
    return feats.reshape(feats.shape[0], -1).T, label.ravel(), head.ravel()


def window_head_mask(image: np.ndarray, windows: Any) -> np.ndarray:
    """The head mask of one cached slice ``(C, S, S)`` (uint8 0..255 or float 0..1, channels in the order of
    ``windows``): HU are recovered from the widest window's channel and passed to
    :func:`ichd.preprocessing.head_mask.head_mask`. Pixels at the bottom of that window (air, and anything else
    darker than it) are read as air (-1000 HU); the window's range is all the head mask needs otherwise."""
    from ichd.preprocessing.head_mask import head_mask
    from ichd.preprocessing.windows import window_list

    pairs = window_list(windows)
    widest = int(np.argmax([w for _, w in pairs]))
    level, width = pairs[widest]
    v = np.asarray(image[widest], dtype=np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        v = v / 255.0
    hu = np.where(v <= 0.0, -1000.0, v * width + (level - width / 2.0)).astype(np.float32)
    return head_mask(hu)


def cell_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    """A square ``(S, S)`` pixel mask as a boolean ``(grid, grid)`` map: cells at least half covered."""
    return _grid_mask(mask.astype(np.float32), grid, int(mask.shape[0])) >= 0.5


def negative_rows(model: Any, cache: Any, slice_ids: Sequence[str], *, cells: int = 48, seed: int = 0,
                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of slices labelled free of hemorrhage: up to ``cells`` random grid cells inside the head of
    each of ``slice_ids`` (cached slices of a training cache), every one a negative for the lesion head. The
    masks teach the head where blood is *on bleeding slices*; these rows teach it what is not blood anywhere
    (skull base, calcifications, beam hardening), so that its map can also say whether a slice bleeds.
    Returns ``(rows (N, F) float32, slice index (N,) into slice_ids)``."""
    import torch

    from ichd.utils.progress import progress

    if cells < 1:
        raise ConfigError(f"negative cells per slice must be >= 1, got {cells}")
    rng = np.random.default_rng(seed)
    g = model.lesion_config.grid
    windows = cache.config.windows
    feats_out, owner = [], []
    ids = list(slice_ids)
    with torch.inference_mode():
        for start in progress(range(0, len(ids), batch_size), desc="lesion map negatives", unit="batch"):
            chunk = ids[start:start + batch_size]
            imgs = np.stack([cache.slice_image(i) for i in chunk])
            feats = model.lesion_features(torch.from_numpy(imgs)).numpy()  # (B, F, G, G)
            for j, img in enumerate(imgs):
                head = np.flatnonzero(cell_mask(window_head_mask(img, windows), g))
                if not len(head):
                    continue
                pick = rng.choice(head, size=min(cells, len(head)), replace=False)
                feats_out.append(feats[j].reshape(feats.shape[1], -1)[:, pick].T.astype(np.float32))
                owner.append(np.full(len(pick), start + j, dtype=np.int64))
    if not feats_out:
        raise InputError("none of the negative slices shows a head", hint="check the cache and its windows")
    return np.concatenate(feats_out), np.concatenate(owner)


@dataclass
class NegativeCells:
    """Feature rows of grid cells known to hold no hemorrhage (:func:`negative_rows`) and each row's patient (so
    that leave-one-patient-out fits drop the held-out patient's negatives too)."""

    rows: np.ndarray
    patients: np.ndarray
    #: where they come from, for the checkpoint and metrics
    source: str = ""


def bleed_free_cells(model: Any, config: str | Path, preprocess: Any, *, cells: int = 48, seed: int = 0
                     ) -> NegativeCells:
    """:class:`NegativeCells` from every slice labelled "any" = 0 in the training data of ``config`` (a
    frozen-encoder training config: its ``data.cache`` and label files). The cache must hold the model's own
    input (same windows, size and preprocessing as ``preprocess``), or the rows would not be the model's."""
    from ichd.training.cnn import load_training_table
    from ichd.training.frozen import load_frozen_config

    cfg = load_frozen_config(config)
    cache, labels = load_training_table(cfg)
    theirs, ours = cache.config.to_dict(), preprocess.to_dict()
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differ:
        raise ConfigError(f"cache {cfg.data.cache!r} of {str(config)!r} was not preprocessed as the model's input "
                          f"(differs in {', '.join(differ)})",
                          hint="use the training config of this model, whose cache matches its preprocessing")
    neg = labels[labels["any"] == 0]
    if not len(neg):
        raise InputError(f"the training data of {str(config)!r} has no slice labelled 'any' = 0")
    x, owner = negative_rows(model, cache, neg.index.astype(str).tolist(), cells=cells, seed=seed)
    return NegativeCells(x, neg["patient_id"].astype(str).to_numpy()[owner],
                         f"{cells} random head cells of each of the {len(neg)} slices labelled 'any' = 0 in "
                         f"{cfg.data.cache} ({', '.join(cfg.data.label_files)})")


def fit_lesion_head(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: LesionMapTrainConfig,
                    negatives: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit on the head cells of ``rows`` (and the all-negative feature rows ``negatives``, see
    :func:`negative_rows`): ``(mean, std, coef, intercept)`` of the standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([f[h] for f, _, h in rows]).astype(np.float64)
    y = np.concatenate([lab[h] for _, lab, h in rows])
    if negatives is not None and len(negatives):
        x = np.concatenate([x, np.asarray(negatives, dtype=np.float64)])
        y = np.concatenate([y, np.zeros(len(negatives), dtype=bool)])
    if y.all() or not y.any():
        raise InputError("the masks give no hemorrhage cells (or nothing else) inside the head",
                         hint="check that the masks are non-empty and aligned with their slices")
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-6] = 1.0
    lr = LogisticRegression(C=cfg.C, class_weight="balanced", max_iter=cfg.max_iter)
    lr.fit((x - mean) / std, y)
    return mean, std, lr.coef_[0], float(lr.intercept_[0])


def set_lesion_head(model: Any, params: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> None:
    """Write fitted ``(mean, std, coef, intercept)`` into the model's lesion head."""
    import torch

    mean, std, coef, intercept = params
    head = model.lesion_head
    with torch.no_grad():
        head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        head.std.copy_(torch.as_tensor(std, dtype=torch.float32))
        head.score.weight.copy_(torch.as_tensor(coef, dtype=torch.float32).view(1, -1, 1, 1))
        head.score.bias.fill_(float(intercept))


def _probabilities(rows: tuple[np.ndarray, np.ndarray, np.ndarray],
                   params: tuple[np.ndarray, np.ndarray, np.ndarray, float], grid: int) -> np.ndarray:
    mean, std, coef, intercept = params
    z = ((rows[0] - mean) / std) @ coef + intercept
    return (1.0 / (1.0 + np.exp(-z))).reshape(grid, grid).astype(np.float32)


def lopo_lesion_maps(model: Any, preprocess: Any, items: Sequence[MaskedCT], cfg: LesionMapTrainConfig,
                     negatives: NegativeCells | None = None, *,
                     rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None) -> list[np.ndarray]:
    """Out-of-sample lesion maps (G, G) of every slice: the head refitted without the slice's patient (its
    masks and its rows of ``negatives``). ``rows``: the items' :func:`slice_rows`, when the caller has them."""
    from ichd.utils.progress import progress

    if rows is None:
        rows = [slice_rows(model, preprocess, it) for it in items]
    patients = sorted({it.patient_id for it in items})
    if len(patients) < 2:
        raise InputError("leave-one-patient-out needs slices of at least two patients")
    maps: list[np.ndarray | None] = [None] * len(items)
    for p in progress(patients, desc="lesion map, leave one patient out", unit="patient"):
        neg = None if negatives is None else negatives.rows[negatives.patients != p]
        params = fit_lesion_head([r for r, it in zip(rows, items) if it.patient_id != p], cfg, neg)
        for i, it in enumerate(items):
            if it.patient_id == p:
                maps[i] = _probabilities(rows[i], params, cfg.grid)
    return [m for m in maps if m is not None]


def attach_lesion_map(model: Any, cfg: LesionMapTrainConfig) -> None:
    """Give ``model`` (a :class:`~ichd.models.frozen.FrozenEncoderClassifier`) an untrained lesion head."""
    from ichd.models.frozen import FrozenEncoderClassifier, LesionMapConfig

    if not isinstance(model, FrozenEncoderClassifier):
        raise ConfigError(f"lesion maps need a frozen-encoder slice model, got {type(model).__name__}",
                          hint="use the cnn.pt of a frozen-encoder run or bundle (e.g. the default model)")
    model.add_lesion_head(LesionMapConfig(blocks=list(cfg.blocks), grid=cfg.grid, smooth=cfg.smooth))


def train_lesion_map(cnn_path: str | Path, items: Sequence[MaskedCT], out: str | Path,
                     cfg: LesionMapTrainConfig | None = None, *, overwrite: bool = False,
                     lopo: bool = True, negatives_from: str | Path | None = None,
                     negative_cells: int = 48) -> dict[str, Any]:
    """Fit the lesion head of the slice model in ``cnn_path`` on ``items`` and write ``out/cnn.pt`` (the same
    model with the head; every other weight unchanged), ``out/lopo_maps.npz`` (the leave-one-patient-out maps,
    when ``lopo``) and ``out/metrics.json``. With ``negatives_from`` (the model's training config),
    ``negative_cells`` head cells of each of its bleed-free slices are negatives too (:func:`bleed_free_cells`).
    Refuses to replace a finished run unless ``overwrite``."""
    from ichd.models.checkpoint import load_checkpoint, save_checkpoint
    from ichd.utils.files import atomic_path, atomic_write_text

    cfg = cfg or LesionMapTrainConfig()
    out = Path(out)
    if (out / "metrics.json").is_file() and not overwrite:
        raise InputError(f"{str(out)!r} already holds a lesion map run (metrics.json)",
                         hint="pass another --out, or --overwrite to replace it")
    if not items:
        raise InputError("no masked slices to train on")
    t0 = time.perf_counter()
    ckpt = load_checkpoint(cnn_path)
    model = ckpt.model.eval()
    attach_lesion_map(model, cfg)
    if not ckpt.preprocess:
        raise InputError(f"{str(cnn_path)!r} records no preprocessing", hint="use a checkpoint written by ichd")
    from ichd.preprocessing.config import PreprocessConfig

    preprocess = PreprocessConfig.from_dict(ckpt.preprocess)
    metrics: dict[str, Any] = {"cnn": str(cnn_path), "config": {**cfg.__dict__, "blocks": list(cfg.blocks)},
                               "slices": len(items), "patients": len({i.patient_id for i in items})}
    out.mkdir(parents=True, exist_ok=True)
    negatives = None
    if negatives_from is not None:
        negatives = bleed_free_cells(model, negatives_from, preprocess, cells=negative_cells)
        metrics["negatives"] = {"from": str(negatives_from), "rows": len(negatives.rows),
                                "patients": len(set(negatives.patients.tolist())), "what": negatives.source}
    rows = [slice_rows(model, preprocess, it) for it in items]  # the encoder runs once per slice, for both fits
    if lopo:
        maps = lopo_lesion_maps(model, preprocess, items, cfg, negatives, rows=rows)
        with atomic_path(out / "lopo_maps.npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, names=np.asarray([i.name for i in items]), maps=np.stack(maps))
    set_lesion_head(model, fit_lesion_head(rows, cfg, None if negatives is None else negatives.rows))
    extra = dict(ckpt.extra or {})
    extra["lesion_map"] = {"trained_on": sorted(i.name for i in items), "C": cfg.C,
                           "rows": "grid cells inside the head; label: >= half the cell in the mask"}
    if negatives is not None:
        extra["lesion_map"]["negatives"] = negatives.source
    save_checkpoint(out / "cnn.pt", model, config=ckpt.config, preprocess=preprocess, fold=ckpt.fold,
                    extra=extra, metrics=ckpt.metrics, half=ckpt.raw.get("weights_dtype") == "float16")
    metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
