"""Training options that the other seed papers' methods need, for the one slice-CNN trainer
(:func:`ichd.training.cnn.train_cnn`); each is a field of :class:`~ichd.training.config.CnnTrainConfig`:

* ``data.folds_file``: take the patient folds from a CSV (e.g. the default model's split) instead of computing them;
* ``model.freeze``: keep parameters with the given name prefixes fixed (LRCN froze VGG19's first convolutions);
* ``optim.optimizer``: Adam (default) or SGD with momentum (RADnet);
* ``optim.image_size_per_epoch``: progressive resizing (Caceres et al.: 64 -> 128 -> 256 px);
* ``targets: any``: a binary hemorrhage model (LRCN): only "any" is in the loss, and the five subtype outputs are
  fixed at the training set's prevalence (zero weights, bias = logit of the prevalence; they get no gradient), so
  the model's predictions and every metric of the six labels stay defined;
* ``data.masks`` + ``mask_loss_weight``: RADnet's auxiliary segmentation loss on the slices that have masks;
* ``tta``: the out-of-fold predictions averaged over :func:`ichd.inference.tta.tta_views` (Danilov, Kotik et al.).

Each helper here turns one field into what :mod:`ichd.training.cnn` hands to the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError
from ichd.utils.logging import get_logger

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from ichd.training.config import CnnTrainConfig

log = get_logger(__name__)

#: Loss weights of a binary "any" model: the subtypes are left out of the loss.
ANY_ONLY_WEIGHTS: tuple[float, ...] = (1.0,) + (0.0,) * (len(LABELS) - 1)


def training_folds(cfg: CnnTrainConfig, labels: pd.DataFrame) -> pd.Series:
    """Patient -> fold: from ``data.folds_file`` when set, else computed (:func:`ichd.data.folds.patient_folds`)."""
    from ichd.data.folds import folds_for_table, patient_folds, read_patient_folds

    if cfg.data.folds_file is None:
        return patient_folds(labels, cfg.data.folds, cfg.data.fold_seed)
    given = read_patient_folds(cfg.data.folds_file)
    return folds_for_table(labels, given, cfg.data.folds, source=f"folds file {cfg.data.folds_file}")


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> int:
    """Set ``requires_grad = False`` on parameters whose name starts with one of ``prefixes``; returns how many
    tensors. A prefix that matches nothing is a :class:`ConfigError` (a typo would otherwise freeze nothing)."""
    if not prefixes:
        return 0
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unmatched:
        from ichd.errors import did_you_mean

        raise ConfigError(f"model.freeze prefix {unmatched[0]!r} matches no parameter; "
                          f"{did_you_mean(unmatched[0], sorted({n.rsplit('.', 1)[0] + '.' for n in names}))}")
    n = 0
    for name, param in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            param.requires_grad_(False)
            n += 1
    return n


def make_optimizer(cfg: CnnTrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD (momentum ``optim.momentum``) over the trainable parameters."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    lr, wd = cfg.optim.lr_per_epoch[0], cfg.optim.weight_decay
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.optim.momentum, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def training_loss(cfg: CnnTrainConfig) -> nn.Module:
    """The RSNA weighted loss, or its "any" term alone for ``targets: any``."""
    from ichd.training.losses import WeightedBCEWithLogits

    return WeightedBCEWithLogits(ANY_ONLY_WEIGHTS) if cfg.targets == "any" else WeightedBCEWithLogits()


def label_prevalence(labels: pd.DataFrame) -> np.ndarray:
    """Share of positive slices per label (missing labels skipped), clipped to [1e-4, 1 - 1e-4]."""
    prev = labels[list(LABELS)].astype(np.float64).mean(skipna=True).fillna(0.0).to_numpy()
    return np.clip(prev, 1e-4, 1 - 1e-4)


def init_any_only_head(model: nn.Module, train_labels: pd.DataFrame) -> None:
    """For a binary "any" model: the subtype rows of the final linear layer become zero weights with the bias at
    the logit of the training prevalence; with no loss on them they get zero gradients and stay so."""
    import torch

    head = getattr(model, "classifier", None)
    if not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.shape[0] != len(LABELS):
        raise ConfigError(f"targets: any needs a model with a {len(LABELS)}-output linear `classifier`")
    prev = label_prevalence(train_labels)
    with torch.no_grad():
        head.weight[1:].zero_()
        head.bias[1:] = torch.as_tensor([math.log(p / (1 - p)) for p in prev[1:]], dtype=head.bias.dtype)


def any_only_probs(probs: np.ndarray, prevalence: np.ndarray) -> np.ndarray:
    """A copy of ``probs`` (n, 6) with the subtype columns set to ``prevalence`` (a binary model's output)."""
    out = np.array(probs, dtype=np.float32, copy=True)
    out[:, 1:] = np.asarray(prevalence, dtype=np.float32)[1:]
    return out


def train_image_sizes(cfg: CnnTrainConfig, cache_size: int) -> list[int] | None:
    """The progressive-resizing schedule, checked against the cache: the last size must be the cache's."""
    sizes = cfg.optim.image_size_per_epoch
    if sizes is None:
        return None
    if sizes[-1] != cache_size:
        raise ConfigError(f"optim.image_size_per_epoch ends at {sizes[-1]} px but the cache holds {cache_size} px "
                          "images", hint="the last epoch must train at the size the model is validated and used at")
    if max(sizes) > cache_size:
        raise ConfigError(f"optim.image_size_per_epoch {sizes} goes above the cache's {cache_size} px")
    return list(sizes)


def training_masks(cfg: CnnTrainConfig, image_size: int, slice_ids: list[str]) -> dict[str, np.ndarray] | None:
    """Masks of the training slices from ``data.masks`` (relative folders are looked up like the labels), or
    ``None`` when none are configured. Logs how many training slices have one."""
    if not cfg.data.masks:
        return None
    from ichd.data.masks import read_mask_folders
    from ichd.training.cnn import resolve_labels_path

    masks = read_mask_folders([resolve_labels_path(m) for m in cfg.data.masks], image_size)
    wanted = set(slice_ids)
    kept = {k: v for k, v in masks.items() if k in wanted}
    log.info("masks: %d of %d mask slice(s) are training slices of this fold", len(kept), len(masks))
    return kept


def mask_aux_loss(cfg: CnnTrainConfig, model: nn.Module) -> Callable[[nn.Module, Any], torch.Tensor] | None:
    """The trainer's ``aux_loss`` for a model with segmentation heads (``backbone.aux_logits``) when masks are
    configured; ``None`` otherwise. Masks on a model without heads are a :class:`ConfigError`."""
    has_heads = hasattr(getattr(model, "backbone", None), "aux_logits")
    if not cfg.data.masks:
        return None
    if not has_heads:
        raise ConfigError(f"data.masks is set but model {cfg.model.name!r} has no segmentation heads",
                          hint="use radnet_densenet121, or drop data.masks")
    from ichd.models.radnet import mask_loss

    weight = float(cfg.mask_loss_weight)

    def aux_loss(net: nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, dict) or "mask" not in batch:
            raise InputError("mask-supervised training needs batches with 'mask' and 'has_mask'")
        backbone = net.backbone
        logits, backbone.aux_logits = backbone.aux_logits, []  # used once: the model keeps no graph around
        return weight * mask_loss(logits, batch["mask"], batch["has_mask"])

    return aux_loss


def oof_views(cfg: CnnTrainConfig, image_size: int) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Test-time views for the out-of-fold predictions (``tta: true``), as functions on CPU image batches;
    empty (plain prediction) otherwise."""
    if not cfg.tta:
        return []
    import torch

    from ichd.inference.tta import tta_views

    def as_torch(view: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: torch.from_numpy(np.ascontiguousarray(view.apply(x.cpu().numpy())))

    return [as_torch(v) for v in tta_views(image_size, enabled=True)]


def same_fingerprint(stored: Any, current: dict[str, Any]) -> bool:
    """Whether a resumable checkpoint's config fingerprint matches the current one. Options this module added
    after a run started are absent from its stored fingerprint; they match when they hold their defaults (so a
    fold started before them still resumes)."""
    if stored == current:
        return True
    if not isinstance(stored, dict):
        return False
    from ichd.config import config_to_dict
    from ichd.training.config import CnnTrainConfig

    return _drop_new_defaults(current, stored, config_to_dict(CnnTrainConfig())) == stored


def _drop_new_defaults(current: dict[str, Any], stored: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in current.items():
        if key not in stored:
            if key in defaults and value == defaults[key]:
                continue  # a newer option at its default: the old run behaved the same
            out[key] = value
        elif isinstance(value, dict) and isinstance(stored[key], dict):
            out[key] = _drop_new_defaults(value, stored[key], defaults.get(key) or {})
        else:
            out[key] = value
    return out
